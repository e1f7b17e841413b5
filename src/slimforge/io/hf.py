"""Hugging Face transformers and sentence-transformers folders as plain positional-input modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimforge.errors import ModelLoadError, require


class SentenceEmbedder(nn.Module):
    """A sentence-transformers pipeline (transformer, pooling, normalisation, dense layers) with positional inputs.

    Calls the loaded ``SentenceTransformer`` modules themselves, so embeddings match ``SentenceTransformer.encode``.
    """

    def __init__(self, st: nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.st = st
        self.input_names = list(input_names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        features = dict(zip(self.input_names, tensors))
        return self.st(features)["sentence_embedding"]


class HFModel(nn.Module):
    """A transformers model with positional inputs returning its main output (logits, else last hidden state)."""

    def __init__(self, model: nn.Module, input_names: list[str], output_key: str) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.output_key = output_key

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.input_names, tensors)))
        return out[self.output_key]


def is_sentence_transformers(folder: Path) -> bool:
    return (folder / "modules.json").is_file()


def is_transformers(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def load_sentence_transformers(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Return the wrapped embedder and its meta (task, tokenizer preprocessing)."""
    st_mod = require("sentence_transformers", extra="hf", package="sentence-transformers")
    try:
        st = st_mod.SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    except Exception as exc:  # library errors vary widely; name the folder and the cause
        raise ModelLoadError(f"{folder}: not a loadable sentence-transformers folder ({exc})") from exc
    tokenizer = st.tokenizer
    names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
    st.eval()
    meta = {
        "name": folder.name if folder.name != "model" else folder.parent.name,
        "task": "embedding",
        "vocab_size": int(tokenizer.vocab_size),
        "max_positions": _max_positions(folder),
        "preprocess": {"kind": "text", "tokenizer": str(folder), "max_length": int(st.max_seq_length or 256),
                       "input_names": names},
    }
    return SentenceEmbedder(st, names), meta


def load_transformers(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load a transformers folder with the class its config names (base model when none is named)."""
    tf = require("transformers", extra="hf")
    try:
        config = tf.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        arch = (getattr(config, "architectures", None) or [None])[0]
        cls = getattr(tf, arch, None) if arch else None
        model = (cls or tf.AutoModel).from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"{folder}: not a loadable transformers folder ({exc})") from exc
    model.eval()
    meta: dict[str, Any] = {"name": folder.name, "task": "generic", "max_positions": _max_positions(folder)}
    labels = getattr(config, "id2label", None)
    if arch and "Classification" in arch:
        meta["task"] = "classification"
        meta["labels"] = [labels[i] for i in sorted(labels)] if labels else None
    pre_cfg = folder / "preprocessor_config.json"
    if pre_cfg.is_file():
        meta["preprocess"] = image_preprocess_from(json.loads(pre_cfg.read_text()))
        names = ["pixel_values"]
    else:
        tok = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        names = [n for n in tok.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
        meta["vocab_size"] = int(tok.vocab_size)
        meta["preprocess"] = {"kind": "text", "tokenizer": str(folder),
                              "max_length": int(min(tok.model_max_length, meta["max_positions"] or 512)),
                              "input_names": names}
    key = "logits" if arch and any(w in arch for w in ("For", "LMHead")) else "last_hidden_state"
    return HFModel(model, names, key), meta


def image_preprocess_from(cfg: dict[str, Any]) -> dict[str, Any]:
    """Resize / crop / normalise settings from an image processor config (no torchvision needed)."""
    size = cfg.get("size", 224)
    if isinstance(size, dict):
        size = size.get("shortest_edge") or size.get("height") or 224
    crop = cfg.get("crop_size", size)
    if isinstance(crop, dict):
        crop = crop.get("height") or size
    return {
        "kind": "image",
        "resize": int(size),
        "crop": int(crop) if cfg.get("do_center_crop", False) else int(size),
        "mean": list(cfg.get("image_mean", [0.5, 0.5, 0.5])) if cfg.get("do_normalize", True) else [0.0] * 3,
        "std": list(cfg.get("image_std", [0.5, 0.5, 0.5])) if cfg.get("do_normalize", True) else [1.0] * 3,
        "rescale": float(cfg.get("rescale_factor", 1 / 255)),
        "input_names": ["pixel_values"],
    }


def _max_positions(folder: Path) -> int | None:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg.get("max_position_embeddings")
