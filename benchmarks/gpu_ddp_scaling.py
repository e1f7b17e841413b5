"""Does training on several GPUs pay? MiniLM embedding distillation (the 50%-pruned, least-squares-refitted student
learns the FP32 teacher's sentence embeddings) with the shared trainer under ``torchrun``, on 1, 2, ... N processes,
with a fixed number of optimizer steps at a fixed global batch size (each process takes global/N per step).

- Data: prose sentences from the docstrings of the installed packages (``slimforge.io.corpus``), the bundled sentences
  held out for evaluation. The teacher's embeddings are computed once, before any timed run, and cached: the workers
  train the student only.
- Mixed precision: bf16 autocast on CUDA (``--no-bf16`` to turn it off); CPU runs (``--backend gloo``) use FP32.
- Reported per process count: samples/s (timed between barriers, after one warm-up epoch that is not counted),
  speedup over one process, scaling efficiency (speedup / N) and the held-out cosine to the teacher at the end,
  which must match across counts within noise.

    PYTHONPATH=src:. python3 benchmarks/gpu_ddp_scaling.py --procs 1,2 [--steps 300 --global-batch 128] --out r.json
    PYTHONPATH=src:. python3 benchmarks/gpu_ddp_scaling.py --backend gloo --procs 1,2 --steps 40 --global-batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = r"""
import json, os, sys, time, torch, torch.distributed as dist
from torch.utils.data import TensorDataset
from slimforge.train import TrainConfig, train

blob, steps, global_batch, bf16, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
state = torch.load(blob, weights_only=False)
world = int(os.environ.get("WORLD_SIZE", "1"))
cuda = torch.cuda.is_available() and os.environ.get("SCALING_DEVICE", "cuda") == "cuda"
student, names = state["student"], state["names"]
# exactly `steps` optimizer steps of `global_batch` samples at any process count: the data is cut to a whole number of
# global batches (one epoch of `steps` when the corpus is long enough, else whole passes over it)
n_use = min(len(state["ids"]), steps * global_batch) // global_batch * global_batch
data = TensorDataset(state["ids"][:n_use], state["mask"][:n_use], state["target"][:n_use])
per_rank = global_batch // world
epochs = max(1, -(-steps * global_batch // n_use))
dtype = torch.bfloat16 if (bf16 and cuda) else None

def forward(m, ids, mask):
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return m(*(feeds[n] for n in names))

def loss_fn(m, b):
    with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
        emb = forward(m, b[0], b[1]).float()
    return (1 - torch.nn.functional.cosine_similarity(emb, b[2], dim=1)).mean()

cfg = TrainConfig(epochs=epochs, batch_size=per_rank, lr=5e-4, device="cuda" if cuda else "cpu", seed=0,
                  warmup_steps=10)
# one warm-up epoch (CUDA/NCCL set-up, kernel selection) on a copy, not timed
warm = TrainConfig(epochs=1, batch_size=per_rank, lr=5e-4, device=cfg.device, seed=0)
import copy
train(copy.deepcopy(student), loss_fn, TensorDataset(*(t[:per_rank * world * 4] for t in data.tensors)), warm)
if dist.is_initialized():
    dist.barrier()
if cuda:
    torch.cuda.synchronize()
t0 = time.perf_counter()
r = train(student, loss_fn, data, cfg)
if cuda:
    torch.cuda.synchronize()
if dist.is_initialized():
    dist.barrier()
elapsed = time.perf_counter() - t0
rank = dist.get_rank() if dist.is_initialized() else 0
if rank == 0:
    student.eval().float().cpu()
    with torch.inference_mode():
        emb = torch.cat([forward(student, state["h_ids"][i:i + 64], state["h_mask"][i:i + 64])
                         for i in range(0, len(state["h_ids"]), 64)])
    cos = torch.nn.functional.cosine_similarity(emb, state["h_target"], dim=1).mean().item()
    json.dump({"world": world, "steps": r.steps, "epochs": epochs, "per_rank_batch": per_rank,
               "global_batch": per_rank * world, "seconds": elapsed,
               "samples_per_s": r.steps * per_rank * world / elapsed, "heldout_cosine": cos,
               "device": torch.cuda.get_device_name(0) if cuda else "cpu", "bf16": dtype is not None,
               "final_loss": r.history[-1]["loss"] if r.history else None}, open(out, "w"))
"""


def prepare(path: Path, *, train_sentences: int, device: str) -> dict:
    """The student (50% heads and FFN neurons pruned, least-squares refit), the tokenised corpus and the teacher's
    cached embeddings, saved to ``path``."""
    import torch

    import slimforge
    from slimforge.io.corpus import docstring_sentences
    from slimforge.io.data import TextLines, bundled_sentences_path
    from slimforge.io.models import default_model_path

    teacher = slimforge.load(default_model_path())
    held = bundled_sentences_path().read_text(encoding="utf-8").splitlines()
    corpus = docstring_sentences(limit=train_sentences, exclude=held)
    tmp = path.parent / "corpus.txt"
    tmp.write_text("\n".join(corpus) + "\n", encoding="utf-8")
    student = slimforge.prune(teacher, ratio=0.5, criterion="lsq", data=bundled_sentences_path(), check_speed=False)

    def tokens(file: Path) -> tuple:
        from slimforge.train.data import collect

        t, _, _ = collect(teacher, TextLines(file, teacher), limit=None)
        names = teacher.io.input_names
        return t[names.index("input_ids")], t[names.index("attention_mask")], t

    ids, mask, all_t = tokens(tmp)
    h_file = path.parent / "held.txt"
    h_file.write_text("\n".join(held) + "\n", encoding="utf-8")
    h_ids, h_mask, h_all = tokens(h_file)
    teach = teacher.handle.to(device).eval()

    def embed(tensors: list) -> torch.Tensor:
        outs = []
        with torch.inference_mode():
            for i in range(0, len(tensors[0]), 256):
                outs.append(teach(*(t[i:i + 256].to(device) for t in tensors)).float().cpu())
        return torch.cat(outs)

    module = student.handle.cpu()
    # parameters the embedding does not depend on (BERT's pooler) get no gradient, which DistributedDataParallel
    # refuses ("Expected to have finished reduction..."): they are frozen, as distillation would leave them anyway
    module.train()
    names = list(teacher.io.input_names)
    module(*(t[:2] for t in all_t)).float().pow(2).sum().backward()
    unused = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    for n, p in module.named_parameters():
        p.grad = None
        if n in unused:
            p.requires_grad_(False)
    module.eval()
    state = {"student": module, "names": names, "unused_frozen": unused, "ids": ids, "mask": mask,
             "target": embed(all_t), "h_ids": h_ids, "h_mask": h_mask, "h_target": embed(h_all)}
    torch.save(state, path)
    return {"frozen_unused": unused, "train_sentences": len(ids), "heldout_sentences": len(h_ids), "seq_len": int(ids.shape[1]),
            "student_params": sum(p.numel() for p in state["student"].parameters()),
            "teacher_params": sum(p.numel() for p in teacher.handle.parameters())}


def run(n: int, blob: Path, steps: int, global_batch: int, bf16: bool, backend: str, work: Path) -> dict:
    out = work / f"r{n}.json"
    worker = work / "worker.py"
    worker.write_text(WORKER)
    env = {**os.environ, "SCALING_DEVICE": "cpu" if backend == "gloo" else "cuda",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    if backend == "gloo":
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // n))
    args = [str(blob), str(steps), str(global_batch), "1" if bf16 else "0", str(out)]
    cmd = ([sys.executable, str(worker), *args] if n == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", str(worker), *args])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{n} process(es) failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    res = json.loads(out.read_text())
    res["wall_s"] = time.perf_counter() - t0
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", default="1,2", help="process counts (GPUs), e.g. 1,2,4,8")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--global-batch", type=int, default=128)
    ap.add_argument("--train-sentences", type=int, default=20000)
    ap.add_argument("--backend", choices=("nccl", "gloo"), default="nccl", help="gloo: CPU processes")
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_ddp_scaling.json"))
    args = ap.parse_args()
    import torch

    procs = [int(p) for p in args.procs.split(",")]
    if any(args.global_batch % n for n in procs):
        raise SystemExit(f"--global-batch {args.global_batch} must divide by every process count {procs}")
    if args.backend == "nccl" and torch.cuda.device_count() < max(procs):
        raise SystemExit(f"{max(procs)} GPUs asked for, {torch.cuda.device_count()} here (or use --backend gloo)")
    with tempfile.TemporaryDirectory(prefix="ddp-scaling-") as tmp:
        work = Path(tmp)
        blob = work / "state.pt"
        t0 = time.perf_counter()
        info = prepare(blob, train_sentences=args.train_sentences,
                       device="cuda" if args.backend == "nccl" else "cpu")
        info["prepare_s"] = time.perf_counter() - t0
        print(json.dumps(info), flush=True)
        rows = []
        for n in procs:
            r = run(n, blob, args.steps, args.global_batch, not args.no_bf16, args.backend, work)
            rows.append(r)
            print(json.dumps(r), flush=True)
    base = next((r for r in rows if r["world"] == 1), None)
    print(f"\n{'procs':>5} {'steps':>6} {'samples/s':>10} {'speedup':>8} {'efficiency':>10} {'held-out cos':>12}")
    for r in rows:
        if base:
            r["speedup"] = r["samples_per_s"] / base["samples_per_s"]
            r["efficiency"] = r["speedup"] / r["world"]
            r["cosine_delta_vs_1"] = r["heldout_cosine"] - base["heldout_cosine"]
        print(f"{r['world']:>5} {r['steps']:>6} {r['samples_per_s']:>10.1f} {r.get('speedup', float('nan')):>8.2f} "
              f"{r.get('efficiency', float('nan')):>10.2f} {r['heldout_cosine']:>12.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"setup": info, "args": {k: str(v) for k, v in vars(args).items()},
                                    "rows": rows}, indent=2))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
