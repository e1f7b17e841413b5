"""The shared trainer used by fine-tuning, distillation and quantization-aware training."""

from slimforge.train.trainer import TrainConfig, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
