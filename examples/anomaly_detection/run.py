"""Anomaly-detection lab, one command: ``python examples/anomaly_detection/run.py``.

Builds the data (an MVTec-AD category with ``--mvtec DIR``, else crops of scikit-learn's sample photos with drawn
defects), trains a small vision transformer, then through slimforge's public API: dynamic INT8, ONNX Runtime, the
auto-optimizer for the CPU, CPU-vs-GPU cost, and a load test of the served model. Writes
``optimization_report.csv``, ``benchmark_cpu_gpu.png``, ``optimization_complete.png`` and ``report.md`` to ``--out``
(default ``examples/anomaly_detection/out``). ``--quick`` is the reduced run the tests use.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

MARKER = ".anomaly-lab.json"  # lists what a run of this lab wrote to its output folder
OUTPUTS = ("optimization_report.csv", "optimization_report.json", "optimization_complete.png", "report.md",
           "benchmark_cpu_gpu.png", "benchmark_cpu_gpu.csv", "benchmark_cpu_gpu.json", "models", "data", "slimforge",
           "serve.log")


@dataclass(frozen=True)
class Settings:
    """How much work each stage does; ``quick`` is the reduced run the tests use."""

    train_crops: int
    test_crops: int
    epochs: int
    auto_budget_s: float
    loadtest_s: float
    concurrency: int
    batch_sizes: tuple[int, int] = (1, 32)

    @staticmethod
    def for_mode(quick: bool) -> Settings:
        if quick:
            return Settings(train_crops=1600, test_crops=400, epochs=3, auto_budget_s=25, loadtest_s=3,
                            concurrency=4)
        return Settings(train_crops=10000, test_crops=800, epochs=13, auto_budget_s=45, loadtest_s=10,
                        concurrency=8)


class Stages:
    """Prints one line per stage with the seconds since the start."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f} s] {text}", flush=True)


def claim_output(out: Path, *, force: bool) -> Path:
    """Use ``out`` only when it is new, empty, or made by this lab (its marker lists what a previous run wrote,
    which is removed). A folder holding other files is refused unless ``force``; even then, no file of the user's
    is replaced: a clash with one of the lab's output names is refused."""
    out = out.expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: {out} exists and is not a folder")
    marker = out / MARKER
    if marker.is_file():
        previous = json.loads(marker.read_text()).get("files", [])
        for name in previous:
            if name in OUTPUTS:  # never follow a name the lab does not write
                path = out / name
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
    elif out.exists() and any(out.iterdir()):
        if not force:
            raise SystemExit(f"error: {out} holds files this lab did not write; choose another --out, or pass "
                             "--force to write beside them (files of yours are never replaced)")
        clash = [n for n in OUTPUTS if (out / n).exists() or (out / n).is_symlink()]
        if clash:
            raise SystemExit(f"error: {out} already holds {', '.join(clash)}, which this lab did not write; it "
                             "will not replace them even with --force: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"written_by": "examples/anomaly_detection/run.py", "files": list(OUTPUTS)}))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=HERE / "out", help="output folder (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="write into a folder that holds other files")
    p.add_argument("--mvtec", type=Path, help="an MVTec-AD category folder (train/good, test/<defect>, test/good)")
    p.add_argument("--quick", action="store_true", help="the reduced run (fewer crops and epochs, short budgets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="training epochs (default: 13, quick 3)")
    p.add_argument("--size", type=int, default=64, help="crop size in pixels (a multiple of 8)")
    p.add_argument("--no-progress-bar", action="store_true", help="one line per epoch instead of a tqdm bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = Settings.for_mode(args.quick)
    log = Stages()
    out = claim_output(args.out, force=args.force)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import numpy as np
    import torch

    import data as lab_data
    import model as lab_model
    import report as lab_report
    import stages as lab_stages
    import slimforge

    threads = max(1, min(torch.get_num_threads(), os.cpu_count() or 1))
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    log(f"output folder {out}; training on {device}; {threads} CPU threads; slimforge {slimforge.__version__}")

    if args.mvtec:
        ds = lab_data.mvtec_dataset(args.mvtec, size=args.size, seed=args.seed)
    else:
        ds = lab_data.synthetic_dataset(n_train=cfg.train_crops, n_test=cfg.test_crops, size=args.size,
                                        seed=args.seed)
    log(f"data: {ds.summary()}")
    data_dir = out / "data"
    data_dir.mkdir()
    heldout_npz, val_npz = data_dir / "heldout.npz", data_dir / "validation.npz"
    np.savez(heldout_npz, image=ds.x_test, labels=ds.y_test)
    np.savez(val_npz, image=ds.x_val, labels=ds.y_val)
    payload = data_dir / "payload.json"
    lab_stages.write_payload(payload, ds.x_test[int(np.argmax(ds.y_test))])

    net = lab_model.TinyViT(image_size=args.size)
    net.set_normalisation(ds.x_train)
    n_params = sum(p.numel() for p in net.parameters())
    epochs = args.epochs or cfg.epochs
    log(f"training a ViT ({n_params / 1e6:.2f} M parameters) for {epochs} epochs of {len(ds.y_train)} crops")
    t_train = time.perf_counter()
    lab_model.train(net, ds.x_train, ds.y_train, lab_model.TrainConfig(epochs=epochs, seed=args.seed),
                    device=device, show_bar=not args.no_progress_bar, resample=ds.resample)
    train_s = time.perf_counter() - t_train
    net.cpu()
    cal = lab_model.calibrate_threshold(net, ds.x_val, ds.y_val)
    log(f"decision threshold {cal['threshold']:.2f} on the anomaly probability, chosen on {len(ds.y_val)} validation "
        f"crops ({cal['val_accuracy_at_0.5']:.2f}% at 0.5 -> {cal['val_accuracy']:.2f}%), built into the model")
    acc = 100.0 * float((lab_model.predict(net, ds.x_test).argmax(1) == ds.y_test).mean())
    log(f"trained in {train_s:.0f} s: held-out accuracy {acc:.2f}%")

    if args.quick:  # enough to produce every figure, not to decide close calls
        spec = slimforge.BenchSpec(warmup=2, repeats=8, min_time_s=0.05, max_time_s=2.0, rounds=3, max_rounds=3,
                                   rel_ci=0.1)
    else:
        spec = slimforge.BenchSpec(warmup=3, repeats=15, min_time_s=0.2, max_time_s=5.0, rounds=6, max_rounds=12,
                                   rel_ci=0.05)
    variants, auto = lab_stages.build_variants(
        net, size=args.size, val_npz=val_npz, models_dir=out / "models", auto_dir=out / "slimforge" / "auto",
        spec=spec, auto_budget_s=cfg.auto_budget_s, log=log)
    for v in variants:
        v.quality = lab_stages.held_out_quality(v.artifact, v.runtime, ds.x_test, ds.y_test)
        log(f"held-out {v.label}: accuracy {v.quality['accuracy']:.2f}%, precision {v.quality['precision']:.2f}%, "
            f"recall {v.quality['recall']:.2f}%")
    log("timing the variants side by side (slimforge.benchmark)")
    lab_stages.measure(variants, heldout_npz=heldout_npz, batch_sizes=cfg.batch_sizes, spec=spec)
    rows = lab_report.rows_for(variants, cfg.batch_sizes)
    for r in rows:
        log(f"  {r['variant']}: p50 {r['p50_ms_small']:.3f} ms (b={cfg.batch_sizes[0]}), "
            f"{r['throughput_large_per_s']:.0f} items/s (b={cfg.batch_sizes[1]}), latency "
            f"{-r['latency_reduction_pct']:+.1f}%, cost {-r['cost_reduction_pct']:+.1f}%")
    log("CPU vs GPU with prices (slimforge.benchmark_devices)")
    devices = lab_stages.device_benchmark(variants[0].artifact, heldout_npz=heldout_npz, out_dir=out,
                                          work_dir=out / "slimforge" / "cost", batch_sizes=cfg.batch_sizes,
                                          spec=spec)
    best, _ = lab_report.recommend(rows, devices)
    served = variants[best]
    log(f"load test: slimforge serve {served.file.name} + slimforge loadtest ({cfg.loadtest_s:g} s)")
    load = lab_stages.load_test(served.file, payload=payload, out_dir=out / "slimforge" / "loadtest",
                                log_file=out / "serve.log", concurrency=cfg.concurrency,
                                duration_s=cfg.loadtest_s)
    log(f"  {load['requests']} requests, {load['throughput_rps']:.1f} req/s, p95 {load['latency_ms']['p95']:.1f} "
        f"ms, p99 {load['latency_ms']['p99']:.1f} ms, errors {load['errors']}")

    lab_report.write_csv(rows, out / "optimization_report.csv")
    lab_report.plot(rows, out / "optimization_complete.png")
    notes = _notes(ds, args, auto, variants)
    info = {"data": ds.summary(), "device": device, "train_s": train_s, "threshold": cal, "seed": args.seed, "threads": threads,
            "mode": "quick" if args.quick else "full", "n_test": len(ds.y_test), "notes": notes,
            "model": f"ViT, {args.size}x{args.size} crops, 8x8 patches (convolutional stem), dim 128, depth 4, "
                     f"4 heads, class token + max-pooled patch tokens, {n_params / 1e6:.2f} M parameters, "
                     f"{epochs} epochs of {len(ds.y_train)} crops"}
    lab_report.write_markdown(out / "report.md", rows=rows, devices=devices, load=load,
                              served=f"models/{served.file.name}" if served.file.parent.name == "models"
                              else str(served.file.relative_to(out)), info=info)
    summary = {"rows": [r.values for r in rows], "devices": devices, "loadtest": load, "train_s": train_s,
               "heldout_accuracy_pct": acc, "recommended": served.label, "seconds": time.perf_counter() - log.t0}
    (out / "optimization_report.json").write_text(json.dumps(summary, indent=2, default=str))
    log(f"done: {out / 'report.md'}")
    return summary


def _notes(ds, args, auto, variants) -> list[str]:  # noqa: ANN001 - the lab's own objects
    notes = []
    if not args.mvtec:
        notes.append(f"Held-out crops come from {len(ds.test_blocks)} image blocks that no training crop touches "
                     "(a diagonal lattice of a grid of about 71x80-pixel blocks per photo); training crops are "
                     "re-cut every epoch "
                     "from the other blocks, in pairs (a crop and the same crop with a defect), with colour "
                     f"augmentation. {len(ds.val_blocks)} further blocks, touched by neither, give the validation "
                     "crops: the decision threshold is chosen on them (the model flags unseen textures as anomalous "
                     "more often than seen ones) and the auto-optimizer judges on them.")
    else:
        notes.append("MVTec-AD: train/good and half of each test folder (stratified, seeded) train the model, less "
                     "a validation share kept out of training for the threshold; the other half of each test folder "
                     "is the held-out set.")
    notes.append("Held-out accuracy is in whole blocks: crops of one block share their content, so one hard block "
                 "(e.g. dark foliage with bright sky gaps, which looks like spots) moves it by several points.")
    notes.append(f"Auto-optimizer: {variants[-1].note}; goals "
                 f"{'met' if auto.goals_met else 'missed: ' + '; '.join(auto.missed)}; "
                 f"its report: slimforge/auto/report.html.")
    return notes


if __name__ == "__main__":
    main()
