"""The embedded default dataset "shapes": seeded, offline, procedurally generated.

Each image is ``size`` x ``size`` RGB (32 x 32 by default) and shows one flat-coloured shape
from ten classes (``CLASS_NAMES``) drawn opaquely over a textured two-colour background
(low-frequency noise, stripes or checks), with mild pixel noise on top. Only the geometry of
the shape tells its class: its colour, area, position and a small rotation (+-10 degrees) are
random with the same distribution for every class, triangles may point up or down, half discs
face any of four ways and bars lie flat or stand up. The background palette is random and the
shape colour is chosen far (in RGB) from it, so the object is always visible. Every image
comes with its ground-truth object mask (1 exactly where the shape is drawn); the shape covers
about 10%-30% of the image and never touches the border.

The dataset lets every part of fastpart run without downloads, and gives tests a known answer
to compare against: the GradCAM heat maps of a net trained on it should light up the mask.

Generation is vectorised numpy (shapes are implicit functions on a coordinate grid) and fully
determined by ``(n, seed, size)`` through a PCG64 generator: the same arguments give
byte-identical arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Callable, NamedTuple, TypeVar

import numpy as np

from fastpart.data.arrays import ReadResult, SplitData
from fastpart.errors import DatasetError

CLASS_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "plus",
    "ring",
    "diamond",
    "star",
    "cross",
    "half_disc",
    "bar",
)

_Inside = Callable[[np.ndarray, np.ndarray], np.ndarray]

_ARM_HALF_WIDTH = 0.32
_RING_INNER = 0.55
_DIAMOND_HALF_WIDTH = 0.68
_STAR_INNER = 0.45
_STAR_POINTS = 5
_HALF_DISC_OFFSET = 4.0 / (3.0 * np.pi)
_BAR_HALF_WIDTH = 0.26

_AREA_RANGE = (0.12, 0.27)
_JITTER_DEG = 10.0
_MARGIN_PX = 1.0
_PALETTE_SPREAD = (40.0, 100.0)
_MIN_OBJECT_DISTANCE = 120.0
_COLOUR_CANDIDATES = 32
_PIXEL_NOISE_STD = 4.0
_NOISE_GRID = 5
_CHUNK_PIXELS = 1 << 20
_MIN_SIZE = 16


def _circle(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return x * x + y * y <= 1.0


def _square(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(x), np.abs(y)) <= 1.0


def _triangle(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Equilateral, circumradius 1, apex up (y grows downwards), centroid at the origin."""
    half_root3 = np.sqrt(3.0) / 2.0
    return (y <= 0.5) & (half_root3 * x - 0.5 * y <= 0.5) & (-half_root3 * x - 0.5 * y <= 0.5)


def _plus(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    ax, ay = np.abs(x), np.abs(y)
    return ((ax <= 1.0) & (ay <= _ARM_HALF_WIDTH)) | ((ax <= _ARM_HALF_WIDTH) & (ay <= 1.0))


def _ring(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r2 = x * x + y * y
    return (r2 <= 1.0) & (r2 >= _RING_INNER**2)


def _diamond(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A rhombus taller than wide, so it never passes for a turned square."""
    return np.abs(x) / _DIAMOND_HALF_WIDTH + np.abs(y) <= 1.0


def _star(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Five-pointed star, tips at radius 1, notches at radius ``_STAR_INNER``, one tip up."""
    sector = 2.0 * np.pi / _STAR_POINTS
    half = sector / 2.0
    r = np.hypot(x, y)
    from_tip = np.abs(np.mod(np.arctan2(x, -y) + half, sector) - half)
    px, py = r * np.cos(from_tip), r * np.sin(from_tip)
    dx, dy = _STAR_INNER * np.cos(half) - 1.0, _STAR_INNER * np.sin(half)
    return dx * py - dy * (px - 1.0) >= 0.0


def _cross(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    c = np.sqrt(0.5)
    return _plus(c * (x + y), c * (y - x))


def _half_disc(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Lower half of a unit disc, shifted so its centroid is at the origin."""
    yc = y + _HALF_DISC_OFFSET
    return (x * x + yc * yc <= 1.0) & (yc >= 0.0)


def _bar(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (np.abs(x) <= 1.0) & (np.abs(y) <= _BAR_HALF_WIDTH)


class _Shape(NamedTuple):
    inside: _Inside
    turns_deg: tuple[float, ...]


_SHAPES: tuple[_Shape, ...] = (
    _Shape(_circle, (0.0,)),
    _Shape(_square, (0.0,)),
    _Shape(_triangle, (0.0, 180.0)),
    _Shape(_plus, (0.0,)),
    _Shape(_ring, (0.0,)),
    _Shape(_diamond, (0.0,)),
    _Shape(_star, (0.0,)),
    _Shape(_cross, (0.0,)),
    _Shape(_half_disc, (0.0, 90.0, 180.0, 270.0)),
    _Shape(_bar, (0.0, 90.0)),
)


@dataclass(frozen=True)
class _Poses:
    scale: np.ndarray
    angle: np.ndarray
    centre: np.ndarray


@dataclass(frozen=True)
class _Palette:
    low: np.ndarray
    high: np.ndarray
    shape: np.ndarray


@dataclass(frozen=True)
class _Texture:
    kind: np.ndarray
    orientation: np.ndarray
    period: np.ndarray
    phase: np.ndarray
    grid: np.ndarray


_Params = TypeVar("_Params", _Poses, _Palette, _Texture)


def _rows(params: _Params, rows: slice | np.ndarray) -> _Params:
    return type(params)(**{f.name: getattr(params, f.name)[rows] for f in fields(params)})


@lru_cache(maxsize=None)
def _unit_geometry() -> tuple[np.ndarray, np.ndarray]:
    """Per class: area, and radius of the bounding circle about the origin, at scale 1."""
    step = 1.0 / 250.0
    t = np.arange(-1.6 + step / 2, 1.6, step)
    x, y = np.meshgrid(t, t)
    areas, radii = [], []
    for shape in _SHAPES:
        inside = shape.inside(x, y)
        areas.append(inside.sum() * step * step)
        radii.append(np.hypot(x[inside], y[inside]).max() + step)
    return np.array(areas), np.array(radii)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DatasetError(f"shapes: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise DatasetError(f"shapes: {name} must be >= {minimum}, got {value}")
    return int(value)


def _balanced_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.permutation(np.arange(n, dtype=np.int64) % len(CLASS_NAMES))


def _base_turns(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """A per-image turn (degrees) drawn from the orientations its class allows."""
    width = max(len(shape.turns_deg) for shape in _SHAPES)
    table = np.array([shape.turns_deg + (0.0,) * (width - len(shape.turns_deg)) for shape in _SHAPES])
    counts = np.array([len(shape.turns_deg) for shape in _SHAPES])
    pick = np.floor(rng.random(len(labels)) * counts[labels]).astype(np.int64)
    return table[labels, pick]


def _draw_poses(rng: np.random.Generator, labels: np.ndarray, size: int) -> _Poses:
    """Scale, rotation and centre (pixels) per image; each shape stays inside the frame."""
    n = len(labels)
    area, radius = _unit_geometry()
    target = rng.uniform(*_AREA_RANGE, n) * size * size
    scale = np.minimum(np.sqrt(target / area[labels]), (size / 2.0 - _MARGIN_PX) / radius[labels])
    degrees = _base_turns(rng, labels) + rng.uniform(-_JITTER_DEG, _JITTER_DEG, n)
    reach = scale * radius[labels] + _MARGIN_PX
    centre = reach[:, None] + rng.random((n, 2)) * (size - 2.0 * reach)[:, None]
    return _Poses(scale=scale, angle=np.deg2rad(degrees), centre=centre)


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance from ``points`` (..., 3) to the segments ``a``-``b`` (broadcast)."""
    ab = b - a
    t = np.clip(((points - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-9), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[..., None] * ab), axis=-1)


def _draw_palette(rng: np.random.Generator, n: int) -> _Palette:
    """Two background colours, and a shape colour far from every mix of the two."""
    low = rng.uniform(0.0, 255.0, (n, 3))
    direction = rng.standard_normal((n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    high = np.clip(low + direction * rng.uniform(*_PALETTE_SPREAD, n)[:, None], 0.0, 255.0)
    candidates = rng.uniform(0.0, 255.0, (n, _COLOUR_CANDIDATES, 3))
    distance = _segment_distance(candidates, low[:, None], high[:, None])
    far = distance >= _MIN_OBJECT_DISTANCE
    pick = np.where(far.any(axis=1), far.argmax(axis=1), distance.argmax(axis=1))
    return _Palette(low=low, high=high, shape=candidates[np.arange(n), pick])


def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    """x (1, 1, size) and y (1, size, 1): pixel centres, y growing downwards."""
    c = np.arange(size, dtype=np.float64) + 0.5
    return c[None, None, :], c[None, :, None]


def _bilinear_matrix(size: int, grid: int) -> np.ndarray:
    """(size, grid) weights that stretch ``grid`` samples over ``size`` pixels."""
    t = (np.arange(size) + 0.5) / size * (grid - 1)
    lo = np.minimum(np.floor(t).astype(np.int64), grid - 2)
    frac = t - lo
    weights = np.zeros((size, grid))
    weights[np.arange(size), lo] = 1.0 - frac
    weights[np.arange(size), lo + 1] = frac
    return weights


def _stripes(texture: _Texture, size: int) -> np.ndarray:
    along, _ = _rotated_pixels(texture.orientation, size)
    period, phase = texture.period[:, None, None], texture.phase[:, None, None]
    return _sharpen(np.sin(2.0 * np.pi * along / period + phase))


def _checks(texture: _Texture, size: int) -> np.ndarray:
    along, across = _rotated_pixels(texture.orientation, size)
    period, phase = texture.period[:, None, None], texture.phase[:, None, None]
    return _sharpen(np.sin(np.pi * along / period + phase) * np.sin(np.pi * across / period + phase))


def _smooth_noise(texture: _Texture, size: int) -> np.ndarray:
    interp = _bilinear_matrix(size, _NOISE_GRID)
    return interp @ texture.grid @ interp.T


def _rotated_pixels(orientation: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = _pixel_centres(size)
    cos, sin = np.cos(orientation)[:, None, None], np.sin(orientation)[:, None, None]
    return x * cos + y * sin, y * cos - x * sin


def _sharpen(wave: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(3.0 * wave)


_TEXTURES: tuple[Callable[[_Texture, int], np.ndarray], ...] = (_smooth_noise, _stripes, _checks)


def _draw_texture(rng: np.random.Generator, n: int, size: int) -> _Texture:
    return _Texture(
        kind=rng.integers(0, len(_TEXTURES), n),
        orientation=rng.uniform(0.0, np.pi, n),
        period=rng.uniform(4.0, 10.0, n) * size / 32.0,
        phase=rng.uniform(0.0, 2.0 * np.pi, n),
        grid=rng.random((n, _NOISE_GRID, _NOISE_GRID)),
    )


def _blend_weights(texture: _Texture, size: int) -> np.ndarray:
    """Per-pixel mix (m, size, size) in [0, 1] between the two background colours."""
    weights = np.empty((len(texture.kind), size, size))
    for kind, render in enumerate(_TEXTURES):
        rows = texture.kind == kind
        weights[rows] = render(_rows(texture, rows), size)
    return weights


def _object_masks(labels: np.ndarray, poses: _Poses, size: int) -> np.ndarray:
    """Boolean (m, size, size): where each image's shape lies, from its implicit function."""
    x, y = _pixel_centres(size)
    dx = x - poses.centre[:, 0, None, None]
    dy = y - poses.centre[:, 1, None, None]
    cos = (np.cos(poses.angle) / poses.scale)[:, None, None]
    sin = (np.sin(poses.angle) / poses.scale)[:, None, None]
    u, v = cos * dx + sin * dy, cos * dy - sin * dx
    masks = np.zeros((len(labels), size, size), dtype=bool)
    for label in np.unique(labels):
        rows = labels == label
        masks[rows] = _SHAPES[label].inside(u[rows], v[rows])
    return masks


def _compose(
    rng: np.random.Generator, masks: np.ndarray, weights: np.ndarray, palette: _Palette
) -> np.ndarray:
    low, high, shape = (
        colour[:, None, None, :].astype(np.float32) for colour in (palette.low, palette.high, palette.shape)
    )
    background = low + weights[..., None].astype(np.float32) * (high - low)
    picture = np.where(masks[..., None], shape, background)
    picture += np.float32(_PIXEL_NOISE_STD) * rng.standard_normal(picture.shape, dtype=np.float32)
    return np.clip(np.rint(picture), 0, 255).astype(np.uint8)


def generate_split(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """images uint8 (n, size, size, 3), labels int64 (n,), masks uint8 (n, size, size): 1 on the object.

    Labels are balanced (each class gets ``n // 10`` or ``n // 10 + 1`` images) in seeded random
    order. The same ``(n, seed, size)`` always gives byte-identical arrays; a smaller ``n`` with
    the same seed is not a prefix of a larger one.
    """
    n = _check_int("n", n, 1)
    seed = _check_int("seed", seed, 0)
    size = _check_int("size", size, _MIN_SIZE)
    rng = np.random.Generator(np.random.PCG64(seed))
    labels = _balanced_labels(rng, n)
    poses = _draw_poses(rng, labels, size)
    palette = _draw_palette(rng, n)
    texture = _draw_texture(rng, n, size)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=np.uint8)
    chunk = max(1, _CHUNK_PIXELS // (size * size))
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        drawn = _object_masks(labels[rows], _rows(poses, rows), size)
        weights = _blend_weights(_rows(texture, rows), size)
        images[rows] = _compose(rng, drawn, weights, _rows(palette, rows))
        masks[rows] = drawn
    return images, labels, masks


def _split_seeds(seed: int) -> tuple[int, int]:
    train, test = np.random.SeedSequence(seed).spawn(2)
    return int(train.generate_state(1, np.uint64)[0]), int(test.generate_state(1, np.uint64)[0])


def generate(n_train: int = 5000, n_test: int = 1000, seed: int = 0, size: int = 32) -> ReadResult:
    """Train and test splits from independent seeds derived from ``seed``; they share no image.

    Returns ``ReadResult(splits={"train": SplitData(images, labels, extras={"mask": masks}),
    "test": ...}, class_names=list(CLASS_NAMES))``.
    """
    n_train = _check_int("n_train", n_train, 1)
    n_test = _check_int("n_test", n_test, 1)
    seed = _check_int("seed", seed, 0)
    size = _check_int("size", size, _MIN_SIZE)
    splits = {}
    for name, n, split_seed in zip(("train", "test"), (n_train, n_test), _split_seeds(seed)):
        images, labels, masks = generate_split(n, split_seed, size)
        splits[name] = SplitData(images, labels, extras={"mask": masks})
    return ReadResult(splits=splits, class_names=list(CLASS_NAMES))
