"""The shared trainer: learns, is deterministic, resumes from checkpoints exactly, stops early, runs under torchrun."""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.data import TensorDataset

from slimforge.train import TrainConfig, train


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=g)
    w = torch.randn(8, 1, generator=g)
    return TensorDataset(x, x @ w + 0.01 * torch.randn(256, 1, generator=g))


def _mse(model, batch):
    return torch.nn.functional.mse_loss(model(batch[0]), batch[1])


def _model():
    torch.manual_seed(123)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def test_learns_and_is_deterministic():
    a, b = _model(), _model()
    ra = train(a, _mse, _problem(), TrainConfig(epochs=10, lr=5e-2, seed=7))
    rb = train(b, _mse, _problem(), TrainConfig(epochs=10, lr=5e-2, seed=7))
    assert ra.history[-1]["loss"] < ra.history[0]["loss"] / 5
    assert [r["loss"] for r in ra.history] == [r["loss"] for r in rb.history]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path):
    straight = _model()
    r_straight = train(straight, _mse, _problem(), TrainConfig(epochs=4, lr=1e-2))
    cfg = TrainConfig(epochs=4, lr=1e-2, checkpoint_dir=str(tmp_path / "ckpt"))
    first = _partial(cfg, 2)
    assert first.epochs_run == 2 and (tmp_path / "ckpt" / "last.pt").exists()
    fresh = _model()  # a new process would start from scratch weights: resume must restore everything
    r = train(fresh, _mse, _problem(), cfg)
    assert r.resumed_from_epoch == 2 and r.epochs_run == 4
    assert [round(x["loss"], 10) for x in r.history] == [round(x["loss"], 10) for x in r_straight.history]
    assert all(torch.allclose(p, q) for p, q in zip(fresh.parameters(), straight.parameters()))


def _partial(cfg, epochs):
    """Train only the first ``epochs`` of ``cfg``'s schedule, as if the run was cut off."""
    import slimforge.train.trainer as tr

    class Stop(Exception):
        pass

    real = tr._checkpoint
    calls = []

    def checkpoint_then_maybe_stop(*args, **kw):
        real(*args, **kw)
        calls.append(1)
        if len(calls) == epochs:
            raise Stop

    tr._checkpoint = checkpoint_then_maybe_stop
    try:
        train(_model(), _mse, _problem(), cfg)
    except Stop:
        pass
    finally:
        tr._checkpoint = real
    state = torch.load(f"{cfg.checkpoint_dir}/last.pt", weights_only=False)
    return state["result"]


def test_early_stopping_keeps_the_best_weights():
    model = _model()
    scores = iter([0.5, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    snapshots = []

    def eval_fn(m):
        snapshots.append([p.detach().clone() for p in m.parameters()])
        return next(scores)

    r = train(model, _mse, _problem(), TrainConfig(epochs=7, lr=1e-2, patience=2), eval_fn=eval_fn)
    assert r.stopped_early and r.epochs_run == 4 and r.best_epoch == 1 and r.best_metric == 0.9
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), snapshots[1]))


def test_bad_settings_fail_loudly():
    from slimforge.errors import ConfigError

    with pytest.raises(ConfigError, match="lr must be > 0"):
        TrainConfig(lr=0)
    with pytest.raises(ConfigError, match="loss became"):
        train(_model(), lambda m, b: torch.tensor(float("nan"), requires_grad=True), _problem(),
              TrainConfig(epochs=1))


def test_distributed_data_parallel_under_torchrun(tmp_path):
    """Two processes on CPU (Gloo): the same code path as several GPUs under NCCL."""
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent("""
        import os, torch, torch.distributed as dist
        from torch.utils.data import TensorDataset
        from slimforge.train import TrainConfig, train
        torch.manual_seed(0)
        x = torch.randn(128, 4); y = x.sum(1, keepdim=True)
        torch.manual_seed(1)
        m = torch.nn.Linear(4, 1)
        r = train(m, lambda mod, b: torch.nn.functional.mse_loss(mod(b[0]), b[1]), TensorDataset(x, y),
                  TrainConfig(epochs=5, lr=5e-2, batch_size=16, device="cpu"))
        w = m.weight.detach().clone()
        gathered = [torch.zeros_like(w) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, w)
        assert all(torch.equal(g, w) for g in gathered), "replicas diverged"
        if dist.get_rank() == 0:
            print("WORLD", dist.get_world_size(), "LOSS", r.history[0]["loss"], r.history[-1]["loss"])
        dist.destroy_process_group()
    """))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("WORLD")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = lines[0].split()
    assert line[1] == "2" and float(line[4]) < float(line[3]) / 2


def test_killed_mid_epoch_resumes_and_takes_the_same_number_of_steps(tmp_path):
    """A run killed in the middle of epoch 3 resumes from its last step checkpoint and ends identical."""
    straight = _model()
    ref = train(straight, _mse, _problem(), TrainConfig(epochs=4, lr=1e-2, batch_size=16))

    cfg = TrainConfig(epochs=4, lr=1e-2, batch_size=16, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=5)
    calls = {"n": 0}

    class Killed(Exception):
        pass

    def dying_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 2 * 16 + 8:  # epoch 3 (16 steps an epoch), step 8: after the step-5 checkpoint
            raise Killed
        return _mse(model, batch)

    with pytest.raises(Killed):
        train(_model(), dying_loss, _problem(), cfg)
    resumed = _model()
    r = train(resumed, _mse, _problem(), cfg)
    assert r.resumed_from_epoch == 2 and r.resumed_from_step == 2 * 16 + 5
    assert r.steps == ref.steps == 4 * 16
    assert [round(x["loss"], 8) for x in r.history] == [round(x["loss"], 8) for x in ref.history]
    assert all(torch.allclose(p, q) for p, q in zip(resumed.parameters(), straight.parameters()))
