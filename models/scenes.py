"""Shelf-camera scenes: one Fashion-MNIST item composited into a 160x160 RGB picture.

Why: the demo and the benchmarks need an input large enough that sending the picture costs real
bytes, with a labelled test set we can build offline. Pure numpy (no TensorFlow) so the board and
the profiler can make the same pictures as the trainer.

Scene `i` of a split depends only on (split, i, seed): every random number it uses comes from its
own generator, seeded with that triple, so it is identical whatever batch it is generated in.
The heavy pixel work is batched (bilinear resampling as matrix products), the per-scene part is a
single draw of a few hundred uniforms.

Splits: 'train' uses Fashion-MNIST train items 0..54999, 'val' items 55000..59999 and 'test'
the Fashion-MNIST test items, so test scenes never show an item seen in training.
Scene i shows item (i mod items-in-split); indices past that size reuse items with new scenes.
"""
from __future__ import annotations

import argparse
import csv
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from models import fashion_mnist

SIZE = 160
DEFAULT_SEED = 0
TEST_SUBSET = 1000  # the fixed subset: test scenes 0..999
SPLITS = {"train": ("train", 0, 55000), "val": ("train", 55000, 5000), "test": ("test", 0, 10000)}
_SPLIT_ID = {"train": 0, "val": 1, "test": 2}
_CHUNK = 128  # scenes per batched pass: keeps the float32 working set around 40 MB


@dataclass(frozen=True)
class SceneConfig:
    """Difficulty knobs. Defaults keep the task learnable by a small CNN trained for an hour."""

    min_size: float = 56.0      # side of the item's 28x28 frame on the canvas, in pixels
    max_size: float = 120.0
    aspect_jitter: float = 0.10  # width = size * U(1 - j, 1 + j)
    min_contrast: float = 70.0  # luminance gap between item and background (0..255)
    blotch_amp: float = 28.0    # low-frequency colour variation of the background
    stripe_amp: float = 12.0    # fabric/shelf-like stripes
    grain_amp: float = 8.0      # fine noise texture
    gradient_amp: float = 25.0  # lighting ramp across the picture


DEFAULT_CONFIG = SceneConfig()
_GRID = 5         # background blotch grid (GRID x GRID per channel)
_N_UNIFORMS = 24 + 3 * _GRID * _GRID


def _rng(split: str, index: int, seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _SPLIT_ID[split], int(index)])


def _check(split: str, indices: np.ndarray) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown scene split {split!r}; expected one of {sorted(SPLITS)}")
    if indices.size and indices.min() < 0:
        raise ValueError(f"scene indices must be >= 0, got {int(indices.min())}")


def item_index(split: str, index: int) -> int:
    """Index into the Fashion-MNIST split ('train' or 'test') of the item shown in scene `index`."""
    _check(split, np.asarray([index]))
    _, start, count = SPLITS[split]
    return start + int(index) % count


@functools.lru_cache(maxsize=1)
def _grain_bank() -> np.ndarray:
    """A fixed 256x256 noise tile (unit std); scenes take crops of it instead of drawing noise."""
    noise = np.random.default_rng(20240601).standard_normal((256, 256)).astype(np.float32)
    smooth = (noise + np.roll(noise, 1, 0) + np.roll(noise, 1, 1) + np.roll(noise, (1, 1), (0, 1))) / 2.0
    return smooth.astype(np.float32)


@functools.lru_cache(maxsize=1)
def _blotch_upsampler() -> np.ndarray:
    """(SIZE, GRID) bilinear weights whose rows sum to 1, so a constant grid stays constant."""
    return _hat(np.linspace(0.0, _GRID - 1.0, SIZE, dtype=np.float32)[None], _GRID)[0]


def _hat(u: np.ndarray, n: int) -> np.ndarray:
    """Bilinear weights: (..., SIZE) source coordinates -> (..., SIZE, n) interpolation matrix."""
    return np.maximum(0.0, 1.0 - np.abs(u[..., None] - np.arange(n, dtype=np.float32)))


def _draw(split: str, indices: np.ndarray, seed: int) -> np.ndarray:
    out = np.empty((len(indices), _N_UNIFORMS), dtype=np.float64)
    for k, i in enumerate(indices):
        out[k] = _rng(split, int(i), seed).random(_N_UNIFORMS)
    return out


def _colours(u: np.ndarray, cfg: SceneConfig) -> tuple[np.ndarray, np.ndarray]:
    """Background and item colours (N, 3) with at least `min_contrast` luminance between them."""
    bg = 35.0 + 185.0 * u[:, 0:3]
    lum = bg @ np.array([0.299, 0.587, 0.114])
    gap = cfg.min_contrast + (150.0 - cfg.min_contrast) * u[:, 3]
    up_ok, down_ok = lum + gap <= 245.0, lum - gap >= 10.0
    go_up = np.where(up_ok & down_ok, u[:, 4] < 0.5, up_ok)
    target = np.where(go_up, np.minimum(lum + gap, 245.0), np.maximum(lum - gap, 10.0))
    chroma = (u[:, 5:8] - 0.5) * 140.0
    chroma -= (chroma @ np.array([0.299, 0.587, 0.114]))[:, None]  # keep the luminance at target
    item = np.clip(target[:, None] + chroma, 0.0, 255.0)
    return bg.astype(np.float32), item.astype(np.float32)


def _render(split: str, idx: np.ndarray, seed: int, cfg: SceneConfig) -> tuple[np.ndarray, np.ndarray]:
    src, start, count = SPLITS[split]
    data = fashion_mnist.cached_split(src)
    items = start + idx % count
    labels = data.labels[items].astype(np.int64)
    img = data.images[items].astype(np.float32) / 255.0                      # (N, 28, 28)
    u = _draw(split, idx, seed)
    n = len(idx)

    # Geometry: where the 28x28 frame lands, as per-scene bilinear resampling matrices.
    size = cfg.min_size + (cfg.max_size - cfg.min_size) * u[:, 8]
    width = np.minimum(size * (1.0 - cfg.aspect_jitter + 2 * cfg.aspect_jitter * u[:, 9]), SIZE)
    y0 = (SIZE - size) * u[:, 10]
    x0 = (SIZE - width) * u[:, 11]
    pix = np.arange(SIZE, dtype=np.float64) + 0.5
    uy = (pix[None] - y0[:, None]) * (28.0 / size[:, None]) - 0.5
    ux = (pix[None] - x0[:, None]) * (28.0 / width[:, None]) - 0.5
    ux = np.where((u[:, 12] < 0.5)[:, None], ux, 27.0 - ux)                  # horizontal flip
    ay = _hat(uy.astype(np.float32), 28)                                       # (N, SIZE, 28)
    ax_t = np.ascontiguousarray(_hat(ux.astype(np.float32), 28).transpose(0, 2, 1))  # BLAS wants it
    inten = np.matmul(np.matmul(ay, img), ax_t)                                 # (N, SIZE, SIZE)

    # Background: base colour + low-frequency blotches + stripes + lighting ramp + grain.
    # The base colour (and +0.5 for rounding) rides in the blotch grid: upsampling preserves it.
    bg_col, item_col = _colours(u, cfg)
    grid = ((u[:, 24:].reshape(n, 3, _GRID * _GRID) - 0.5) * 2.0 * cfg.blotch_amp).astype(np.float32)
    grid = (grid + bg_col[:, :, None] + 0.5).reshape(n * 3, _GRID, _GRID)
    up = _blotch_upsampler()
    blotch = np.matmul(np.matmul(up, grid), up.T).reshape(n, 3, SIZE, SIZE)
    angle = np.pi * u[:, 13]
    freq = 2 * np.pi / (5.0 + 25.0 * u[:, 14])
    phase = 2 * np.pi * u[:, 15]
    amp = cfg.stripe_amp * (u[:, 16] > 0.4) * u[:, 17]                          # 40% plain shelves
    p = np.arange(SIZE, dtype=np.float64)
    ax_ = (freq * np.cos(angle))[:, None] * p + phase[:, None]                  # (N, SIZE) along x
    by_ = (freq * np.sin(angle))[:, None] * p                                    # (N, SIZE) along y
    gx = cfg.gradient_amp * (2 * u[:, 18] - 1) / SIZE
    gy = cfg.gradient_amp * (2 * u[:, 19] - 1) / SIZE
    row = (amp[:, None] * np.cos(by_)).astype(np.float32)[:, :, None]
    col = np.sin(ax_).astype(np.float32)[:, None, :]
    row2 = (amp[:, None] * np.sin(by_)).astype(np.float32)[:, :, None]
    col2 = np.cos(ax_).astype(np.float32)[:, None, :]
    pattern = row * col + row2 * col2                                            # amp*sin(ax+by+phase)
    pattern += (gy[:, None] * (p - SIZE / 2)).astype(np.float32)[:, :, None]
    pattern += (gx[:, None] * (p - SIZE / 2)).astype(np.float32)[:, None, :]
    bank = _grain_bank()
    oy = (u[:, 20] * (bank.shape[0] - SIZE)).astype(int)
    ox = (u[:, 21] * (bank.shape[1] - SIZE)).astype(int)
    grain_amp = (cfg.grain_amp * u[:, 22]).astype(np.float32)
    for k in range(n):
        pattern[k] += grain_amp[k] * bank[oy[k]:oy[k] + SIZE, ox[k]:ox[k] + SIZE]
    out = blotch
    out += pattern[:, None]                                                      # (N, 3, H, W)

    # Item: opaque where the garment is. Its own dark details move it at most halfway towards
    # the base colour, so they stay visible and the silhouette keeps >= min_contrast/2.
    alpha = np.minimum(inten * 6.0, 1.0)   # dark garments (intensity ~40/255) are still opaque
    shade = alpha * (0.5 + 0.5 * inten)             # weight of the item colour ...
    toward_bg = alpha - shade                        # ... and of the base colour, inside the item
    out *= (1.0 - alpha)[:, None]
    out += item_col[:, :, None, None] * shade[:, None]
    out += bg_col[:, :, None, None] * toward_bg[:, None]
    np.clip(out, 0.0, 255.0, out=out)
    planes = out.astype(np.uint8)
    # Channel-last last: stacking uint8 planes is ~8x cheaper than a strided transpose copy.
    return np.stack([planes[:, 0], planes[:, 1], planes[:, 2]], axis=-1), labels


def make_scenes(split: str, indices: Sequence[int] | np.ndarray, seed: int = DEFAULT_SEED,
                config: SceneConfig = DEFAULT_CONFIG) -> tuple[np.ndarray, np.ndarray]:
    """Scenes `indices` of `split`: ((N, 160, 160, 3) uint8 RGB, (N,) int64 class ids)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    _check(split, idx)
    images = np.empty((len(idx), SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.empty(len(idx), dtype=np.int64)
    for s in range(0, len(idx), _CHUNK):
        images[s:s + _CHUNK], labels[s:s + _CHUNK] = _render(split, idx[s:s + _CHUNK], seed, config)
    return images, labels


def make_scene(split: str, index: int, seed: int = DEFAULT_SEED,
               config: SceneConfig = DEFAULT_CONFIG) -> tuple[np.ndarray, int]:
    """One scene: ((160, 160, 3) uint8 RGB, class id)."""
    images, labels = make_scenes(split, [index], seed, config)
    return images[0], int(labels[0])


def write_jpegs(split: str, start: int, limit: int, out: Path, seed: int = DEFAULT_SEED,
                quality: int = 95, batch: int = 64) -> Path:
    """Write scenes start..start+limit-1 as JPEGs plus `labels.csv` (file,label); returns the CSV."""
    from PIL import Image
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, int]] = []
    with tqdm(total=limit, unit="scene", desc=f"{split} scenes") as bar:
        for s in range(start, start + limit, batch):
            idx = np.arange(s, min(s + batch, start + limit))
            images, labels = make_scenes(split, idx, seed)
            for i, im, lab in zip(idx, images, labels):
                name = f"{split}_{i:06d}.jpg"
                Image.fromarray(im).save(out / name, quality=quality)
                rows.append((name, int(lab)))
            bar.update(len(idx))
    csv_path = out / "labels.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        w.writerows(rows)
    return csv_path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.scenes", description=__doc__.split("\n")[0])
    ap.add_argument("--split", choices=sorted(SPLITS), default="test")
    ap.add_argument("--limit", type=int, default=TEST_SUBSET, help="number of scenes to write")
    ap.add_argument("--start", type=int, default=0, help="index of the first scene")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality")
    ap.add_argument("--out", type=Path, required=True, help="directory for the JPEGs and labels.csv")
    args = ap.parse_args(argv)
    if args.limit < 0 or args.start < 0:
        ap.error("--limit and --start must be >= 0")
    try:
        path = write_jpegs(args.split, args.start, args.limit, args.out, args.seed, args.quality)
    except fashion_mnist.DatasetMissingError as e:
        ap.exit(2, f"error: {e}\n")
    print(f"wrote {args.limit} scenes and {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
