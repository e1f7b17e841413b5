"""``slimforge.search_architecture``: the user's model and data in, the searched model and its evidence out
(``nas.json``, ``nas_trials.csv``, ``nas_pareto.png`` and the chosen model as a ``.pt2`` with its lineage)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from slimforge.core.context import ProgressFn
from slimforge.errors import ConfigError, DataError
from slimforge.nas.result import NasResult, budget_ms
from slimforge.nas.search import Constraints, search_mobilenet

SPACES = ("auto", "subnet", "mobilenet_v3")


def _arrays(art: Any, data: Any) -> tuple[np.ndarray, np.ndarray]:
    from slimforge.io.data import load_data
    from slimforge.train.data import collect

    ds = load_data(data, art) if isinstance(data, (str, Path)) else data
    tensors, _, labels = collect(art, ds, limit=None)
    if labels is None:
        raise DataError(f"{getattr(ds, 'name', data)}: architecture search trains on labels; this data has none "
                        "(sub-folders of images, or 'labels' in .npz/CSV)")
    if len(tensors) != 1:
        raise ConfigError("the mobilenet_v3 space takes models with one image input")
    return tensors[0].numpy(), labels.numpy()


def search_architecture(model: Any, data: Any, *, space: str = "auto",
                        max_latency_ms: float | str | None = "50%", batch: int = 64,
                        max_size_mb: float | None = None, max_params: int | None = None,
                        min_accuracy: float | None = None, min_cosine: float | None = None,
                        distill_epochs: int = 0, distill_top: int = 3, trials: int = 30,
                        time_budget_s: float | None = None,
                        epochs: int = 15, threads: int | None = 1, test_fraction: float = 0.2, seed: int = 0,
                        output_dir: str | Path | None = None, force: bool = False,
                        progress: ProgressFn | None = None) -> NasResult:
    """Search ``space`` for the most accurate model that meets the budgets, each measured on the target (torch,
    ``threads``) at ``batch``. ``model`` is the baseline (its latency sets ``"50%"`` budgets, its accuracy the drop
    reported). ``space``: ``subnet`` (sub-networks of the model itself, scored without training: a transformer
    encoder's depth, heads and FFN widths by cosine to it; a CNN's channels per stage by accuracy on labelled ``data``,
    else by cosine; ``distill_epochs`` then distils the best ``distill_top`` finalists measured within budget and keeps
    the best after training), ``mobilenet_v3`` (trained on labelled
    ``data``, of which ``test_fraction`` is held out from the whole search), or ``auto`` (subnet for encoders).

    Example:
        >>> # res = slimforge.search_architecture("cnn.pt2", "digits.npz", max_latency_ms="50%", trials=30)
        >>> # res.to_dict()["chosen"]["arch"], res.paths["model"]
    """
    from slimforge.core.outputs import check_output_dir
    from slimforge.io.models import load

    if space not in SPACES:
        raise ConfigError(f"unknown search space {space!r}; choose from {', '.join(SPACES)}")
    if trials < 1 or batch < 1 or epochs < 1 or not 0 < test_fraction < 1:
        raise ConfigError("trials, batch and epochs must be >= 1 and test_fraction in (0, 1)")
    if output_dir is not None:
        check_output_dir(output_dir, force=force)
    art = model if hasattr(model, "handle") else load(model)
    if space == "auto":
        from slimforge.nas.subnet_run import is_encoder

        space = "subnet" if is_encoder(art.handle) else "mobilenet_v3"
    if space == "subnet":
        from slimforge.nas.subnet_run import run_subnet

        res = run_subnet(art, data, max_latency_ms=max_latency_ms, batch=batch, max_size_mb=max_size_mb,
                         max_params=max_params, min_cosine=min_cosine, min_accuracy=min_accuracy, trials=trials,
                         time_budget_s=time_budget_s, threads=threads, seed=seed, distill_epochs=distill_epochs,
                         distill_top=distill_top, progress=progress)
        return _write(res, art, output_dir, force)
    x, y = _arrays(art, data)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_test = max(int(len(x) * test_fraction), 1)
    test, train = order[:n_test], order[n_test:]
    baseline = art.handle if hasattr(art.handle, "parameters") else None
    base_ms = None
    if baseline is not None and isinstance(max_latency_ms, str) and max_latency_ms.strip().endswith("%"):
        from slimforge.nas.search import image_feeds, measure_finalists

        info, _ = measure_finalists([], baseline, "torch", Constraints(batch=batch),
                                    image_feeds(batch, x.shape[1], (x.shape[2], x.shape[3])), threads)
        base_ms = info.get("latency_ms")
    constraints = Constraints(max_latency_ms=budget_ms(max_latency_ms, base_ms), max_size_mb=max_size_mb,
                              max_params=max_params, min_accuracy=min_accuracy, batch=batch)
    outcome = search_mobilenet(x[train], y[train], x[test], y[test], constraints=constraints, trials=trials,
                               time_budget_s=time_budget_s, epochs=epochs, threads=threads, seed=seed,
                               baseline=baseline, progress=progress)
    res = NasResult(outcome, constraints, budget_basis_ms=base_ms)
    if outcome.chosen is not None:
        from slimforge.io.models import load as load_module

        chosen = outcome.chosen
        from slimforge.nas.subnet_run import INTERFACE, with_interface

        found = load_module(chosen.model.eval(), example_inputs={art.io.input_names[0]: x[:1]},  # type: ignore
                            name=f"{art.name}-nas")
        # not the original's labels: this network is trained from scratch on the data's classes
        res.artifact = with_interface(found, art, tuple(k for k in INTERFACE if k != "labels"))
        res.artifact.meta["lineage"] = {"source": art.name, "search": "mobilenet_v3", "arch": chosen.arch.to_dict(),
                                        "trial": chosen.number, "test_accuracy": chosen.test_accuracy}
    return _write(res, art, output_dir, force)


def _write(res: NasResult, art: Any, output_dir: str | Path | None, force: bool) -> NasResult:
    from slimforge.core.outputs import prepare_output_dir, write_text

    if output_dir is not None:
        out = prepare_output_dir(output_dir, force=force, fresh=False)
        doc = res.to_dict()
        res.paths["json"] = write_text(out / "nas.json", json.dumps(doc, indent=2, default=str))
        res.paths["csv"] = write_text(out / "nas_trials.csv", _csv(doc["trials"]))
        from slimforge.nas.plot import write_pareto

        res.paths["plot"] = write_pareto(doc, out / "nas_pareto.png")
        if res.artifact is not None:
            from slimforge.io.save import save

            res.paths["model"] = out / "nas-best.pt2"
            res.artifact = save(res.artifact, res.paths["model"])
    return res


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    cols = ["trial", "arch", "params", "size_mb", "predicted_ms", "measured_ms", "val_accuracy", "test_accuracy",
            "violations"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "violations": "; ".join(r["violations"])})
    return buf.getvalue()
