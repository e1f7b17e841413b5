"""A small vision transformer (plain torch) for normal vs anomaly, and its training loop.

Patches of 8x8 pixels become tokens (a convolutional stem of stride 8, see ``conv_stem``), a class token and learned
position embeddings are added, and pre-norm encoder blocks (multi-head self-attention through
``scaled_dot_product_attention``, then an MLP) mix them; the class token's final state, beside the element-wise
maximum over the patch tokens (a defect is local: one patch may carry it), is classified. Input normalisation is part of the model (per-channel mean and
std of the training set, kept as buffers), so every exported or quantized form takes the raw [0, 1] pixels.

Example:
    >>> import torch
    >>> net = TinyViT(image_size=32, dim=32, depth=1, heads=2)
    >>> net(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 2])
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class TinyViT(nn.Module):
    """ViT for ``image_size`` RGB crops in [0, 1]; logits for (normal, anomaly)."""

    def __init__(self, *, image_size: int = 64, patch: int = 8, dim: int = 128, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 2.0, dropout: float = 0.0, classes: int = 2, stem: str = "conv", pool: str = "cls+max") -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of the patch size {patch}")
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, 3, 1, 1), 0.25))
        self.patch = conv_stem(dim, patch) if stem == "conv" else nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (image_size // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pool = pool
        self.head = nn.Linear(dim * (2 if pool == "cls+max" else 1), classes)
        self.apply(_init)

    def set_normalisation(self, x: np.ndarray) -> None:
        """Per-channel mean and std of training images ``[N, 3, H, W]``."""
        self.mean.copy_(torch.as_tensor(x.mean(axis=(0, 2, 3)), dtype=torch.float32).view(1, 3, 1, 1))
        self.std.copy_(torch.as_tensor(x.std(axis=(0, 2, 3)) + 1e-6, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch((x - self.mean) / self.std).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        if self.pool == "cls+max":  # the class token beside the strongest patch features: a defect is local
            return self.head(torch.cat([x[:, 0], x[:, 1:].amax(dim=1)], dim=1))
        return self.head(x[:, 0])


def conv_stem(dim: int, patch: int) -> nn.Sequential:
    """The patch embedding as early convolutions: stride-2 3x3 convolutions down to one token per ``patch`` x
    ``patch`` pixels, then a 1x1 projection to ``dim`` (Xiao et al., 2021, "Early convolutions help transformers see
    better"): the same tokens as a single strided convolution, learnt from far fewer examples."""
    layers: list[nn.Module] = []
    ch, c_in = dim // 4, 3
    for _ in range(int(math.log2(patch))):
        layers += [nn.Conv2d(c_in, ch, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU()]
        c_in, ch = ch, min(ch * 2, dim)
    return nn.Sequential(*layers, nn.Conv2d(c_in, dim, 1))


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    seed: int = 0


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal/vertical flips and 90-degree turns, per example (defects have no orientation)."""
    n = x.shape[0]
    flips = torch.rand(n, 2, generator=gen, device="cpu") < 0.5
    x = torch.where(flips[:, 0].view(n, 1, 1, 1).to(x.device), x.flip(3), x)
    x = torch.where(flips[:, 1].view(n, 1, 1, 1).to(x.device), x.flip(2), x)
    if torch.rand(1, generator=gen).item() < 0.5:  # the whole batch: square crops keep their shape
        x = x.transpose(2, 3)
    return x


def train(net: TinyViT, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, *, device: str = "cpu",
          log: Callable[[str], None] = print, show_bar: bool = True,
          on_epoch: Callable[[int], str] | None = None,
          resample: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None) -> list[float]:
    """Train ``net`` in place (AdamW, linear warm-up then cosine decay); returns the mean loss per epoch.
    ``on_epoch(epoch)`` may return a note (e.g. a held-out figure, for monitoring only) added to the epoch's line;
    ``resample(epoch)``, when given, supplies fresh training arrays for every epoch after the first."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net.to(device).train()
    xs, ys = torch.as_tensor(x), torch.as_tensor(y)
    steps_per_epoch = math.ceil(len(xs) / cfg.batch_size)
    total, warm = cfg.epochs * steps_per_epoch, max(1, int(cfg.warmup_epochs * steps_per_epoch))
    decay = [p for n, p in net.named_parameters() if p.ndim >= 2 and n not in ("pos", "cls")]
    no_decay = [p for n, p in net.named_parameters() if not (p.ndim >= 2 and n not in ("pos", "cls"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    bar = _progress(cfg.epochs, show_bar)
    losses = []
    for epoch in range(cfg.epochs):
        if epoch and resample is not None:
            x_new, y_new = resample(epoch)
            xs, ys = torch.as_tensor(x_new), torch.as_tensor(y_new)
        t0, order = time.perf_counter(), torch.randperm(len(xs), generator=gen)
        running, seen, correct = 0.0, 0, 0
        for i in range(0, len(xs), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            xb = augment(xs[idx].to(device, non_blocking=True), gen)
            yb = ys[idx].to(device, non_blocking=True)
            logits = net(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            running += loss.item() * len(idx)
            seen += len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        losses.append(running / seen)
        text = (f"epoch {epoch + 1}/{cfg.epochs}: loss {losses[-1]:.4f}, train accuracy {100 * correct / seen:.1f}%"
                f" ({seen / (time.perf_counter() - t0):.0f} crops/s)")
        if on_epoch is not None:
            net.eval()
            text += on_epoch(epoch)
            net.train()
        if bar is not None:
            bar.set_postfix_str(text.split(": ", 1)[1])
            bar.update(1)
        else:
            log("  " + text)
    if bar is not None:
        bar.close()
    net.eval()
    return losses


def _progress(total: int, show: bool):  # noqa: ANN202 - a tqdm bar, or None without tqdm
    if not show:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="  training", unit="epoch", leave=True)


@torch.no_grad()
def calibrate_threshold(net: TinyViT, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Choose the decision threshold on the anomaly probability that is most accurate on validation data ``x, y``
    (ties: the higher threshold, the fewer false alarms), and build it into the model: the anomaly logit's bias moves
    by ``-log(t / (1 - t))``, so that argmax over the logits applies it in every exported and quantized form."""
    logits = predict(net, x)
    p = torch.softmax(torch.as_tensor(logits), dim=1)[:, 1].numpy()
    grid = np.round(np.arange(0.10, 0.951, 0.05), 2)
    accs = [float(((p > t).astype(np.int64) == y).mean()) for t in grid]
    best = max(range(len(grid)), key=lambda i: (accs[i], grid[i]))
    t = float(grid[best])
    net.head.bias.data[1] -= math.log(t / (1.0 - t))
    return {"threshold": t, "val_accuracy_at_0.5": 100.0 * accs[int(np.argmin(np.abs(grid - 0.5)))],
            "val_accuracy": 100.0 * accs[best]}


@torch.no_grad()
def predict(net: nn.Module, x: np.ndarray, *, device: str = "cpu", batch_size: int = 256) -> np.ndarray:
    """Logits of ``net`` for ``x`` ``[N, 3, H, W]``, as a numpy array."""
    net.eval()
    out = [net(torch.as_tensor(x[i:i + batch_size]).to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()
