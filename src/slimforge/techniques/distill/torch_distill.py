"""Knowledge distillation from a teacher into a student, with the shared trainer.

Logits: ``alpha * T^2 * KL(softmax(s/T) || softmax(t/T)) + (1 - alpha) * CE(s, labels)`` (the task term needs
labels). Embeddings (encoders, no labels needed): MSE or ``1 - cosine`` between student and teacher outputs (the
pooled, normalised sentence embeddings for sentence-transformers models). A held-out share of the data is scored
after every epoch (accuracy, or cosine to the teacher), which gives the curve and drives early stopping. The
held-out share is a seeded random draw, stratified by label (``heldout.split_indices``), never the tail of the data;
at the end the student is judged against the teacher on it (``heldout.judge_student``): with labels, its top-1
accuracy against the teacher's; for classifiers without labels, top-1 agreement; for embeddings, cosine. A student
that ends further below its teacher than ``max_drop`` (or ``min_cosine``) allows fails the ``distill_heldout``
check, which raises ``VerificationError`` (the trained student is on the error's ``report``).

The artifact being transformed is the student; the teacher is the run's baseline (``RunContext.baseline``), e.g. the
unpruned FP32 model when distilling after pruning.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, Subset, TensorDataset

from slimforge.core.artifact import Artifact, Format, Step
from slimforge.core.config import Config, coerce_fields
from slimforge.core.context import RunContext
from slimforge.core.registry import implements
from slimforge.errors import ConfigError, DataError, UnsupportedModelError, VerificationError
from slimforge.torch_utils import run_module, set_training
from slimforge.train import TrainConfig, train
from slimforge.techniques.distill.heldout import Tolerance, judge_student, split_indices
from slimforge.train.trainer import resolve_device
from slimforge.train.data import collect, mask_index


class DistillMode(str, enum.Enum):
    AUTO = "auto"  # embedding for embedders, logits otherwise
    LOGITS = "logits"
    EMBEDDING_MSE = "embedding-mse"
    EMBEDDING_COSINE = "embedding-cosine"


@dataclass(frozen=True, kw_only=True, slots=True)
class DistillConfig(Config):
    """Distillation settings.

    Example:
        >>> DistillConfig(temperature=4, alpha=0.7, epochs=10).mode.value
        'auto'
    """

    kind = "distill"
    mode: DistillMode = DistillMode.AUTO
    temperature: float = 4.0
    alpha: float = 0.7
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.0
    num_samples: int = 4096
    heldout: float = 0.2  # share of the data scored after each epoch (a seeded random draw, stratified by label)
    max_drop: float | None = 5.0  # accuracy points (agreement points without labels) the student may lose against
    #                               the teacher on the held-out data; None: recorded, not judged
    min_cosine: float | None = 0.9  # embeddings (and outputs that are not class scores): least cosine to the teacher
    hidden_layers: tuple[str, ...] = ()  # module-name globs whose outputs (hidden states) the student also matches
    hidden_weight: float = 1.0
    freeze: tuple[str, ...] = ()  # module-name globs of the student whose weights stay fixed (e.g. "*embeddings*")
    augment: int = 0  # extra token-level variants of each training sentence (span crop, join, word-piece dropout)
    device: str = "auto"  # auto | cpu | cuda
    patience: int | None = None
    checkpoint_dir: str | None = None
    seed: int = 0
    version: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 < self.heldout < 1.0:
            raise ConfigError(f"heldout must be in (0, 1), got {self.heldout}")
        if self.epochs < 1 or self.lr <= 0:
            raise ConfigError("epochs must be >= 1 and lr > 0")
        if self.augment < 0:
            raise ConfigError(f"augment must be >= 0, got {self.augment}")
        if self.max_drop is not None and not 0.0 <= self.max_drop <= 100.0:
            raise ConfigError(f"max_drop must be in [0, 100] (accuracy points) or None, got {self.max_drop}")
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise ConfigError(f"min_cosine must be in [-1, 1] or None, got {self.min_cosine}")


def _mode(cfg: DistillConfig, teacher: Artifact) -> DistillMode:
    if cfg.mode is not DistillMode.AUTO:
        return cfg.mode
    return DistillMode.EMBEDDING_COSINE if teacher.meta.get("task") == "embedding" else DistillMode.LOGITS


def distill_loss(mode: DistillMode, temperature: float, alpha: float, has_labels: bool,
                 hidden: HiddenStates | None = None, hidden_weight: float = 1.0):
    """``loss(student, batch)`` for batches of ``(*inputs, teacher_output[, labels])``."""

    def loss(model: nn.Module, batch):
        base = _output_loss(model, batch)
        if hidden is None:
            return base
        inputs = batch[:-2] if has_labels else batch[:-1]
        return base + hidden_weight * hidden.loss(list(inputs))

    def _output_loss(model: nn.Module, batch):
        labels = batch[-1] if has_labels else None
        target = batch[-2] if has_labels else batch[-1]
        inputs = batch[:-2] if has_labels else batch[:-1]
        out = model(*inputs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        if mode is DistillMode.LOGITS:
            t = temperature
            kd = nn.functional.kl_div(nn.functional.log_softmax(out / t, -1), nn.functional.softmax(target / t, -1),
                                      reduction="batchmean") * t * t
            if labels is None or alpha >= 1.0:
                return kd
            return alpha * kd + (1 - alpha) * nn.functional.cross_entropy(out, labels)
        if mode is DistillMode.EMBEDDING_MSE:
            return nn.functional.mse_loss(out, target)
        return (1 - nn.functional.cosine_similarity(out.flatten(1), target.flatten(1), dim=1)).mean()

    return loss


class HiddenStates:
    """Captures the outputs of matched modules of teacher and student with forward hooks, paired in order (a student
    with fewer layers is paired with evenly spaced teacher layers), and scores their mean squared distance."""

    def __init__(self, teacher: nn.Module, student: nn.Module, patterns: tuple[str, ...],
                 mask_index: int | None) -> None:
        import fnmatch

        def match(m: nn.Module) -> list[nn.Module]:
            return [mod for name, mod in m.named_modules() if name and any(fnmatch.fnmatch(name, p) for p in patterns)]

        t_mods, s_mods = match(teacher), match(student)
        if not t_mods or not s_mods or len(s_mods) > len(t_mods):
            raise ConfigError(f"hidden_layers {list(patterns)} match {len(t_mods)} teacher and {len(s_mods)} student "
                              "modules; they must match at least one, and no more in the student")
        idx = [round(i * (len(t_mods) - 1) / max(len(s_mods) - 1, 1)) for i in range(len(s_mods))]
        self.pairs = list(zip([t_mods[i] for i in idx], s_mods))
        self.teacher, self.mask_index = teacher, mask_index
        self.store: dict[int, torch.Tensor] = {}
        self.handles = [mod.register_forward_hook(self._hook)
                        for mod in {id(m): m for pair in self.pairs for m in pair}.values()]

    def close(self) -> None:
        """Remove the hooks: the distilled student must not keep capturing its activations."""
        for h in self.handles:
            h.remove()
        self.store.clear()

    def _hook(self, module: nn.Module, _inputs, output) -> None:
        self.store[id(module)] = output[0] if isinstance(output, (tuple, list)) else output

    def loss(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            self.teacher(*inputs)
        total = 0.0
        mask = inputs[self.mask_index].unsqueeze(-1).float() if self.mask_index is not None else None
        for t_mod, s_mod in self.pairs:
            t, st = self.store[id(t_mod)].detach(), self.store[id(s_mod)]
            sq = (st - t) ** 2
            total = total + ((sq * mask).sum() / (mask.sum() * sq.shape[-1]) if mask is not None and sq.ndim == 3
                             else sq.mean())
        return total / len(self.pairs)


def augment_tokens(feeds: dict[str, np.ndarray], copies: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``copies`` new examples per row of a right-padded token batch, made from the token ids alone, so that a
    distillation set of a few thousand sentences gives the student many more teacher-labelled inputs. Each new
    example keeps the first and last real token (``[CLS]``/``[SEP]``) and takes one of: a random contiguous span of
    the sentence, the sentence joined with another one, or the sentence with 15% of its word pieces dropped.

    Example:
        >>> ids = np.array([[101, 7, 8, 9, 102, 0], [101, 5, 6, 102, 0, 0]])
        >>> out = augment_tokens({"input_ids": ids, "attention_mask": (ids > 0).astype(int)}, 2)
        >>> out["input_ids"].shape[0], bool((out["input_ids"][:, 0] == 101).all())
        (4, True)
    """
    if "input_ids" not in feeds or "attention_mask" not in feeds:
        raise ConfigError(f"augment works on token inputs (input_ids and attention_mask); this model takes "
                          f"{list(feeds)}. Set augment=0")
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    rng = np.random.default_rng(seed)
    lengths = mask.sum(1).astype(int)
    width = ids.shape[1]
    rows: list[np.ndarray] = []
    new_lengths: list[int] = []
    for _ in range(copies):
        for i in range(len(ids)):
            n = lengths[i]
            body = ids[i, 1:n - 1]
            op = rng.integers(3)
            if op == 0 and len(body) > 3:  # a span of at least a third of the sentence
                k = int(rng.integers(max(2, len(body) // 3), len(body) + 1))
                start = int(rng.integers(0, len(body) - k + 1))
                body = body[start:start + k]
            elif op == 1:  # joined with another sentence
                j = int(rng.integers(len(ids)))
                body = np.concatenate([body, ids[j, 1:lengths[j] - 1]])[:width - 2]
            else:  # word-piece dropout
                keep = rng.random(len(body)) > 0.15
                body = body[keep] if keep.any() else body
            row = np.zeros(width, dtype=ids.dtype)
            row[0], row[1:len(body) + 1], row[len(body) + 1] = ids[i, 0], body, ids[i, n - 1]
            rows.append(row)
            new_lengths.append(len(body) + 2)
    new_ids = np.stack(rows)
    out = {name: np.zeros_like(np.repeat(v[:1], len(new_ids), 0)) for name, v in feeds.items()}
    out["input_ids"] = new_ids
    out["attention_mask"] = (np.arange(width)[None, :] < np.array(new_lengths)[:, None]).astype(mask.dtype)
    return out


def training_data(student: Artifact, teacher: nn.Module, ctx: RunContext, cfg: DistillConfig):
    """(train, heldout, has_labels): batches of ``(*inputs, teacher_output[, label])``, with ``cfg.heldout`` of
    them held out at random (stratified by label); with ``cfg.augment`` the training part (never the held-out one)
    gains augmented, teacher-labelled examples. The teacher labels on whatever device it is on (the training
    device)."""
    tensors, target, label = collect(student, ctx.calibration_data, limit=cfg.num_samples,
                                     teacher=lambda feeds: run_module(teacher, feeds)[0])
    full = TensorDataset(*tensors, target, *([label] if label is not None else []))
    if len(full) < 2:
        raise DataError(f"distillation needs at least 2 examples (some to train on, some held out); got {len(full)}")
    train_idx, held_idx = split_indices(len(full), cfg.heldout, None if label is None else label.numpy(), cfg.seed)
    train_set = Subset(full, train_idx)
    if cfg.augment and label is None:
        names = student.io.input_names
        feeds = {name: t[train_idx].numpy() for name, t in zip(names, tensors)}
        extra = augment_tokens(feeds, cfg.augment, cfg.seed)
        outs = [run_module(teacher, {k: v[i:i + 256] for k, v in extra.items()})[0]
                for i in range(0, len(extra["input_ids"]), 256)]
        aug = TensorDataset(*[torch.from_numpy(extra[k]) for k in names], torch.from_numpy(np.concatenate(outs)))
        train_set = ConcatDataset([train_set, aug])
    return train_set, Subset(full, held_idx), label is not None


def _freeze(student: nn.Module, patterns: tuple[str, ...]) -> list[nn.Parameter]:
    """Stop gradients to the parameters of modules matching ``patterns``; returns them (to thaw after training).
    Freezing the word embeddings keeps the tokens that the distillation data never shows where the teacher had them:
    a student trained on a few thousand sentences otherwise drifts on the seen ones only."""
    import fnmatch

    if not patterns:
        return []
    frozen = {id(p): p for name, mod in student.named_modules()
              if name and any(fnmatch.fnmatch(name, g) for g in patterns) for p in mod.parameters()}
    if not frozen:
        raise ConfigError(f"freeze {list(patterns)} matches no module of the student; module names look like "
                          f"{[n for n, _ in student.named_modules() if n][:5]}")
    for p in frozen.values():
        p.requires_grad_(False)
    return list(frozen.values())


def heldout_score(model: nn.Module, heldout: Subset, mode: DistillMode, has_labels: bool) -> float:
    """Accuracy (%) on labelled held-out data, else mean cosine of the outputs to the teacher's."""
    loader = torch.utils.data.DataLoader(heldout, batch_size=128)
    scores, n = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in loader:
            batch = [t.to(device) for t in batch]
            inputs = batch[:-2] if has_labels else batch[:-1]
            out = model(*inputs)
            out = out[0] if isinstance(out, (tuple, list)) else out
            if has_labels:
                scores += float((out.argmax(-1) == batch[-1]).float().sum()) * 100.0
            else:
                target = batch[-1]
                scores += float(nn.functional.cosine_similarity(out.flatten(1), target.flatten(1), dim=1).sum())
            n += len(out)
    return scores / max(n, 1)


@implements(DistillConfig, fmt=Format.TORCH)
def _distill_torch(art: Artifact, cfg: DistillConfig, ctx: RunContext) -> Artifact:
    teacher = ctx.baseline if ctx.baseline is not None else art
    if teacher.format is not Format.TORCH:
        raise UnsupportedModelError(f"the teacher must be a PyTorch model; {teacher.name} is {teacher.format.value}")
    mode = _mode(cfg, teacher)
    device = resolve_device(cfg.device)
    teacher_module = teacher.handle  # the user's model: never hooked, never moved
    if cfg.hidden_layers or device.type != "cpu":  # a copy on the training device, to label and to be hooked
        teacher_module = copy.deepcopy(teacher.handle).to(device)
        set_training(teacher_module, False)
    train_set, heldout, has_labels = training_data(art, teacher_module, ctx, cfg)
    student = copy.deepcopy(art.handle)
    set_training(student, False)
    metric = "accuracy" if has_labels else "cosine_to_teacher"
    before = heldout_score(student, heldout, mode, has_labels)
    hidden = None
    if cfg.hidden_layers:
        hidden = HiddenStates(teacher_module, student, cfg.hidden_layers, mask_index(art))
    frozen = _freeze(student, cfg.freeze)
    result = train(student, distill_loss(mode, cfg.temperature, cfg.alpha, has_labels, hidden, cfg.hidden_weight),
                   train_set,
                   TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
                               weight_decay=cfg.weight_decay, patience=cfg.patience, device=cfg.device,
                               checkpoint_dir=cfg.checkpoint_dir),
                   params=[p for p in student.parameters() if p.requires_grad] if frozen else None,
                   eval_fn=lambda m: heldout_score(m, heldout, mode, has_labels), progress=ctx.progress,
                   task="distill")
    if hidden is not None:
        hidden.close()
    for p in frozen:
        p.requires_grad_(True)
    student.to("cpu")
    curve = [{"epoch": 0, metric: before}] + [{"epoch": r["epoch"], metric: r["metric"], "loss": r["loss"]}
                                              for r in result.history]
    child = art.derive(Step("distill", cfg.to_dict()), handle=student, path=None,
                       meta={"distill": {"mode": mode.value, "metric": metric, "curve": curve,
                                         "best_epoch": (result.best_epoch or 0) + 1,
                                         "teacher": teacher.name, "heldout_examples": len(heldout)}})
    check = judge_student(student, heldout, has_labels=has_labels, embedding=mode is not DistillMode.LOGITS,
                          tol=Tolerance(cfg.max_drop, cfg.min_cosine),
                          extra={f"{metric}_before": before, f"{metric}_after": float(result.best_metric),
                                 "epochs": float(result.epochs_run)})
    check = dataclasses.replace(check, detail=f"held-out {metric}: {before:.4f} -> {result.best_metric:.4f} over "
                                f"{result.epochs_run} epochs ({mode.value}); {check.detail}")
    child = child.with_check(check)
    if not check.passed:
        raise VerificationError(f"distill_heldout failed on {art.name}: the student ends far below its teacher "
                                f"{teacher.name}: {check.detail}", report=child)
    return child
