"""The 19 CIFAR-10-C corruptions at 5 severities, generated from clean 32x32 images.

CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019) applies 15 benchmark corruptions and 4 extra ones to
the CIFAR-10 test split at five severities. Where the official archive is not at hand, this module
generates the same kind of data from a converted CIFAR-10 test split, with the published per-severity
parameters for 32x32 images (those of CIFAR-10-C, which differ from the ImageNet-C ones).

``CORRUPTIONS`` maps each name (in ``CIFAR10C_CORRUPTIONS`` order) to its function and its five
parameter tuples; ``corrupt`` applies one corruption at one severity to a uint8 batch;
``generate_cifar10c`` builds the splits in the layout of the official reader (severity 1..5 stacked,
labels tiled, ``extras["severity"]``). The generic image operations they use live in ``imageops``.

Randomness comes from numpy's PCG64, seeded by ``(seed, corruption, severity, chunk of 1000
images)``: the same arguments give byte-identical output, but the random draws are not those of the
published files (which used numpy's global legacy generator), so generated images are statistically
like the official ones, not equal to them. Floats become uint8 by truncation, as the published
script does (``np.uint8``); the ImageMagick motion blur rounded, and so does its stand-in here.

===================  ======================================================================================
corruption           relation to the published definition
===================  ======================================================================================
gaussian_noise       same definition
shot_noise           same definition
impulse_noise        same definition (scikit-image's salt & pepper: each channel value replaced with the
                     given probability, half by 0 and half by 1)
defocus_blur         same definition (17x17 disk anti-aliased by a 3x3 Gaussian, reflect-101 borders)
glass_blur           same definition, including its observed behaviour: the published loop's tuple
                     "swap" of numpy views copies a random up/left neighbour into each visited pixel
                     rather than swapping the two, so one pass is one vectorised gather here
motion_blur          approximated: ImageMagick's MotionBlurImage re-implemented (one-sided Gaussian line
                     kernel of 2*ceil(radius)+1 taps, offsets rounded along the angle, edge pixels
                     repeated, result rounded to 8 bits); no 16-bit quantum arithmetic
zoom_blur            same definition (scipy's order-1 zoom reproduced as separable linear interpolation,
                     with the published np.arange zoom factors, float quirks included)
snow                 approximated only through its motion blur (see motion_blur)
frost                approximated: the published code blends random crops of 5 frost photographs; here
                     5 frost-like textures (ice needles over a plasma haze, blue-white tint) are
                     synthesised per 1000 images from the seed, then cropped and blended the same way
fog                  same definition (diamond-square plasma fractal with the published wibble schedule)
brightness           same definition, deterministic (scikit-image's RGB<->HSV conversions reproduced)
contrast             same definition, deterministic
elastic_transform    same definition (random affine warp as OpenCV's bilinear reflect-101 warpAffine,
                     then scipy's map_coordinates along the smoothed random field)
pixelate             same definition (Pillow BOX down- and up-sampling)
jpeg_compression     same definition (Pillow JPEG at the given quality; bytes depend on libjpeg)
speckle_noise        same definition
gaussian_blur        same definition, deterministic
spatter              same definition: severities 4-5 (mud) directly; for 1-3 (water) OpenCV's steps
                     re-implemented in numpy/scipy (Canny with L1 Sobel gradients, non-maximum
                     suppression and 50/150 hysteresis; 5x5 chamfer distance transform; box blurs;
                     histogram equalisation; emboss filter), equal to OpenCV's output on test drops
saturate             same definition, deterministic
===================  ======================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from fastpart.data import imageops as ops
from fastpart.data.arrays import SplitData
from fastpart.errors import DatasetError, FastpartError

__all__ = ["CORRUPTIONS", "Corruption", "SEVERITIES", "corrupt", "generate_cifar10c"]

SIZE = 32
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
CHUNK = 1000  # images per random stream and per working batch (bounds memory; fixed, so output is too)


@dataclass(frozen=True)
class Corruption:
    """One corruption: ``function(images uint8 (N, 32, 32, 3), rng, *severities[s - 1])``.

    The function returns floats in [0, 255] (truncated to uint8 by ``corrupt``) or uint8.
    """

    name: str
    function: Callable[..., np.ndarray]
    severities: tuple[tuple[Any, ...], ...]  # the published parameters of severities 1..5
    random: bool  # whether the output depends on the seed
    approximated: bool  # whether it departs from the published definition beyond its random draws


# ---------------------------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------------------------


def _gaussian_noise(images: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    x = ops.unit(images)
    return ops.to_255(x + rng.normal(0.0, scale, x.shape))


def _shot_noise(images: np.ndarray, rng: np.random.Generator, photons: float) -> np.ndarray:
    x = ops.unit(images)
    return ops.to_255(rng.poisson(x * photons) / photons)


def _impulse_noise(images: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    x = ops.unit(images)
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    x[hit & salt] = 1.0
    x[hit & ~salt] = 0.0
    return ops.to_255(x)


def _speckle_noise(images: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    x = ops.unit(images)
    return ops.to_255(x + x * rng.normal(0.0, scale, x.shape))


# ---------------------------------------------------------------------------------------------
# Blur
# ---------------------------------------------------------------------------------------------


def _gaussian_blur(images: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return ops.to_255(ops.gaussian(ops.unit(images), sigma))


def _glass_blur(images: np.ndarray, rng: np.random.Generator, sigma: float, delta: int, passes: int) -> np.ndarray:
    x = (ops.gaussian(ops.unit(images), sigma) * 255.0).astype(np.uint8)
    n = len(x)
    inner = np.arange(delta + 1, SIZE)  # the visited rows (and columns): SIZE - delta down to delta + 1
    image = np.arange(n)[:, None, None]
    rows, cols = inner[None, :, None], inner[None, None, :]
    for _ in range(passes):
        # As published (its swap of numpy views copies), each visited pixel takes the value of the pixel
        # (dy, dx) away, dy and dx in [-delta, delta). The published loop visits bottom-right to
        # top-left, so every source is read before it is overwritten: one pass is one gather.
        shift = rng.integers(-delta, delta, size=(2, n, len(inner), len(inner)))
        source = x[image, rows + shift[0], cols + shift[1]]
        x[:, delta + 1 :, delta + 1 :] = source
    return ops.to_255(ops.gaussian(ops.unit(x), sigma))


def _defocus_blur(images: np.ndarray, rng: np.random.Generator, radius: float, alias_sigma: float) -> np.ndarray:
    return ops.to_255(ops.correlate(ops.unit(images), ops.disk_kernel(radius, alias_sigma), mode="mirror"))


def _motion_blur_corruption(images: np.ndarray, rng: np.random.Generator, radius: float, sigma: float) -> np.ndarray:
    angles = rng.uniform(-45.0, 45.0, len(images))
    return np.clip(ops.motion_blur(images, radius, sigma, angles), 0, 255).astype(np.uint8)


def _zoom_blur(images: np.ndarray, rng: np.random.Generator, last_factor: float) -> np.ndarray:
    x = ops.unit(images, np.float32)
    factors = np.arange(1, last_factor, 0.01)  # as published: float steps make the stop inclusive
    total = np.zeros_like(x)
    for factor in factors:
        total += ops.zoom_centre(x, float(factor))
    return ops.to_255((x + total) / (len(factors) + 1))


# ---------------------------------------------------------------------------------------------
# Weather
# ---------------------------------------------------------------------------------------------


def _snow(
    images: np.ndarray,
    rng: np.random.Generator,
    mean: float,
    std: float,
    zoom: float,
    threshold: float,
    blur_radius: float,
    blur_sigma: float,
    keep: float,
) -> np.ndarray:
    x = ops.unit(images, np.float32)
    n = len(x)
    flakes = ops.zoom_centre(rng.normal(mean, std, (n, SIZE, SIZE)), zoom)
    flakes[flakes < threshold] = 0
    flakes = (np.clip(flakes, 0, 1) * 255).astype(np.uint8)  # the published code blurs an 8-bit image
    angles = rng.uniform(-135.0, -45.0, n)
    flakes = ops.motion_blur(flakes[..., None], blur_radius, blur_sigma, angles) / 255.0
    whitened = np.maximum(x, ops.gray(x)[..., None] * 1.5 + 0.5)
    x = keep * x + (1 - keep) * whitened
    return ops.to_255(x + flakes + np.rot90(flakes, k=2, axes=(1, 2)))


_FROST_TEXTURES = 5
_FROST_SIZE = 128
_FROST_TINT = np.array([0.82, 0.91, 1.0])


def _frost(images: np.ndarray, rng: np.random.Generator, keep: float, amount: float) -> np.ndarray:
    n = len(images)
    textures = ops.frost_textures(rng, _FROST_TEXTURES, _FROST_SIZE, _FROST_TINT)
    which = rng.integers(0, _FROST_TEXTURES, n)[:, None, None]
    top = rng.integers(0, _FROST_SIZE - SIZE, n)[:, None, None]
    left = rng.integers(0, _FROST_SIZE - SIZE, n)[:, None, None]
    offsets = np.arange(SIZE)
    crops = textures[which, top + offsets[None, :, None], left + offsets[None, None, :]]
    return np.clip(keep * images.astype(np.float64) + amount * crops, 0, 255)


def _fog(images: np.ndarray, rng: np.random.Generator, thickness: float, decay: float) -> np.ndarray:
    x = ops.unit(images)
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + thickness * ops.plasma(rng, len(x), SIZE, decay)[..., None]
    return ops.to_255(x * peak / (peak + thickness))


# ---------------------------------------------------------------------------------------------
# Digital
# ---------------------------------------------------------------------------------------------


def _brightness(images: np.ndarray, rng: np.random.Generator, shift: float) -> np.ndarray:
    hsv = ops.rgb_to_hsv(ops.unit(images))
    hsv[..., 2] = np.clip(hsv[..., 2] + shift, 0, 1)
    return ops.to_255(ops.hsv_to_rgb(hsv))


def _saturate(images: np.ndarray, rng: np.random.Generator, scale: float, shift: float) -> np.ndarray:
    hsv = ops.rgb_to_hsv(ops.unit(images))
    hsv[..., 1] = np.clip(hsv[..., 1] * scale + shift, 0, 1)
    return ops.to_255(ops.hsv_to_rgb(hsv))


def _contrast(images: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    x = ops.unit(images)
    means = x.mean(axis=(1, 2), keepdims=True)
    return ops.to_255((x - means) * scale + means)


def _pixelate(images: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    return ops.box_resample(images, int(SIZE * scale))


def _jpeg_compression(images: np.ndarray, rng: np.random.Generator, quality: int) -> np.ndarray:
    return ops.jpeg_round_trip(images, quality)


def _elastic_transform(
    images: np.ndarray, rng: np.random.Generator, alpha: float, sigma: float, affine: float
) -> np.ndarray:
    x = ops.unit(images, np.float32)
    n = len(x)
    centre, half = SIZE // 2, SIZE // 3
    src = np.array([[centre + half, centre + half], [centre + half, centre - half], [centre - half, centre - half]],
                   dtype=np.float64)  # three (x, y) points, moved at random by up to `affine` pixels
    dst = src + rng.uniform(-affine, affine, (n, 3, 2)).astype(np.float32)
    system = np.broadcast_to(np.hstack([src, np.ones((3, 1))]), (n, 3, 3))
    forward = np.linalg.solve(system, dst).transpose(0, 2, 1)  # (N, 2, 3): src -> dst
    linear_inverse = np.linalg.inv(forward[:, :, :2])
    inverse = np.concatenate([linear_inverse, -linear_inverse @ forward[:, :, 2:]], axis=2)
    x = ops.warp_affine(x, inverse)

    def field() -> np.ndarray:
        noise = rng.uniform(-1.0, 1.0, (n, SIZE, SIZE))
        return (ops.gaussian(noise, sigma, mode="reflect", truncate=3.0) * alpha).astype(np.float32)

    dx, dy = field(), field()
    rows, cols = np.meshgrid(np.arange(SIZE, dtype=np.float64), np.arange(SIZE, dtype=np.float64), indexing="ij")
    return ops.to_255(ops.bilinear(x, rows + dy, cols + dx, ops.symmetric))  # scipy's order-1 map_coordinates, 'reflect'


# -- spatter (water: OpenCV's steps in numpy/scipy) -------------------------------------------------

_EMBOSS = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float64)
def _spatter(
    images: np.ndarray,
    rng: np.random.Generator,
    mean: float,
    std: float,
    sigma: float,
    threshold: float,
    strength: float,
    mud: int,
) -> np.ndarray:
    x = ops.unit(images, np.float32)
    n = len(x)
    liquid = ops.gaussian(rng.normal(mean, std, (n, SIZE, SIZE)), sigma)
    liquid[liquid < threshold] = 0
    if not mud:  # water: an embossed, equalised distance-to-edge shading of the drops
        drops = (np.clip(liquid, 0, 1) * 255).astype(np.uint8)
        dist = ops.distance_to(ops.canny(drops, 50, 150), 20.0).astype(np.float32)
        dist = ops.box3(dist).astype(np.uint8)
        dist = ops.equalize(dist)
        dist = np.clip(np.rint(ops.correlate(dist.astype(np.float64), _EMBOSS, mode="mirror")), 0, 255)
        dist = np.clip(np.rint(ops.box3(dist)), 0, 255).astype(np.float32)
        m = drops.astype(np.float32) * dist
        peak = m.max(axis=(1, 2), keepdims=True)
        m = np.where(peak > 0, m / np.where(peak > 0, peak, 1), 0) * strength
        water = np.array([175, 238, 238], dtype=np.float32) / 255.0  # pale turquoise
        return ops.to_255(x + m[..., None] * water)
    m = ops.gaussian((liquid > threshold).astype(np.float32), strength)
    m[m < 0.8] = 0
    brown = np.array([63, 42, 20], dtype=np.float32) / 255.0  # mud
    return ops.to_255(x * (1 - m[..., None]) + brown * m[..., None])


# ---------------------------------------------------------------------------------------------
# Registry: the published CIFAR-10-C parameters of severities 1..5
# ---------------------------------------------------------------------------------------------


def _c(name: str, function: Callable[..., np.ndarray], severities: Sequence[Any], random: bool = True,
       approximated: bool = False) -> Corruption:
    params = tuple(p if isinstance(p, tuple) else (p,) for p in severities)
    assert len(params) == len(SEVERITIES)
    return Corruption(name, function, params, random, approximated)


_S = SIZE
CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        _c("gaussian_noise", _gaussian_noise, [0.04, 0.06, 0.08, 0.09, 0.10]),
        _c("shot_noise", _shot_noise, [500, 250, 100, 75, 50]),
        _c("impulse_noise", _impulse_noise, [0.01, 0.02, 0.03, 0.05, 0.07]),
        _c("defocus_blur", _defocus_blur, [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)], random=False),
        _c("glass_blur", _glass_blur, [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)]),
        _c("motion_blur", _motion_blur_corruption, [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)], approximated=True),
        _c("zoom_blur", _zoom_blur, [1.06, 1.11, 1.16, 1.21, 1.26], random=False),
        _c("snow", _snow, [
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ], approximated=True),
        _c("frost", _frost, [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)], approximated=True),
        _c("fog", _fog, [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)]),
        _c("brightness", _brightness, [0.05, 0.1, 0.15, 0.2, 0.3], random=False),
        _c("contrast", _contrast, [0.75, 0.5, 0.4, 0.3, 0.15], random=False),
        _c("elastic_transform", _elastic_transform, [
            (_S * 0, _S * 0, _S * 0.08),
            (_S * 0.05, _S * 0.2, _S * 0.07),
            (_S * 0.08, _S * 0.06, _S * 0.06),
            (_S * 0.1, _S * 0.04, _S * 0.05),
            (_S * 0.1, _S * 0.03, _S * 0.03),
        ]),
        _c("pixelate", _pixelate, [0.95, 0.9, 0.85, 0.75, 0.65], random=False),
        _c("jpeg_compression", _jpeg_compression, [80, 65, 58, 50, 40], random=False),
        _c("speckle_noise", _speckle_noise, [0.06, 0.1, 0.12, 0.16, 0.2]),
        _c("gaussian_blur", _gaussian_blur, [0.4, 0.6, 0.7, 0.8, 1], random=False),
        _c("spatter", _spatter, [
            (0.62, 0.1, 0.7, 0.7, 0.5, 0),
            (0.65, 0.1, 0.8, 0.7, 0.5, 0),
            (0.65, 0.3, 1, 0.69, 0.5, 0),
            (0.65, 0.1, 0.7, 0.69, 0.6, 1),
            (0.65, 0.1, 0.5, 0.68, 0.6, 1),
        ]),
        _c("saturate", _saturate, [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)], random=False),
    )
}
_INDEX = {name: i for i, name in enumerate(CORRUPTIONS)}


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def _check_images(images: Any) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (
        SIZE, SIZE, 3,
    ):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DatasetError(f"corruptions need uint8 images (N, {SIZE}, {SIZE}, 3), got {got}")


def _check_name(name: Any) -> Corruption:
    if name not in CORRUPTIONS:
        raise FastpartError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[name]


def _check_severity(severity: Any) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise FastpartError(f"severity must be an integer from 1 to 5, got {severity!r}")
    return int(severity)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise FastpartError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` (1..5) to uint8 images (N, 32, 32, 3); returns uint8.

    Deterministic: the same images, name, severity and seed give the same bytes. Images are
    processed in chunks of ``CHUNK`` with one random stream per chunk.
    """
    corruption = _check_name(name)
    severity = _check_severity(severity)
    seed = _check_seed(seed)
    _check_images(images)
    params = corruption.severities[severity - 1]
    out = np.empty_like(images)
    for k, start in enumerate(range(0, len(images), CHUNK)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _INDEX[name], severity, k]))
        block = corruption.function(np.ascontiguousarray(images[start : start + CHUNK]), rng, *params)
        if block.dtype != np.uint8:
            block = np.clip(block, 0, 255).astype(np.uint8)  # truncation, as the published np.uint8
        out[start : start + CHUNK] = block
    return out


def generate_cifar10c(
    images: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    names: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
) -> dict[str, SplitData]:
    """CIFAR-10-C splits generated from clean test images, in the official reader's layout.

    For each corruption (``CORRUPTIONS`` order unless ``names`` is given): images of every severity
    stacked in ``severities`` order (each block the whole input, in order), labels tiled once per
    severity, extras ``{"severity": int64}``. A corruption's images do not depend on which other
    corruptions or severities are generated alongside it.
    """
    _check_images(images)
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"labels must be integers of shape ({len(images)},), got {labels.dtype} {labels.shape}")
    if len(images) == 0:
        raise DatasetError("no images to corrupt")
    names = list(CORRUPTIONS) if names is None else list(names)
    for name in names:
        _check_name(name)
    severities = [_check_severity(s) for s in severities]
    if not severities:
        raise FastpartError("no severities given")
    seed = _check_seed(seed)
    labels = labels.astype(np.int64)
    tiled = np.tile(labels, len(severities))
    severity_column = np.repeat(np.asarray(severities, dtype=np.int64), len(images))
    return {
        name: SplitData(
            images=np.concatenate([corrupt(images, name, s, seed) for s in severities]),
            labels=tiled,
            extras={"severity": severity_column},
        )
        for name in names
    }
