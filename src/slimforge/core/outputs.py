"""Output folders and files that never destroy what slimforge did not write.

A folder slimforge writes into carries a manifest (``.slimforge-manifest.json``) listing the names slimforge put
there. A folder is used only when it is new, empty or has a manifest; ``force`` lets slimforge write beside files it
did not write, which are never touched. A new run into a folder first removes the files of the last run that claimed
it, so no report of another run sits next to the new artifact (other files slimforge wrote there stay). An output
equal to an input is refused.
Names are recorded before they are written, so a killed run's files are still known to the next one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from slimforge.errors import OutputError

MANIFEST = ".slimforge-manifest.json"
SIDECAR_SUFFIX = ".slimforge.json"


_RUNS: set[Path] = set()  # output folders this process claimed for a run (their new files form the run's set)


def _read_doc(folder: Path) -> dict[str, list[str]] | None:
    try:
        doc = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("tool") != "slimforge" or not isinstance(doc.get("files"), list):
        return None
    names = {k: [f for f in doc.get(k) or () if isinstance(f, str) and _plain_name(f)] for k in ("files", "run")}
    names["run"] = [n for n in names["run"] if n in names["files"]]
    return names


def read_manifest(folder: Path) -> list[str] | None:
    """The names slimforge wrote into ``folder``, or None when it has no (readable) manifest."""
    doc = _read_doc(folder)
    return None if doc is None else doc["files"]


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..", MANIFEST) and "/" not in name and "\\" not in name


def _write_manifest(folder: Path, files: Iterable[str], run: Iterable[str] = ()) -> None:
    """``files``: every name slimforge wrote here; ``run``: those of the last run that claimed the folder (the
    next run removes them first; other slimforge files, such as a quantized model saved here, stay)."""
    files = sorted(set(files))
    doc = json.dumps({"tool": "slimforge", "files": files, "run": sorted(set(run) & set(files))}, indent=1)
    tmp = folder / f"{MANIFEST}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(doc)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / MANIFEST)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(describe_os_error(exc, folder / MANIFEST)) from exc


def record(folder: Path, name: str) -> None:
    """Add ``name`` to ``folder``'s manifest (a no-op where slimforge does not own the folder)."""
    doc = _read_doc(folder)
    if doc is None or not _plain_name(name):
        return
    in_run = _key(folder) in _RUNS
    if name not in doc["files"] or (in_run and name not in doc["run"]):
        _write_manifest(folder, [*doc["files"], name], [*doc["run"], *([name] if in_run else [])])


def _key(folder: Path) -> Path:
    try:
        return Path(folder).resolve()
    except OSError:
        return Path(folder).absolute()


def written_by_slimforge(path: Path) -> bool:
    """Whether ``path`` is a file slimforge wrote: named in its folder's manifest, or with a slimforge sidecar."""
    path = Path(path)
    if path.name in (read_manifest(path.parent) or ()):
        return True
    return path.with_name(path.name + SIDECAR_SUFFIX).is_file()


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _refuse_inputs(path: Path, inputs: Iterable[str | Path | None]) -> None:
    for given in inputs:
        if given is None or not isinstance(given, (str, Path)):
            continue
        src = Path(given).expanduser()
        if _same(path, src) or (path.exists() and src.exists() and os.path.samefile(path, src)):
            raise OutputError(f"{path}: the output is the input {given}; choose another output path")


def check_output_dir(folder: str | Path, *, force: bool = False, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Raise ``OutputError`` if ``folder`` may not take a run's outputs; creates nothing."""
    folder = Path(folder).expanduser()
    _refuse_inputs(folder, inputs)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: is a file, not a folder; choose a folder for the outputs")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{parent}: is a file, not a folder; choose another output folder")
            break
    if folder.is_dir() and read_manifest(folder) is None and not force:
        foreign = sorted(p.name for p in folder.iterdir())
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise OutputError(f"{folder}: the folder holds files slimforge did not write ({shown}); choose a new "
                              "or empty folder, or pass --force to write beside them (they are never touched)")
    return folder


def prepare_output_dir(folder: str | Path, *, force: bool = False, inputs: Iterable[str | Path | None] = (),
                       fresh: bool = True) -> Path:
    """Make ``folder`` ready for a run's outputs and return it.

    New or empty: created with a manifest. With a manifest: when ``fresh``, the files of the last run that claimed
    the folder are removed (other files slimforge wrote there stay).
    Holding files slimforge did not write: refused, unless ``force`` (those files are then left untouched).

    Example:
        >>> import tempfile
        >>> d = prepare_output_dir(Path(tempfile.mkdtemp()) / "out")
        >>> (d / MANIFEST).is_file()
        True
    """
    folder = check_output_dir(folder, force=force, inputs=inputs)
    if folder.is_dir():
        from slimforge.core.scratch import sweep

        sweep(folder)
        doc = _read_doc(folder) or {"files": [], "run": []}
        owned = doc["files"]
        if fresh:  # the previous run's outputs go, so no report of another run sits next to the new artifact
            for name in doc["run"]:
                _remove(folder / name)
            owned = [n for n in owned if (folder / n).exists() or (folder / n).is_symlink()]
        _write_manifest(folder, owned, () if fresh else doc["run"])
    else:
        make_dirs(folder)
        _write_manifest(folder, [])
    if fresh:
        _RUNS.add(_key(folder))
    return folder


@contextlib.contextmanager
def claim_output_dir(folder: str | Path, *, force: bool = False, inputs: Iterable[str | Path | None] = ()
               ) -> Iterator[Path]:
    """``prepare_output_dir`` for the length of a run: when the run fails (or is interrupted), what it wrote there
    is removed, and so is the folder if this call created it; a failed run delivers nothing half-done.

    Example:
        >>> import tempfile
        >>> with claim_output_dir(Path(tempfile.mkdtemp()) / "out") as d:
        ...     d.is_dir()
        True
    """
    path = Path(folder).expanduser()
    created = not path.exists()
    prepared = prepare_output_dir(path, force=force, inputs=inputs)
    before = set(read_manifest(prepared) or ())
    try:
        yield prepared
    except BaseException:
        mine = [n for n in read_manifest(prepared) or () if n not in before]
        for name in mine:
            _remove(prepared / name)
        _write_manifest(prepared, before)
        if created and {p.name for p in prepared.iterdir()} <= {MANIFEST}:
            shutil.rmtree(prepared, ignore_errors=True)
        raise
    finally:
        _RUNS.discard(_key(prepared))


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def prepare_output_file(path: str | Path, *, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Check that ``path`` may be written: not a folder, not an input, and not a file slimforge did not write.

    Example:
        >>> import tempfile
        >>> prepare_output_file(Path(tempfile.mkdtemp()) / "m.onnx").suffix
        '.onnx'
    """
    path = Path(path).expanduser()
    _refuse_inputs(path, inputs)
    if path.is_dir():
        raise OutputError(f"{path}: is an existing folder; name a file for the output (e.g. {path / 'model.onnx'})")
    if (path.exists() or path.is_symlink()) and not written_by_slimforge(path):
        raise OutputError(f"{path}: the file exists and slimforge did not write it; choose another output path "
                          "(slimforge never overwrites files it did not write)")
    make_dirs(path.parent)  # refuses a parent that is a file
    from slimforge.core.scratch import sweep

    sweep(path.parent)
    return path


def write_text(path: Path, text: str) -> Path:
    """Write a text file atomically (temporary file beside it, fsync, rename).

    Example:
        >>> import tempfile
        >>> write_text(Path(tempfile.mkdtemp()) / "a.txt", "hi").read_text()
        'hi'
    """
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def make_dirs(folder: Path) -> None:
    """``mkdir -p`` that records each folder it creates in its parent's manifest (where slimforge owns it)."""
    folder = Path(folder)
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    if p.exists() and not p.is_dir():
        raise OutputError(f"{p}: is a file, not a folder; choose another output path")
    for d in reversed(missing):
        record(d.parent, d.name)
        d.mkdir(exist_ok=True)


def fsync_tree(path: Path) -> None:
    """Flush a written file (or every file in a folder) to disk before it is renamed into place."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn OS errors while writing ``path`` into one line naming the path (disk full, permissions, bad paths)."""
    try:
        yield
    except OSError as exc:
        raise OutputError(describe_os_error(exc, path)) from exc


def storage_error(exc: BaseException) -> OSError | None:
    """The full-disk, quota or read-only error somewhere in an exception's chain (libraries wrap them)."""
    import errno

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            return exc
        if isinstance(exc, OutputError):
            return None
        exc, seen = exc.__cause__ or exc.__context__, seen + 1  # type: ignore[assignment]
    return None


def describe_os_error(exc: OSError, path: Path | str | None = None) -> str:
    """One line: the path and what went wrong, with the fix where there is an obvious one."""
    import errno

    where = exc.filename or path or "?"
    why = {errno.ENOSPC: "the disk is full; free space or choose another output folder",
           errno.EDQUOT: "the disk quota is exceeded; free space or choose another output folder",
           errno.EACCES: "permission denied; choose a folder you can write to",
           errno.EPERM: "permission denied; choose a folder you can write to",
           errno.EROFS: "the file system is read-only; choose another output folder",
           errno.ENOTDIR: "a part of the path is a file, not a folder",
           errno.ENAMETOOLONG: "the name is too long",
           errno.ENOENT: "no such file or folder"}.get(exc.errno or 0, exc.strerror or str(exc))
    return f"{where}: {why}"


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path with the same name as ``final`` in a private folder beside it (same file system);
    flush it to disk and rename it (and any side files written next to it, such as ONNX external data or an
    OpenVINO ``.bin``) into place only if the block succeeds. On failure nothing is left behind; a killed run's
    temporary folder carries its PID and is swept by the next run that writes there. An existing folder is
    replaced only where slimforge made it; names are recorded in the folder's manifest before they appear.

    Example:
        >>> with atomic_path(Path("/tmp/slimforge-doc/x.txt")) as tmp:
        ...     _ = tmp.write_text("hi")
    """
    from slimforge.core.scratch import TMP_PREFIX, note_temporary
    final = Path(final)
    with writing(final):
        make_dirs(final.parent)
        tmpdir = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-{final.name[:40]}.", dir=final.parent))
    note_temporary(tmpdir)
    tmp = tmpdir / final.name
    try:
        try:
            yield tmp
        except Exception as exc:
            cause = storage_error(exc)
            if cause is not None:  # a full disk or a read-only folder, whatever wrapped it: name the output
                raise OutputError(describe_os_error(cause, final)) from exc
            raise
        if not tmp.exists():
            raise FileNotFoundError(f"the step did not write {final.name}")
        with writing(final):
            siblings = sorted(tmpdir.iterdir(), key=lambda p: p == tmp)  # the main file last
            owned = read_manifest(final.parent)
            for sibling in siblings:
                target = final.parent / sibling.name
                if target.is_dir() and not target.is_symlink():
                    if sibling.name not in (owned or ()) and read_manifest(target) is None:
                        raise OutputError(f"{target}: is a folder slimforge did not write; it is left as it is")
                elif owned is not None and sibling.name not in owned and (target.exists() or target.is_symlink()):
                    raise OutputError(f"{target}: the file exists and slimforge did not write it; it is left as "
                                      "it is (choose another output folder)")
                fsync_tree(sibling)
                record(final.parent, sibling.name)
            for sibling in siblings:
                target = final.parent / sibling.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(sibling, target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
