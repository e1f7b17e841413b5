"""Quantization-aware training: fake-quantize (PT2E, X86 Inductor config), train with the shared trainer, then convert
to a real INT8 model (fast under ``torch.compile``).

The loss is cross-entropy on labels when the data has them; otherwise the FP32 model's outputs are the targets
(MSE), so QAT also works without labels.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset

from slimforge.core.artifact import Artifact, Check, Format, Step
from slimforge.core.config import Config, coerce_fields
from slimforge.core.context import RunContext
from slimforge.core.registry import implements
from slimforge.errors import ConfigError, TechniqueFailed
from slimforge.evaluation.fidelity import fidelity_check
from slimforge.torch_utils import run_module, set_training
from slimforge.techniques.quantize.calibration import Calibration
from slimforge.techniques.quantize.coverage import require_quantized
from slimforge.techniques.quantize.torch_pt2e import export_for_quantization, x86_config
from slimforge.train import TrainConfig, train
from slimforge.train.data import supervised_loss, tensor_dataset


@dataclass(frozen=True, kw_only=True, slots=True)
class QatConfig(Config):
    """Quantization-aware training settings.

    Example:
        >>> QatConfig(epochs=2, lr=1e-4).kind
        'qat'
    """

    kind = "qat"
    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 32
    num_samples: int = 2048
    checkpoint_dir: str | None = None
    seed: int = 0
    min_cosine: float = 0.98
    version: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.epochs < 1 or self.batch_size < 1 or self.num_samples < 1:
            raise ConfigError("epochs, batch_size and num_samples must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


def _training_set(art: Artifact, ctx: RunContext, limit: int) -> tuple[TensorDataset, bool]:
    """Labels when the data has them, else the FP32 model's outputs as targets."""
    return tensor_dataset(art, ctx.calibration_data, limit=limit,
                          teacher=lambda feeds: run_module(art.handle, feeds)[0])


@implements(QatConfig, fmt=Format.TORCH)
def _qat_torch(art: Artifact, cfg: QatConfig, ctx: RunContext) -> Artifact:
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    data, has_labels = _training_set(art, ctx, cfg.num_samples)
    module = copy.deepcopy(art.handle)
    set_training(module, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            prepared = prepare_qat_pt2e(export_for_quantization(module, art),
                                        x86_config(Calibration.MINMAX, is_qat=True))
        except Exception as exc:
            raise TechniqueFailed(f"QAT preparation failed on {art.name} (the model must be torch.export-able): "
                                  f"{str(exc).splitlines()[0][:300]}") from exc

        def set_mode(model: torch.nn.Module, training: bool) -> None:
            (move_exported_model_to_train if training else move_exported_model_to_eval)(model)

        result = train(prepared, supervised_loss(has_labels), data,
                       TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
                                   checkpoint_dir=cfg.checkpoint_dir, device="cpu", grad_clip=1.0),
                       progress=ctx.progress, task="quantization-aware training", set_mode=set_mode)
        move_exported_model_to_eval(prepared)
        converted = convert_pt2e(prepared)
    child = art.derive(Step("qat", cfg.to_dict()), handle=converted, path=None,
                       meta={"precision": "int8-qat", "fast_on": "torch_compile",
                             "qat_loss": "cross_entropy" if has_labels else "mse_to_fp32",
                             "qat_history": result.history})
    child = require_quantized(child, method="quantization-aware training (PT2E, X86 Inductor)",
                              applies_to="Conv, Linear and the ops around them", source=art)
    losses = [row["loss"] for row in result.history]
    child = child.with_check(Check("qat_training", True, {"epochs": float(result.epochs_run),
                                                          "first_loss": losses[0], "last_loss": losses[-1]},
                                   f"{result.epochs_run} epochs, loss {losses[0]:.4g} -> {losses[-1]:.4g}"))
    return child.with_check(fidelity_check(art, child, min_cosine=cfg.min_cosine, name="quant_fidelity",
                                           data=ctx.calibration_data))
