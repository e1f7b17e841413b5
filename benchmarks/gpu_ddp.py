"""The shared trainer on several GPUs: DistributedDataParallel over NCCL under ``torchrun``, checked against one GPU.

Trains the digits CNN (scikit-learn's digits) with ``slimforge.train`` three ways, in one run:

1. one process on one GPU;
2. ``torchrun --nproc_per_node N`` (N = all GPUs): NCCL, a DistributedSampler, checkpoints from rank 0 only;
3. the same N-process run cut off after 2 epochs and resumed from its checkpoint.

It asserts that every replica ends with identical weights, that the N-GPU model is as accurate as the one-GPU model
(within 1.5 points: each replica sees 1/N of the data per step, so the optimisation path differs), and that the resumed
run ends identical to the uninterrupted one with the same number of steps. Run on a machine with 2+ GPUs:

    PYTHONPATH=src:. python3 benchmarks/gpu_ddp.py [--out results.json]
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

import torch

WORKER = r"""
import json, os, sys, time, torch, torch.distributed as dist
from torch.utils.data import TensorDataset
from slimforge.train import TrainConfig, train
from tests.digits import DigitsCNN, digits_split

epochs, ckpt, stop_after, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
x_tr, x_te, y_tr, y_te = digits_split(0)
data = TensorDataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr))
torch.manual_seed(0)
model = DigitsCNN()
loss = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])
cfg = TrainConfig(epochs=epochs, lr=3e-3, batch_size=32, device="cuda", checkpoint_dir=ckpt or None)
if stop_after:  # simulate a run cut off after `stop_after` epochs on every rank: the same schedule, fewer epochs
    from torch.utils.data import DistributedSampler
    real_set_epoch = DistributedSampler.set_epoch
    def cut(self, epoch):
        if epoch >= stop_after:  # rank 0 has written the checkpoint of epoch `stop_after` by now
            raise SystemExit(0)
        real_set_epoch(self, epoch)
    DistributedSampler.set_epoch = cut
t0 = time.perf_counter()
r = train(model, loss, data, cfg)
elapsed = time.perf_counter() - t0
world = int(os.environ.get("WORLD_SIZE", "1"))
same = True
if world > 1:
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    same = all(torch.equal(g, flat) for g in gathered)
flat_device = lambda m: next(m.parameters()).device
if int(os.environ.get("RANK", "0")) == 0:
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x_te).to(flat_device(model))).argmax(-1).cpu()
    acc = float((pred == torch.from_numpy(y_te)).float().mean()) * 100
    backend = dist.get_backend() if dist.is_initialized() else "none"
    json.dump({"world": world, "backend": backend, "accuracy": acc, "steps": r.steps, "epochs": r.epochs_run,
               "resumed_from_epoch": r.resumed_from_epoch, "replicas_identical": same, "seconds": elapsed,
               "first_loss": r.history[0]["loss"] if r.history else None, "last_loss": r.history[-1]["loss"],
               "weights_sum": float(sum(p.double().sum() for p in model.parameters()))}, open(out, "w"))
if dist.is_initialized():
    dist.destroy_process_group()
"""


def _run(n: int, epochs: int, ckpt: str, stop_after: int, out: Path, port: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path("src").resolve()), str(Path(".").resolve()),
                                                        os.environ.get("PYTHONPATH", "")])}
    script = out.with_suffix(".worker.py")
    script.write_text(WORKER)
    if n == 1:
        cmd = [sys.executable, str(script)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port", str(port),
               str(script)]
    proc = subprocess.run(cmd + [str(epochs), ckpt, str(stop_after), str(out)], env=env, capture_output=True,
                          text=True, timeout=100)
    if proc.returncode != 0:
        raise SystemExit(f"run with {n} process(es) failed:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text()) if out.exists() else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    n = torch.cuda.device_count()
    if n < 2:
        print(f"SKIP: this check needs 2+ CUDA GPUs; this machine has {n}")
        return 0
    tmp = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    one = _run(1, args.epochs, "", 0, tmp / "one.json", 29600)
    multi = _run(n, args.epochs, str(tmp / "ckpt_a"), 0, tmp / "multi.json", 29601)
    _run(n, args.epochs, str(tmp / "ckpt_b"), 2, tmp / "cut.json", 29602)
    resumed = _run(n, args.epochs, str(tmp / "ckpt_b"), 0, tmp / "resumed.json", 29603)
    rows = {"one_gpu": one, f"{n}_gpus": multi, f"{n}_gpus_resumed": resumed}
    for k, v in rows.items():
        print(f"{k:16s} world={v['world']} backend={v['backend']:5s} acc={v['accuracy']:.2f}% steps={v['steps']} "
              f"epochs={v['epochs']} resumed_from={v['resumed_from_epoch']} identical={v['replicas_identical']} "
              f"loss {v['first_loss']:.4f}->{v['last_loss']:.4f} {v['seconds']:.1f}s")
    ok = (multi["backend"] == "nccl" and multi["world"] == n and multi["replicas_identical"]
          and multi["accuracy"] >= one["accuracy"] - 1.5 and resumed["resumed_from_epoch"] == 2
          and resumed["steps"] == multi["steps"] and abs(resumed["weights_sum"] - multi["weights_sum"]) < 1e-4
          and resumed["replicas_identical"])
    if args.out:
        from slimforge.env import environment

        args.out.write_text(json.dumps({"environment": environment(), "gpus": n, "rows": rows, "ok": ok,
                                        "wall_s": time.perf_counter() - t0}, indent=2))
    print(("PASS" if ok else "FAIL") + f": DDP over NCCL on {n} GPUs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
