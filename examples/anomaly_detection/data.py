"""Data for the anomaly-detection lab: an MVTec-AD category folder, or a synthetic set cut from real photos.

The synthetic set: real photos that ship in packages (scikit-learn's ``china.jpg`` and ``flower.jpg``; scikit-image's
coffee, cat, astronaut and rocket photos and its brick, grass and gravel textures) are divided into grids of blocks; a seeded draw assigns whole blocks to the held-out split, and every crop lies inside one block, so no
held-out pixel is ever seen in training. Half of the crops get a drawn defect: a scratch (thin straight line), a
spot (soft blob), a crack (dark random-walk polyline) or contamination (semi-transparent colour smudge).

Arrays are float32 ``[N, 3, S, S]`` in [0, 1]; labels are 0 (normal) and 1 (anomaly).

Example:
    >>> ds = synthetic_dataset(n_train=8, n_test=4, size=32, seed=0)
    >>> ds.x_train.shape, ds.x_test.shape, sorted(set(ds.y_train.tolist()))
    ((8, 3, 32, 32), (4, 3, 32, 32), [0, 1])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DEFECTS = ("scratch", "spot", "crack", "contamination")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Region:
    """A rectangle of one photo: rows ``[top, top + height)``, columns ``[left, left + width)``."""

    photo: int
    top: int
    left: int
    height: int
    width: int

    def overlaps(self, other: Region) -> bool:
        return (self.photo == other.photo and self.top < other.top + other.height
                and other.top < self.top + self.height and self.left < other.left + other.width
                and other.left < self.left + self.width)


@dataclass
class AnomalyDataset:
    """Train and held-out arrays, with where each crop came from (synthetic) or its file (MVTec)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    train_regions: list[Region] = field(default_factory=list)
    test_regions: list[Region] = field(default_factory=list)
    test_kinds: list[str] = field(default_factory=list)  # "good" or the defect's name, per held-out example
    train_blocks: list[Region] = field(default_factory=list)  # synthetic: the blocks each split is cut from
    test_blocks: list[Region] = field(default_factory=list)
    val_blocks: list[Region] = field(default_factory=list)
    resample: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None  # fresh training crops for epoch e >= 1
    x_val: np.ndarray | None = None  # plain examples the model does not train on (threshold, the optimizer)
    y_val: np.ndarray | None = None

    def summary(self) -> str:
        return (f"{self.source}: train {len(self.y_train)} ({int(self.y_train.sum())} anomalous), held-out "
                f"{len(self.y_test)} ({int(self.y_test.sum())} anomalous), crops {self.x_train.shape[-1]} px")


SKIMAGE_PHOTOS = ("coffee", "chelsea", "astronaut", "rocket", "brick", "grass", "gravel")  # bundled, no download


def sample_photos() -> list[np.ndarray]:
    """Real photos that ship in packages, as uint8 ``[H, W, 3]`` arrays: scikit-learn's two, then scikit-image's
    bundled colour photos and its three surface textures (brick, grass, gravel; grey, stacked to RGB) when
    scikit-image is installed (slimforge's ``vision`` extra)."""
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(img, dtype=np.uint8) for img in load_sample_images().images]
    try:
        from skimage import data as skdata
    except ImportError:
        return photos
    for name in SKIMAGE_PHOTOS:
        img = np.asarray(getattr(skdata, name)(), dtype=np.uint8)
        photos.append(np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3])
    return photos


def split_blocks(shapes: list[tuple[int, int]], *, rows: int | None, cols: int | None, test_share: float,
                 rng: np.random.Generator) -> tuple[list[Region], list[Region]]:
    """Cut each photo into ``rows x cols`` blocks (None: blocks of about 71 x 80 pixels, a 6 x 8 grid on a 427 x 640
    photo) and hold out one block in every ``round(1 / test_share)`` along
    a diagonal lattice (a seeded offset per photo), so that the held-out blocks are spread over each photo rather
    than clustered in one part of it. Blocks never overlap: crops taken inside them share no pixel across the
    split.

    Example:
        >>> train, test = split_blocks([(400, 600)], rows=4, cols=6, test_share=0.25, rng=np.random.default_rng(0))
        >>> len(train), len(test), any(a.overlaps(b) for a in train for b in test)
        (18, 6, False)
    """
    period = max(2, round(1.0 / test_share))
    train: list[Region] = []
    test: list[Region] = []
    for p, (h, w) in enumerate(shapes):
        n_rows, n_cols = rows or max(2, round(h / 71)), cols or max(2, round(w / 80))
        bh, bw = h // n_rows, w // n_cols
        offset = int(rng.integers(period))
        for r in range(n_rows):
            for c in range(n_cols):
                held_out = (c + 2 * r + offset) % period == 0
                (test if held_out else train).append(Region(p, r * bh, c * bw, bh, bw))
    return train, test


def random_crop(photos: list[np.ndarray], blocks: list[Region], size: int, rng: np.random.Generator, *,
                jitter: bool = False) -> tuple[np.ndarray, Region]:
    """A ``size`` x ``size`` crop lying wholly inside one of ``blocks``, as float32 HWC in [0, 1].

    With ``jitter`` (training only) the crop gets new colours for the same structures (channel order, inversion
    in 30% of crops, gamma, saturation, brightness): normal content that the two photos do not hold, so that the
    model learns what a defect looks like rather than which textures it has seen. (Crops are never resized: resampling softens a photo, and a model trained on softened normals learns that sharp
    detail means "defect", since drawn defects are sharp.)"""
    b = blocks[int(rng.integers(len(blocks)))]
    top = b.top + int(rng.integers(b.height - size + 1))
    left = b.left + int(rng.integers(b.width - size + 1))
    crop = photos[b.photo][top:top + size, left:left + size].astype(np.float32) / 255.0
    if jitter:
        crop = crop[..., rng.permutation(3)]
        if rng.random() < 0.3:
            crop = 1.0 - crop
        crop = crop ** rng.uniform(0.7, 1.4)  # gamma
        grey = crop.mean(axis=2, keepdims=True)
        crop = grey + (crop - grey) * rng.uniform(0.6, 1.4)  # saturation
        crop = np.clip(crop * rng.uniform(0.8, 1.2), 0.0, 1.0)  # brightness
    return crop.astype(np.float32), Region(b.photo, top, left, size, size)


def _blend(img: np.ndarray, mask: Image.Image, colour: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(mask, dtype=np.float32)[..., None] / 255.0 * alpha
    return img * (1.0 - a) + colour[None, None, :] * a, a[..., 0]


def _mask(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    m = Image.new("L", (size, size), 0)
    return m, ImageDraw.Draw(m)


RUST = np.array([0.78, 0.32, 0.08], np.float32)  # spots and cracks on surfaces too dark for a dark mark


def _contrasting(img: np.ndarray, mask: Image.Image, *candidates: np.ndarray) -> np.ndarray:
    """The first of ``candidates`` that stands out from the mean colour under ``mask`` (RGB distance >= 0.5), else
    the one that stands out most."""
    w = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    under = (img * w).sum(axis=(0, 1)) / max(float(w.sum()), 1e-6)
    dist = [float(np.linalg.norm(c - under)) for c in candidates]
    return next((c for c, d in zip(candidates, dist) if d >= 0.5), candidates[int(np.argmax(dist))])


def _grey(value: float) -> np.ndarray:
    return np.full(3, value, np.float32)


def _draw_once(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = img.shape[0]
    k = s / 64.0  # sizes are given for 64-pixel crops
    m, d = _mask(s)
    if kind == "scratch":  # a thin straight line, bright or dark, 35-70% of the crop long
        x0, y0 = rng.uniform(0.15 * s, 0.85 * s, size=2)
        ang, length = rng.uniform(0, np.pi), rng.uniform(0.35, 0.7) * s
        dx, dy = np.cos(ang) * length / 2, np.sin(ang) * length / 2
        d.line([(x0 - dx, y0 - dy), (x0 + dx, y0 + dy)], fill=255, width=max(1, round(2 * k)))
        bright = rng.random() < 0.6
        colour = _contrasting(img, m, *((_grey(0.95), _grey(0.05)) if bright else (_grey(0.05), _grey(0.95))))
        return _blend(img, m, colour, rng.uniform(0.75, 0.95))
    if kind == "spot":  # a soft round blob: dark, or rust-coloured on a dark surface
        cx, cy = rng.uniform(0.2 * s, 0.8 * s, size=2)
        r = rng.uniform(4, 8) * k
        d.ellipse([cx - r, cy - r * rng.uniform(0.7, 1.3), cx + r, cy + r], fill=255)
        m = m.filter(ImageFilter.GaussianBlur(1.0 * k))
        colour = _contrasting(img, m, _grey(0.08), RUST) + rng.uniform(-0.07, 0.07, 3)
        return _blend(img, m, colour.astype(np.float32), rng.uniform(0.85, 1.0))
    if kind == "crack":  # a dark random-walk polyline with a slowly turning heading (rust on a dark surface)
        pts = [tuple(rng.uniform(0.25 * s, 0.75 * s, size=2))]
        heading = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(8, 14))):
            heading += rng.normal(0, 0.6)
            step = rng.uniform(3, 6) * k
            x, y = pts[-1]
            pts.append((float(np.clip(x + np.cos(heading) * step, 0, s - 1)),
                        float(np.clip(y + np.sin(heading) * step, 0, s - 1))))
        d.line(pts, fill=255, width=max(1, round(2 * k)), joint="curve")
        return _blend(img, m, _contrasting(img, m, _grey(0.03), RUST), rng.uniform(0.8, 0.95))
    if kind == "contamination":  # a semi-transparent, saturated colour smudge
        cx, cy = rng.uniform(0.25 * s, 0.75 * s, size=2)
        rx, ry = rng.uniform(8, 15, size=2) * k
        d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        m = m.filter(ImageFilter.GaussianBlur(2.5 * k))
        colour = np.zeros(3, np.float32)
        colour[int(rng.integers(3))] = 1.0
        colour[int(rng.integers(3))] += rng.uniform(0.0, 0.6)
        return _blend(img, m, np.clip(colour, 0, 1), rng.uniform(0.5, 0.7))
    raise ValueError(f"unknown defect {kind!r}; defects are {', '.join(DEFECTS)}")


def draw_defect(img: np.ndarray, kind: str, rng: np.random.Generator, *, min_visibility: float = 0.4,
                tries: int = 20) -> np.ndarray | None:
    """``img`` (float32 HWC in [0, 1]) with one drawn defect of ``kind``, or None when no visible one could be
    drawn there; the input is left unchanged.

    A defect must be visible: over the pixels it covers (weighted by its opacity), the change of colour (RGB
    distance) averages at least ``min_visibility`` times its peak opacity. A draw that blends into its background is
    drawn again, up to ``tries`` times; a crop where none shows (a dark crack on a dark surface, an orange smudge on
    an orange petal) gets no defect, so that no anomaly label sits on an image that looks normal.
    """
    for _ in range(tries):
        out, alpha = _draw_once(img, kind, rng)
        out = np.clip(out, 0.0, 1.0)
        change = float((np.linalg.norm(out - img, axis=2) * alpha).sum() / max(float(alpha.sum()), 1e-6))
        if change >= min_visibility * float(alpha.max()):
            return out.astype(np.float32)
    return None


def _make_split(photos: list[np.ndarray], blocks: list[Region], n: int, size: int, rng: np.random.Generator, *,
                train: bool, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[Region], list[str]]:
    """``n`` crops, every other one with a defect (the four kinds in turn; the training loop shuffles). For
    training, crops are jittered and come in pairs (a crop, then the same crop with a defect), so that content alone
    never tells the label; held-out crops are plain and independent. A crop that cannot show the defect visibly is
    replaced by another. ``out``: an array to fill (fresh memory costs more than drawing, for big sets)."""
    xs = out if out is not None else np.empty((n, 3, size, size), np.float32)
    ys = np.zeros(n, np.int64)
    regions: list[Region] = []
    kinds: list[str] = []
    crop = region = None
    for i in range(n):
        if i % 2 == 0:
            crop, region = random_crop(photos, blocks, size, rng, jitter=train)
            xs[i], kind = crop.transpose(2, 0, 1), "good"
        else:
            kind = DEFECTS[(i // 2) % len(DEFECTS)]
            for attempt in range(100):
                if attempt or not train:  # training pairs start from the normal crop just taken
                    crop, region = random_crop(photos, blocks, size, rng, jitter=train)
                img = draw_defect(crop, kind, rng)
                if img is not None:
                    break
            else:
                raise ValueError(f"no crop of these blocks shows a visible {kind}")
            if train and attempt:  # the pair's normal member becomes the crop that took the defect
                xs[i - 1], regions[i - 1] = crop.transpose(2, 0, 1), region
            xs[i], ys[i] = img.transpose(2, 0, 1), 1
        regions.append(region)
        kinds.append(kind)
    return xs, ys, regions, kinds


def synthetic_dataset(*, n_train: int = 6000, n_test: int = 800, n_val: int = 400, size: int = 64, seed: int = 0,
                      rows: int | None = None, cols: int | None = None, test_share: float = 0.25) -> AnomalyDataset:
    """Crops of the scikit-learn photos with drawn defects; the held-out split comes from its own blocks.
    ``resample(epoch)`` cuts a fresh training set (new crops, new defects) from the training blocks for that epoch;
    the validation examples are plain crops of validation blocks, which neither split touches (they choose the
    decision threshold and calibrate the optimizer; they are not the held-out figure)."""
    split_seed, train_seed, test_seed, val_seed = np.random.SeedSequence(seed).spawn(4)
    photos = sample_photos()
    train_blocks, test_blocks = split_blocks([p.shape[:2] for p in photos], rows=rows, cols=cols,
                                             test_share=test_share, rng=np.random.default_rng(split_seed))
    if min(min(b.height, b.width) for b in train_blocks + test_blocks) < size:
        raise ValueError(f"crops of {size} px do not fit in the blocks of every photo; use smaller crops")
    # validation blocks: one in six of the others (spread over rows and photos), touched by no training crop either;
    # the decision threshold is chosen on them, the optimizer judges on them: textures the model has not seen
    cal_blocks = train_blocks[3::6]
    train_blocks = [b for i, b in enumerate(train_blocks) if i % 6 != 3]

    buffer: list[np.ndarray] = []

    def resample(epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Fresh training crops for ``epoch``, in one array reused from call to call (copy to keep one)."""
        rng = np.random.default_rng(train_seed.spawn(epoch + 1)[epoch])  # a fixed stream per epoch
        if not buffer:
            buffer.append(np.empty((n_train, 3, size, size), np.float32))
        x, y, _, _ = _make_split(photos, train_blocks, n_train, size, rng, train=True, out=buffer[0])
        return x, y

    # one generator per split: the held-out set does not change with the size of the training set
    x_tr, y_tr, r_tr, _ = _make_split(photos, train_blocks, n_train, size, np.random.default_rng(train_seed),
                                      train=True)
    x_te, y_te, r_te, k_te = _make_split(photos, test_blocks, n_test, size, np.random.default_rng(test_seed),
                                         train=False)
    x_va, y_va, _, _ = _make_split(photos, cal_blocks, n_val, size, np.random.default_rng(val_seed), train=False)
    return AnomalyDataset(x_tr, y_tr, x_te, y_te, source=f"synthetic ({len(photos)} real photos from scikit-learn and scikit-image, drawn defects)",
                          train_regions=r_tr, test_regions=r_te, test_kinds=k_te, train_blocks=train_blocks,
                          test_blocks=test_blocks, val_blocks=cal_blocks, resample=resample, x_val=x_va, y_val=y_va)


def _read_image(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB").resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def mvtec_dataset(root: str | Path, *, size: int = 64, seed: int = 0, train_share: float = 0.5) -> AnomalyDataset:
    """An MVTec-AD category folder (``train/good/*.png``, ``test/good``, ``test/<defect>/``) as a supervised set.

    MVTec's train split has normal images only, so the test images are divided: a seeded, stratified
    ``train_share`` of each test sub-folder joins the training set, the rest is held out (no image is in both);
    ``train/good`` is all training data. Images are resized to ``size`` x ``size``; ground-truth masks are not used.
    """
    root = Path(root)
    good_train = root / "train" / "good"
    test_dir = root / "test"
    if not good_train.is_dir() or not (test_dir / "good").is_dir():
        raise FileNotFoundError(f"{root}: not an MVTec-AD category folder (needs train/good/ and test/good/)")
    defect_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir() and p.name != "good")
    if not defect_dirs:
        raise FileNotFoundError(f"{test_dir}: holds no defect folder beside good/")
    rng = np.random.default_rng(seed)
    train_files: list[tuple[Path, int, str]] = [(p, 0, "good") for p in _images_in(good_train)]
    test_files: list[tuple[Path, int, str]] = []
    for folder in [test_dir / "good", *defect_dirs]:
        files = _images_in(folder)
        label = 0 if folder.name == "good" else 1
        order = rng.permutation(len(files))
        n_train = int(round(train_share * len(files))) if len(files) > 1 else 0
        n_train = min(n_train, len(files) - 1)  # every sub-folder keeps at least one held-out image
        train_files += [(files[j], label, folder.name) for j in order[:n_train]]
        test_files += [(files[j], label, folder.name) for j in order[n_train:]]
    if not train_files or not test_files:
        raise FileNotFoundError(f"{root}: no images found")

    def stack(items: list[tuple[Path, int, str]]) -> tuple[np.ndarray, np.ndarray]:
        return (np.stack([_read_image(p, size) for p, _, _ in items]).astype(np.float32),
                np.array([lab for _, lab, _ in items], np.int64))

    x_tr, y_tr = stack(train_files)
    x_te, y_te = stack(test_files)
    order = rng.permutation(len(y_tr))  # validation images (threshold, optimizer) are kept out of training
    val, fit = order[:min(256, len(order) // 5)], order[min(256, len(order) // 5):]
    return AnomalyDataset(x_tr[fit], y_tr[fit], x_te, y_te, source=f"MVTec-AD category {root.name}",
                          test_kinds=[k for _, _, k in test_files], x_val=x_tr[val], y_val=y_tr[val])
