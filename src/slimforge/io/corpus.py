"""Unlabelled English text on any machine: the docstrings of the installed Python packages, read with ``ast`` (no
module is imported), cut into sentences, with code, markup and near-duplicates left out. A teacher labels them (its
outputs are the targets), so distillation has far more than the bundled sentences, which stay held out.

Example:
    >>> s = sentences_from_docstring("Return the sum. Raises ValueError when the two arrays differ in shape.")
    >>> s
    ['Raises ValueError when the two arrays differ in shape.']
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE = re.compile(r">>>|::|[{}\[\]<>=`|\\#@$]|\w+\(|\.\.\.|https?:|\b\w+_\w+\b|\s{2,}")
_WORD = re.compile(r"[A-Za-z][a-z']*")


def sentences_from_docstring(doc: str, *, min_words: int = 6, max_words: int = 60) -> list[str]:
    """The prose sentences of one docstring (parameter lists, examples and markup dropped)."""
    paragraphs = re.split(r"\n\s*\n", doc)
    out = []
    for para in paragraphs:
        lines = [ln.strip() for ln in para.strip().splitlines()]
        if not lines or any(ln.startswith(("-", "*", ">>>", "..", ":", "Parameters", "Returns", "Args")) or
                            set(ln) <= set("-=~^") for ln in lines):
            continue
        for sent in _SPLIT.split(" ".join(lines)):
            sent = sent.strip()
            words = sent.split()
            if not (min_words <= len(words) <= max_words) or not sent.endswith((".", "!", "?")):
                continue
            if _CODE.search(sent) or not sent[0].isupper():
                continue
            if sum(1 for w in words if _WORD.fullmatch(w.strip(".,;:!?()'\""))) < 0.85 * len(words):
                continue
            out.append(sent)
    return out


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
    except (SyntaxError, ValueError, RecursionError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


def site_packages() -> list[Path]:
    import site
    import sysconfig

    roots = {Path(p) for p in site.getsitepackages() + [site.getusersitepackages(), sysconfig.get_paths()["purelib"]]}
    roots.add(Path(sysconfig.get_paths()["stdlib"]))
    return sorted(p for p in roots if p.is_dir())


def docstring_sentences(*, limit: int | None = 50_000, exclude: Iterable[str] = (),
                        roots: Iterable[Path] | None = None) -> list[str]:
    """Deduplicated prose sentences from the docstrings under ``roots`` (default: the standard library and the
    installed packages), in a stable order; ``exclude`` (e.g. an evaluation set) is left out, compared ignoring case
    and spacing."""
    def key(s: str) -> str:
        return " ".join(s.lower().split())

    seen = {key(s) for s in exclude}
    out: list[str] = []
    for root in (roots if roots is not None else site_packages()):
        for path in sorted(Path(root).rglob("*.py")):
            if "test" in path.parts[-2].lower():
                continue
            for doc in _docstrings(path):
                for sent in sentences_from_docstring(doc):
                    k = key(sent)
                    if k not in seen:
                        seen.add(k)
                        out.append(sent)
                        if limit is not None and len(out) >= limit:
                            return out
    return out


if __name__ == "__main__":  # python -m slimforge.io.corpus N: print N sentences
    for line in docstring_sentences(limit=int(sys.argv[1]) if len(sys.argv) > 1 else 20):
        print(line)
