"""MiniLM, ``subnet`` space: search a sub-network under half the unpruned model's batch-32 latency, distil it from the
FP32 model on unlabelled English (the docstrings of the installed packages), and judge it on sentences it never saw.

- Search and distillation data: prose sentences from the docstrings of the installed packages
  (``slimforge.io.corpus``), deduplicated, with every bundled sentence left out.
- Held out: the 2,884 bundled sentences, used only here, for the embedding cosine to the FP32 model.
- Speed: the chosen model against the unpruned one at batch 32 (and 1) on the same runtime (PyTorch eager, all
  threads), interleaved rounds with intervals (``bench.compare``).

    .venv/bin/python benchmarks/minilm_nas.py [--sentences 20000 --trials 30 --distill-epochs 8]
        [--device auto|cpu|cuda] [--json benchmarks/results/nas_minilm_distill.json]

The chosen model is written to ``--out-dir``/nas/nas-best.pt2, for ``benchmarks/cpu_minilm_vs_peers.py --student``.
Goal (architecture-search issue): held-out cosine >= 0.95 at >= 2x the unpruned model's batch-32 speed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

import slimforge  # noqa: E402
from slimforge.bench import BenchSpec, compare  # noqa: E402
from slimforge.env import environment  # noqa: E402
from slimforge.evaluation.metrics import cosine_similarity  # noqa: E402
from slimforge.io.data import TextLines, bundled_sentences_path  # noqa: E402
from slimforge.io.models import default_model_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _bar(event) -> None:
    print(f"\r{event.task}: {int(event.completed)}/{int(event.total)}   ", end="", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=20000, help="docstring sentences to search and distil on")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--time-budget", type=float, default=900.0, help="seconds for the search's trials")
    ap.add_argument("--distill-epochs", type=int, default=8)
    ap.add_argument("--budget", default="50%", help="latency budget at batch 32 (ms or a share of the unpruned)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "slimforge-out" / "minilm-nas")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "nas_minilm_distill.json")
    args = ap.parse_args()
    import torch

    from slimforge.io.corpus import docstring_sentences

    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    base = slimforge.load(default_model_path())
    held = bundled_sentences_path().read_text(encoding="utf-8").splitlines()
    t0 = time.perf_counter()
    corpus = docstring_sentences(limit=args.sentences, exclude=held)
    (out / "corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    print(f"{len(corpus)} docstring sentences in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    t0 = time.perf_counter()
    res = slimforge.search_architecture(base, out / "corpus.txt", space="subnet", max_latency_ms=args.budget,
                                        batch=32, trials=args.trials, time_budget_s=args.time_budget,
                                        distill_epochs=args.distill_epochs, threads=torch.get_num_threads(),
                                        output_dir=out / "nas", force=True, progress=_bar)
    search_s = time.perf_counter() - t0
    print(f"\nsearch + distillation: {search_s:.0f} s", file=sys.stderr)
    if res.artifact is None:
        print("FAIL: nothing met the latency budget", file=sys.stderr)
        return 1
    student = res.artifact
    print(f"chosen model written: {res.paths}", file=sys.stderr)

    ds = TextLines(bundled_sentences_path(), base)
    batches = [b.feeds for b in ds.batches(32)]
    sessions = {"unpruned FP32": slimforge.open_session(base, "torch"),
                "searched + distilled FP32": slimforge.open_session(student, "torch")}
    ref = np.concatenate([sessions["unpruned FP32"].run(f)[0] for f in batches])
    emb = np.concatenate([sessions["searched + distilled FP32"].run(f)[0] for f in batches])
    cos = float(cosine_similarity(ref, emb).mean())
    feeds = {1: next(ds.batches(1)).feeds, 32: batches[0]}
    spec = BenchSpec(warmup=3, repeats=4 * args.rounds, min_time_s=1.0 * args.rounds, max_time_s=240.0,
                     rounds=args.rounds, max_rounds=3 * args.rounds, rel_ci=0.03)
    comp = compare(sessions, feeds, spec, reference="unpruned FP32")
    speed = {b: comp.ratio("searched + distilled FP32", b).to_dict() for b in feeds}
    doc = {"environment": environment(torch.get_num_threads()), "args": {k: str(v) for k, v in vars(args).items()},
           "corpus_sentences": len(corpus), "heldout_sentences": len(held), "seconds": round(search_s, 1),
           "search": res.to_dict(), "heldout_cosine": cos, "speedup": speed, "timing": comp.note(),
           "latency_ms": {n: {b: comp.timing(n, b).p50 for b in feeds} for n in sessions}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2, default=str))
    arch = res.outcome.chosen.arch.describe() if hasattr(res.outcome.chosen.arch, "describe") else \
        res.to_dict()["chosen"]["arch"]
    print(f"chosen: {arch}")
    print(f"held-out cosine (2,884 bundled sentences, never trained on): {cos:.4f}")
    for b in feeds:
        print(f"batch {b}: {comp.ratio('searched + distilled FP32', b).describe()} the unpruned model")
    ok = cos >= 0.95 and speed[32]["lo"] >= 2.0
    print(("PASS" if ok else "FAIL") + ": held-out cosine >= 0.95 at >= 2x the unpruned batch-32 speed "
          "(the interval's low end)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
