"""MiniLM, ``subnet`` space: search a sub-network under half the unpruned model's batch-32 latency, distil it from the
FP32 model on unlabelled English (the docstrings of the installed packages), and judge it on sentences it never saw.

- Search and distillation data: prose sentences from the docstrings of the installed packages
  (``slimforge.io.corpus``), deduplicated, with every bundled sentence left out.
- Held out: the 2,884 bundled sentences, used only here, for the embedding cosine to the FP32 model.
- Speed: the chosen model against the unpruned one at batch 32 (and 1) on the same runtime (PyTorch eager, all
  threads), interleaved rounds with intervals (``bench.compare``).

    .venv/bin/python benchmarks/minilm_nas.py [--sentences 20000 --trials 30 --distill-epochs 8]
        [--model FOLDER] [--export-student DIR] [--json benchmarks/results/nas_minilm_distill.json]
    .venv/bin/python benchmarks/minilm_nas.py --import-student DIR   # judge a student trained elsewhere, here

On a GPU machine (the device tool) the model may travel in FP16 (``--model``: the transfer is limited) and the
distilled student comes back as its trained weights (``--export-student``: everything but the frozen embeddings, in
FP32, in files under 16 MB); ``--import-student`` cuts the same architecture from the FP32 model here, puts those
weights in, and judges it against the exact FP32 model on this machine.

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
    ap.add_argument("--distill-top", type=int, default=3, help="finalists distilled (the best after training is kept)")
    ap.add_argument("--budget", default="50%", help="latency budget at batch 32 (ms or a share of the unpruned)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "slimforge-out" / "minilm-nas")
    ap.add_argument("--model", type=Path, default=None, help="the MiniLM folder (default: the installed package's)")
    ap.add_argument("--export-student", type=Path, default=None, help="write the trained weights here")
    ap.add_argument("--import-student", type=Path, default=None, help="judge weights written by --export-student")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "nas_minilm_distill.json")
    args = ap.parse_args()
    import torch

    from slimforge.io.corpus import docstring_sentences

    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    base = slimforge.load(args.model or default_model_path())
    base.handle.float()  # a folder that travelled in FP16 loads in FP16; the teacher runs in FP32
    held = bundled_sentences_path().read_text(encoding="utf-8").splitlines()
    info: dict = {"heldout_sentences": len(held)}
    if args.import_student:
        student, arch = import_student(base, args.import_student)
        info["imported_from"] = str(args.import_student)
    else:
        t0 = time.perf_counter()
        corpus = docstring_sentences(limit=args.sentences, exclude=held)
        (out / "corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
        print(f"{len(corpus)} docstring sentences in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        t0 = time.perf_counter()
        res = slimforge.search_architecture(base, out / "corpus.txt", space="subnet", max_latency_ms=args.budget,
                                            batch=32, trials=args.trials, time_budget_s=args.time_budget,
                                            distill_epochs=args.distill_epochs, distill_top=args.distill_top,
                                            threads=torch.get_num_threads(),
                                            output_dir=out / "nas", force=True, progress=_bar)
        info.update(corpus_sentences=len(corpus), seconds=round(time.perf_counter() - t0, 1), search=res.to_dict())
        print(f"\nsearch + distillation: {info['seconds']:.0f} s; written: {res.paths}", file=sys.stderr)
        if res.artifact is None:
            print("FAIL: nothing met the latency budget", file=sys.stderr)
            return 1
        student, arch = res.artifact, res.to_dict()["chosen"]["arch_spec"]
        if args.export_student:
            export_student(student, arch, args.export_student)

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
           **info, "arch": arch, "heldout_cosine": cos, "speedup": speed, "timing": comp.note(),
           "latency_ms": {n: {b: comp.timing(n, b).p50 for b in feeds} for n in sessions}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2, default=str))
    print(f"architecture: {arch}")
    print(f"held-out cosine (2,884 bundled sentences, never trained on): {cos:.4f}")
    for b in feeds:
        print(f"batch {b}: {comp.ratio('searched + distilled FP32', b).describe()} the unpruned model")
    ok = cos >= 0.95 and speed[32]["lo"] >= 2.0
    print(("PASS" if ok else "FAIL") + ": held-out cosine >= 0.95 at >= 2x the unpruned batch-32 speed "
          "(the interval's low end)")
    return 0 if ok else 1


def export_student(student, arch: dict, dest: Path, chunk_bytes: int = 15_000_000) -> None:
    """The trained weights (the embeddings were frozen: they are the original's) in FP32 files under 16 MB."""
    import torch

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "student_arch.json").write_text(json.dumps(arch))
    part: dict = {}
    size, n = 0, 0
    for k, v in student.handle.state_dict().items():
        if "embeddings" in k:
            continue
        if part and size + v.numel() * 4 > chunk_bytes:
            torch.save(part, dest / f"student_{n}.pt")
            part, size, n = {}, 0, n + 1
        part[k] = v.detach().float().cpu().clone()
        size += v.numel() * 4
    torch.save(part, dest / f"student_{n}.pt")


def import_student(base, src: Path):
    """The architecture cut from ``base`` here, with the trained weights put in (every one of them must fit)."""
    import torch

    from slimforge.io.models import load as load_module
    from slimforge.nas.subnet import SubnetArch, SubnetBuilder, geometry
    from slimforge.nas.subnet_run import model_inputs, with_interface
    from slimforge.train.data import mask_index

    arch = json.loads((src / "student_arch.json").read_text())
    layers = tuple((int(layer["heads"]), int(layer["ffn"])) for layer in arch["layers"])
    ds = TextLines(bundled_sentences_path(), base)
    inputs = model_inputs(base, ds, limit=64)
    batches = [tuple(t[i:i + 32] for t in inputs) for i in (0, 32)]
    module = base.handle
    built, _ = SubnetBuilder(module, geometry(module), batches, mask_index(base)).build(SubnetArch(layers),
                                                                                         refit=False)
    weights: dict = {}
    for f in sorted(src.glob("student_*.pt")):
        weights.update(torch.load(f, weights_only=True))
    own = {k for k in built.state_dict() if "embeddings" not in k}
    if own != set(weights):
        raise SystemExit(f"the weights do not fit the architecture: {sorted(own ^ set(weights))[:6]}")
    built.load_state_dict(weights, strict=False)
    example = {n: t[:2].numpy() for n, t in zip(base.io.input_names, inputs)}
    cut = load_module(built.eval(), example_inputs=example, name="minilm-subnet-imported")
    return with_interface(cut, base), arch  # its tokenizer: it reads text as the search's result does


if __name__ == "__main__":
    sys.exit(main())
