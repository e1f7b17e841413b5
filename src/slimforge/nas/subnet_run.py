"""The ``subnet`` space end to end: the model's inputs from the data (no labels needed), the budget from the original's
measured latency, the search, the chosen sub-network as an artifact with its lineage, and, when asked, its
distillation from the original with the shared trainer (on the GPU when there is one)."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import torch

from slimforge.core.context import ProgressFn
from slimforge.errors import ConfigError

log = logging.getLogger(__name__)


INTERFACE = ("task", "preprocess", "labels", "vocab_size", "max_positions")  # what a sub-network keeps of the meta


def with_interface(found: Any, original: Any, keys: tuple[str, ...] = INTERFACE) -> Any:
    """``found`` (a searched network as an artifact) with the original's interface meta: its task, tokenizer or
    image preprocessing, labels (without them it could not read text or images: static INT8 calibration on text
    refused a MiniLM sub-network)."""
    return dataclasses.replace(found, meta={**found.meta, **{k: v for k, v in original.meta.items() if k in keys}})
ALL_EXAMPLES = 10_000_000  # distillation takes every example of the search's data


def model_inputs(art: Any, data: Any, limit: int | None = 4096) -> list[torch.Tensor]:
    """A loaded dataset as the model's input tensors; token inputs lose the padding columns no example uses."""
    from slimforge.train.data import collect, mask_index

    tensors, _, _ = collect(art, data, limit=limit)
    m = mask_index(art)
    if m is not None:
        used = int((tensors[m] > 0).any(0).nonzero().max()) + 1
        tensors = [t[:, :used] if t.ndim == 2 and t.shape[1] == tensors[m].shape[1] else t for t in tensors]
    return tensors


def run_subnet(art: Any, data: Any, *, max_latency_ms: float | str | None, batch: int, max_size_mb: float | None,
               max_params: int | None, min_cosine: float | None, trials: int, time_budget_s: float | None,
               threads: int | None, seed: int, distill_epochs: int, progress: ProgressFn | None,
               min_accuracy: float | None = None, distill_top: int = 3) -> Any:
    from slimforge.io.models import load as load_module
    from slimforge.nas.result import NasResult, budget_ms
    from slimforge.nas.search import Constraints, measure_finalists
    from slimforge.nas.subnet_search import search_subnet
    from slimforge.train.data import mask_index

    module = art.handle
    if not hasattr(module, "parameters"):
        raise ConfigError("the subnet space cuts a PyTorch model; load the model as PyTorch (not ONNX) to search it")
    if data is None:
        raise ConfigError("the subnet search scores candidates on your inputs: pass --data (a text file, .npz, ...)")
    from slimforge.io.data import load_data

    ds = load_data(data, art) if not hasattr(data, "batches") else data  # once, for search and distillation
    inputs = model_inputs(art, ds)
    names = list(art.io.input_names)
    base_ms = None
    if isinstance(max_latency_ms, str) and max_latency_ms.strip().endswith("%"):
        feeds = {n: t[:batch].numpy() for n, t in zip(names, inputs)}
        info, _ = measure_finalists([], module, "torch", Constraints(batch=batch), feeds, threads)
        base_ms = info.get("latency_ms")
    constraints = Constraints(max_latency_ms=budget_ms(max_latency_ms, base_ms), max_size_mb=max_size_mb,
                              max_params=max_params, min_cosine=min_cosine, min_accuracy=min_accuracy, batch=batch)
    if is_encoder(module):
        outcome = search_subnet(module, inputs, mask_index(art), names, constraints=constraints, trials=trials,
                                time_budget_s=time_budget_s, threads=threads, seed=seed, progress=progress)
    else:  # a convolutional net: channels per stage, scored by accuracy where the data has labels
        from slimforge.nas.cnn_search import search_cnn
        from slimforge.train.data import collect

        labels = collect(art, ds, limit=4096)[2]
        outcome = search_cnn(module, inputs, labels, names, constraints=constraints, trials=trials,
                             time_budget_s=time_budget_s, threads=threads, seed=seed, progress=progress)
    res = NasResult(outcome, constraints, budget_basis_ms=base_ms, space="subnet")
    if outcome.chosen is None:
        return res
    example = {n: t[:2].numpy() for n, t in zip(names, inputs)}

    def as_artifact(trial: Any) -> Any:
        cut = load_module(trial.model.eval(), example_inputs=example, name=f"{art.name}-subnet")  # type: ignore
        return with_interface(cut, art)

    if distill_epochs > 0:  # train what wins: the best few measured within budget, then the best after training
        budget = constraints.max_latency_ms
        within = sorted([r for r in outcome.trials if r.model is not None and r.measured_ms is not None
                         and (budget is None or r.measured_ms <= budget)], key=lambda r: -(r.accuracy or 0.0))
        runs = []
        for trial in within[:max(1, distill_top)]:
            student, info = _distill(art, as_artifact(trial), ds, distill_epochs, seed, kept_layers(module, trial))
            runs.append((trial, student, {"trial": trial.number, "arch": trial.arch.describe(), **info}))
        trial, res.artifact, res.distilled = max(runs, key=lambda r: _after(r[2]))
        res.distilled = {**res.distilled, "finalists": [r[2] for r in runs]}
        outcome.chosen = trial
    else:
        res.artifact = as_artifact(outcome.chosen)
    chosen = outcome.chosen
    res.artifact.meta["lineage"] = {"source": art.name, "search": "subnet", "arch": chosen.arch.to_dict(),
                                    "trial": chosen.number, "test_score": chosen.test_accuracy,
                                    **({"distilled": res.distilled} if res.distilled else {})}
    return res


def _after(info: dict[str, Any]) -> tuple[float, float]:
    """A distilled finalist's held-out score after training, higher is better. A labelled classifier is ranked by
    its held-out log-loss: accuracy often ties at 100% of a small held-out share (digits: two of three finalists at
    100% of 250 images), and the cosine of logits is blind to confidence. (It does not make that share predict the
    test split: on digits the 16/16/16/x finalists fit it best and tested 1.3-1.7 points lower.) Otherwise: the
    cosine to the original (or accuracy), ties to the closer one."""
    held = info.get("heldout") or {}
    if "log_loss" in held:  # (a non-finite loss, from overflowing logits, ranks last)
        loss = float(held["log_loss"])
        return (-loss if math.isfinite(loss) else float("-inf")), float(held.get("cosine_to_teacher", float("-inf")))
    score = next((v for k, v in held.items() if k.endswith("_after")), float("-inf"))
    return float(score), float(held.get("cosine_to_teacher", float("-inf")))


def is_encoder(module: Any) -> bool:
    """Whether ``module`` is a transformer encoder the subnet space can cut (else a CNN is tried)."""
    from slimforge.nas.subnet import geometry

    try:
        geometry(module)
        return True
    except (ConfigError, AttributeError, TypeError):
        return False


def kept_layers(module: Any, trial: Any) -> tuple[str, ...]:
    """The module names of an encoder sub-network's kept layers (the same names in the original and the cut: a
    dropped layer is a ``Skip`` in its place), for hidden-state distillation; nothing for a CNN."""
    if not is_encoder(module):
        return ()
    from slimforge.nas.subnet import geometry

    container = geometry(module).container
    return tuple(f"{container}.{i}" for i, (heads, _) in enumerate(trial.arch.layers) if heads)


def _distill(teacher: Any, student: Any, ds: Any, epochs: int, seed: int,
             hidden: tuple[str, ...] = ()) -> tuple[Any, dict[str, Any]]:
    """Output distillation from the original with the shared trainer (the embedding's cosine, or the logits), plus,
    given ``hidden`` (an encoder's kept layers), each kept layer's output matched to the same layer of the original
    token by token; the student that comes back is the one the held-out check judged."""
    from slimforge.core.context import RunContext
    from slimforge.plan.engine import apply_step
    from slimforge.techniques.distill.torch_distill import DistillConfig

    # an encoder's embeddings stay as they are (the sub-network kept all of them); a CNN has none to keep
    has_embeddings = any("embeddings" in name for name, _ in student.handle.named_modules())
    # every epoch asked for (no early stop: at patience 3, a held-out accuracy that reached 100% early on digits
    # stopped training after a few)
    # all of the data (DistillConfig's default takes 4,096 examples: on the H200 a MiniLM sub-network searched on
    # 30,000 sentences was distilled on 3,277 of them, and its held-out cosine was still rising after 10 epochs)
    # on a GPU, batches of 128: at 32 a step of a MiniLM sub-network is launch-bound (about 19 ms on an H200)
    from slimforge.train.trainer import resolve_device

    batch = 128 if resolve_device("auto").type == "cuda" else 32
    cfg = DistillConfig(epochs=epochs, lr=5e-4, freeze=("*embeddings*",) if has_embeddings else (), min_cosine=None,
                        max_drop=None, seed=seed, num_samples=ALL_EXAMPLES, batch_size=batch, hidden_layers=hidden)
    out = apply_step(student, cfg, RunContext(calibration_data=ds, baseline=teacher, seed=seed))
    info = {**out.meta.get("distill", {}), "hidden_layers": list(hidden)}
    checks = {c.name: c for c in out.checks}
    held = checks.get("distill_heldout")
    if held is not None:
        info["heldout"] = held.metrics
    return out, info
