"""A synthetic data set with ground truth: ten shapes on textured backgrounds, with their masks.

Each 32x32 RGB image holds one shape of a random colour, size, position and rotation on a
background of smooth colour noise plus pixel noise; some images also hold a distractor (a line
segment that belongs to no class). Every image comes with the mask of its labelled shape, so a
saliency map can be scored against the truth. Deterministic from a seed; numpy only.

    batch = generate(1000, seed=3)     # batch.images (N, 32, 32, 3) uint8, labels (N,), masks (N, 32, 32) bool
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

CLASSES = ("circle", "square", "triangle", "cross", "ring", "star", "crescent", "ell", "tee", "bar")
# Shapes the classifier never sees in training: out-of-distribution probes.
UNSEEN = ("heart",)
SIZE = 32
MEAN = (0.5, 0.5, 0.5)  # the normalisation the model is trained with (its manifest repeats it)
STD = (0.25, 0.25, 0.25)
_SUPERSAMPLE = 4
_Inside = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r, theta = np.hypot(u, v), np.arctan2(v, u)
    return r < 0.35 + 0.6 * np.abs(np.cos(2.5 * theta)) ** 3


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    x, y = u * 1.15, v * 1.15 + 0.1
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 < 0


# (u, v): the shape's own coordinates, radius about 1, v pointing up.
SHAPES: dict[str, _Inside] = {
    "circle": lambda u, v: u**2 + v**2 < 0.85**2,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) < 0.7,
    "triangle": lambda u, v: (v > -0.475) & (v < 0.95 - np.sqrt(3) * np.abs(u)),
    "cross": lambda u, v: ((np.abs(u) < 0.28) & (np.abs(v) < 0.9)) | ((np.abs(v) < 0.28) & (np.abs(u) < 0.9)),
    "ring": lambda u, v: (u**2 + v**2 < 0.9**2) & (u**2 + v**2 > 0.5**2),
    "star": _star,
    "crescent": lambda u, v: (u**2 + v**2 < 0.9**2) & ((u - 0.45) ** 2 + v**2 > 0.7**2),
    "ell": lambda u, v: (
        ((u > -0.8) & (u < -0.3) & (np.abs(v) < 0.9)) | ((u > -0.8) & (u < 0.7) & (v > -0.9) & (v < -0.4))
    ),
    "tee": lambda u, v: ((v > 0.4) & (v < 0.9) & (np.abs(u) < 0.85)) | ((np.abs(u) < 0.25) & (np.abs(v) < 0.9)),
    "bar": lambda u, v: (np.abs(u) < 0.9) & (np.abs(v) < 0.3),
    "heart": _heart,
}


@dataclass(frozen=True)
class ShapesBatch:
    images: np.ndarray  # (N, 32, 32, 3) uint8
    labels: np.ndarray  # (N,) int64: index into CLASSES (or into the ``shapes`` asked for)
    masks: np.ndarray  # (N, 32, 32) bool: the labelled shape's pixels

    def normalised(self) -> np.ndarray:
        """(N, 3, 32, 32) float32, normalised with MEAN and STD."""
        pixels = self.images.astype(np.float32) / 255.0
        return ((pixels - np.float32(MEAN)) / np.float32(STD)).transpose(0, 3, 1, 2).copy()


def generate(
    count: int, seed: int, *, shapes: Sequence[str] = CLASSES, distractor_rate: float = 0.3, chunk: int = 512
) -> ShapesBatch:
    """``count`` images with labels uniformly over ``shapes``; the same seed gives the same batch."""
    unknown = [name for name in shapes if name not in SHAPES]
    if unknown:
        raise ValueError(f"shapes must be among {tuple(SHAPES)}, got {unknown}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(shapes), count)
    radius = rng.uniform(0.2, 0.36, count) * SIZE
    centre = radius[:, None] + rng.uniform(0, 1, (count, 2)) * (SIZE - 2 * radius[:, None])
    angle = rng.uniform(0, 2 * np.pi, count)
    background = _backgrounds(rng, count)
    colour = _contrasting_colours(rng, background)
    distractor = _distractors(rng, count, distractor_rate)
    images = np.empty((count, SIZE, SIZE, 3), np.uint8)
    masks = np.empty((count, SIZE, SIZE), bool)
    for start in range(0, count, chunk):
        part = slice(start, start + chunk)
        alpha = _coverage(labels[part], radius[part], centre[part], angle[part], shapes)
        canvas = background[part] * (1 - distractor[part][..., :1]) + distractor[part][..., 1:]
        canvas = canvas * (1 - alpha[..., None]) + colour[part][:, None, None, :] * alpha[..., None]
        canvas += rng.normal(0, 0.03, canvas.shape)
        images[part] = np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8)
        masks[part] = alpha >= 0.5
    return ShapesBatch(images, labels.astype(np.int64), masks)


def _coverage(
    labels: np.ndarray, radius: np.ndarray, centre: np.ndarray, angle: np.ndarray, shapes: Sequence[str]
) -> np.ndarray:
    """(n, 32, 32) fraction of each pixel covered by the shape (4x4 supersampling)."""
    n, s = len(labels), SIZE * _SUPERSAMPLE
    grid = (np.arange(s) + 0.5) / _SUPERSAMPLE
    x = (grid[None, None, :] - centre[:, 0, None, None]) / radius[:, None, None]
    y = (centre[:, 1, None, None] - grid[None, :, None]) / radius[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u, v = cos * x + sin * y, -sin * x + cos * y
    inside = np.zeros((n, s, s), bool)
    for index, name in enumerate(shapes):
        rows = labels == index
        if rows.any():
            inside[rows] = SHAPES[name](u[rows], v[rows])
    return inside.reshape(n, SIZE, _SUPERSAMPLE, SIZE, _SUPERSAMPLE).mean(axis=(2, 4))


def _backgrounds(rng: np.random.Generator, count: int) -> np.ndarray:
    """(n, 32, 32, 3) in [0, 1]: two random colours mixed by smooth noise, plus fine texture."""
    low = rng.uniform(0, 1, (count, 4, 4))
    cells = np.linspace(0, 3, SIZE)
    i0 = np.floor(cells).astype(int).clip(0, 2)
    t = cells - i0
    rows = low[:, i0, :] * (1 - t)[None, :, None] + low[:, i0 + 1, :] * t[None, :, None]
    smooth = rows[:, :, i0] * (1 - t)[None, None, :] + rows[:, :, i0 + 1] * t[None, None, :]
    first, second = rng.uniform(0, 1, (2, count, 1, 1, 3))
    texture = rng.normal(0, 0.06, (count, SIZE, SIZE, 1))
    return np.clip(first * smooth[..., None] + second * (1 - smooth[..., None]) + texture, 0, 1)


def _contrasting_colours(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A colour per image whose luminance differs from the background's mean by >= 0.3."""
    weights = np.array([0.299, 0.587, 0.114])
    ground = background.mean(axis=(1, 2)) @ weights
    colour = rng.uniform(0, 1, (len(background), 3))
    for _ in range(8):
        dull = np.abs(colour @ weights - ground) < 0.3
        if not dull.any():
            break
        colour[dull] = rng.uniform(0, 1, (int(dull.sum()), 3))
    dull = np.abs(colour @ weights - ground) < 0.3
    colour[dull] = np.where(ground[dull, None] > 0.5, 0.05, 0.95)
    return colour


def _distractors(rng: np.random.Generator, count: int, rate: float) -> np.ndarray:
    """(n, 32, 32, 4): alpha and premultiplied colour of a line segment, for a ``rate`` of images."""
    present = rng.uniform(0, 1, count) < rate
    ends = rng.uniform(2, SIZE - 2, (count, 2, 2))
    colour = rng.uniform(0, 1, (count, 3))
    grid = np.arange(SIZE) + 0.5
    px, py = np.meshgrid(grid, grid)
    a, b = ends[:, 0, None, None, :], ends[:, 1, None, None, :]
    ab = b - a
    t = np.clip(
        ((px[None] - a[..., 0]) * ab[..., 0] + (py[None] - a[..., 1]) * ab[..., 1]) / (ab**2).sum(-1).clip(1e-6), 0, 1
    )
    distance = np.hypot(px[None] - (a[..., 0] + t * ab[..., 0]), py[None] - (a[..., 1] + t * ab[..., 1]))
    alpha = np.clip(1.0 - distance, 0, 1) * present[:, None, None]
    return np.concatenate([alpha[..., None], alpha[..., None] * colour[:, None, None, :]], axis=-1)
