"""Generic image operations on uint8/float batches (N, H, W[, C]), in numpy and scipy: unit conversions,
Gaussian and box filters, correlation, grayscale, centre zoom, ImageMagick's motion blur, plasma fractals,
RGB<->HSV, border modes, bilinear sampling and affine warps, OpenCV's Canny edges, chamfer distance
transform and histogram equalisation re-implemented, a defocus disk kernel, frost-like textures, and
Pillow's BOX resampling and JPEG round trip applied to a batch; and ``ImageStore``, where a reader's decoded
images wait until their order is known (on the disk under ``spooling``: memory holds one image at a time).

They reproduce the library calls of the published CIFAR-10-C code (scikit-image, scipy, OpenCV,
ImageMagick) closely enough for ``fastpart.data.corruptions`` to follow its definitions without
those libraries; nothing here knows about corruptions or severities.
"""

from __future__ import annotations

import io
import math
import os
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from fastpart.atomic import disk_full_error
from fastpart.errors import DatasetError


def unit(images: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    return images.astype(dtype) / dtype(255.0)


def to_255(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0) * 255.0


def gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """scikit-image's ``gaussian`` over the two image axes of a (N, H, W[, C]) batch."""
    sigmas = [0.0, sigma, sigma] + [0.0] * (x.ndim - 3)
    return ndimage.gaussian_filter(x, sigmas, mode=mode, truncate=truncate)


def correlate(x: np.ndarray, kernel: np.ndarray, mode: str) -> np.ndarray:
    """2-D correlation over the image axes of a (N, H, W[, C]) batch (scipy 'mirror' = OpenCV reflect-101)."""
    weights = kernel.reshape((1, *kernel.shape) + (1,) * (x.ndim - 3))
    return ndimage.correlate(x, weights, mode=mode)


def box3(x: np.ndarray) -> np.ndarray:
    """OpenCV's ``blur(x, (3, 3))``: 3x3 mean with reflect-101 borders."""
    return correlate(x, np.full((3, 3), 1.0 / 9.0, dtype=x.dtype), mode="mirror")


def gray(x: np.ndarray) -> np.ndarray:
    """OpenCV's RGB -> gray weights on a (N, H, W, 3) batch."""
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def zoom_centre(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre of square images (N, H, H[, C]) by ``factor``, keeping the size.

    The centre ceil(H / factor) pixels are enlarged by scipy's order-1 ``zoom`` (output side
    round(crop * factor), sample positions i * (crop - 1) / (out - 1)) and the middle H pixels kept;
    the linear interpolation is applied as one (H, crop) matrix per image axis.
    """
    h = x.shape[1]
    crop_size = int(np.ceil(h / factor))
    top = (h - crop_size) // 2
    crop = x[:, top : top + crop_size, top : top + crop_size]
    out_size = int(round(crop_size * factor))
    trim = (out_size - h) // 2
    step = (crop_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    coords = np.clip(np.arange(trim, trim + h) * step, 0, crop_size - 1)
    low = np.floor(coords).astype(np.intp)
    high = np.minimum(low + 1, crop_size - 1)
    frac = coords - low
    interp = np.zeros((h, crop_size))
    np.add.at(interp, (np.arange(h), low), 1 - frac)
    np.add.at(interp, (np.arange(h), high), frac)
    interp = interp.astype(x.dtype)
    moved = np.moveaxis(crop, (1, 2), (-2, -1))  # (N, [C,] crop, crop)
    zoomed = interp @ moved @ interp.T
    return np.ascontiguousarray(np.moveaxis(zoomed, (-2, -1), (1, 2)))


def motion_blur(layer: np.ndarray, radius: float, sigma: float, angles: np.ndarray) -> np.ndarray:
    """ImageMagick's MotionBlurImage on a float batch (N, H, W, C), one angle (degrees) per image.

    Kernel: 2*ceil(radius)+1 taps weighted exp(-i^2 / (2 sigma^2)) (normalised); tap i reads the pixel
    at (x + ceil(i cos(a) - 0.5), y + ceil(i sin(a) - 0.5)), edge pixels repeated outside the image.
    Returns the blurred layer rounded to whole values, as ImageMagick's 8-bit output is.
    """
    n, h, w = layer.shape[:3]
    width = 2 * math.ceil(radius) + 1
    taps = np.arange(width, dtype=np.float64)
    weights = np.exp(-(taps * taps) / (2.0 * sigma * sigma))
    weights /= weights.sum()
    radians = np.deg2rad(angles.astype(np.float64))[:, None]
    point_x, point_y = width * np.sin(radians), width * np.cos(radians)
    length = np.hypot(point_x, point_y)
    shift_cols = np.ceil(taps * point_y / length - 0.5).astype(np.intp)  # (N, width)
    shift_rows = np.ceil(taps * point_x / length - 0.5).astype(np.intp)
    first = (np.arange(n) * (h * w))[:, None, None]
    rows, cols = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    pixels = layer.reshape(n * h * w, -1)
    out = np.zeros((n * h * w, pixels.shape[1]), dtype=np.float64)
    for t in range(width):
        r = np.clip(rows + shift_rows[:, t, None, None], 0, h - 1)
        c = np.clip(cols + shift_cols[:, t, None, None], 0, w - 1)
        out += weights[t] * pixels.take((first + r * w + c).ravel(), axis=0)
    return np.floor(out + 0.5).reshape(layer.shape)


def plasma(rng: np.random.Generator, n: int, size: int, decay: float) -> np.ndarray:
    """Diamond-square height maps (N, size, size) in [0, 1], wrapping at the edges.

    Each level sets the centre of every square, then the midpoint of every edge, to the mean of its
    four neighbours plus a uniform displacement of +-wibble^2; wibble starts at 100 and is divided by
    ``decay`` per level (the schedule of the published CIFAR-10-C fog).
    """
    height = np.zeros((n, size, size))
    step, wibble = size, 100.0

    def displaced(total: np.ndarray) -> np.ndarray:
        return total / 4.0 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = height[:, ::step, ::step]
        square = corners + np.roll(corners, -1, axis=1)
        square = square + np.roll(square, -1, axis=2)
        height[:, half::step, half::step] = displaced(square)
        centres = height[:, half::step, half::step]
        corners = height[:, ::step, ::step]
        # midpoints of horizontal edges: corners left/right, centres above/below
        across = corners + np.roll(corners, -1, axis=2) + centres + np.roll(centres, 1, axis=1)
        height[:, ::step, half::step] = displaced(across)
        # midpoints of vertical edges: corners above/below, centres left/right
        down = corners + np.roll(corners, -1, axis=1) + centres + np.roll(centres, 1, axis=2)
        height[:, half::step, ::step] = displaced(down)
        step = half
        wibble /= decay
    height -= height.min(axis=(1, 2), keepdims=True)
    return height / height.max(axis=(1, 2), keepdims=True)


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """scikit-image's rgb2hsv on (..., 3) floats in [0, 1] (blue wins hue ties, then green)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(axis=-1)
    delta = value - rgb.min(axis=-1)
    flat = delta == 0
    safe = np.where(flat, 1.0, delta)
    saturation = np.where(flat, 0.0, delta / np.where(value == 0, 1.0, value))
    hue = np.where(r == value, (g - b) / safe, 0.0)
    hue = np.where(g == value, 2.0 + (b - r) / safe, hue)
    hue = np.where(b == value, 4.0 + (r - g) / safe, hue)
    hue = np.where(flat, 0.0, (hue / 6.0) % 1.0)
    return np.stack([hue, saturation, value], axis=-1)


# For each sextant of the hue circle: which of (v, p, q, t) makes up red, green and blue.
_SEXTANT_SOURCES = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """scikit-image's hsv2rgb on (..., 3) floats."""
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sextant = np.floor(hue * 6.0)
    frac = hue * 6.0 - sextant
    candidates = np.stack(
        [value, value * (1 - saturation), value * (1 - frac * saturation), value * (1 - (1 - frac) * saturation)],
        axis=-1,
    )
    sources = _SEXTANT_SOURCES[sextant.astype(np.intp) % 6]
    return np.take_along_axis(candidates, sources, axis=-1)


def reflect101(index: np.ndarray, size: int) -> np.ndarray:
    """OpenCV's BORDER_REFLECT_101 (scipy 'mirror'): ... 2 1 | 0 1 2 ... n-1 | n-2 ..."""
    period = 2 * size - 2
    index = np.mod(index, period)
    return np.where(index >= size, period - index, index)


def symmetric(index: np.ndarray, size: int) -> np.ndarray:
    """scipy's 'reflect': ... 1 0 | 0 1 ... n-1 | n-1 n-2 ..."""
    period = 2 * size
    index = np.mod(index, period)
    return np.where(index >= size, period - 1 - index, index)


def bilinear(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, border: Callable[..., np.ndarray]) -> np.ndarray:
    """Sample a batch (N, H, W, C) at per-image positions (N, H, W), neighbours outside mapped by ``border``."""
    n, h, w = x.shape[:3]
    r0, c0 = np.floor(rows), np.floor(cols)
    fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
    r0, c0 = r0.astype(np.intp), c0.astype(np.intp)
    first = (np.arange(n) * (h * w))[:, None, None]
    top, bottom = first + border(r0, h) * w, first + border(r0 + 1, h) * w
    left, right = border(c0, w), border(c0 + 1, w)
    pixels = x.reshape(n * h * w, -1)

    def at(row: np.ndarray, col: np.ndarray) -> np.ndarray:
        return pixels.take((row + col).ravel(), axis=0).reshape(rows.shape + (-1,))

    upper = at(top, left) * (1 - fc) + at(top, right) * fc
    lower = at(bottom, left) * (1 - fc) + at(bottom, right) * fc
    return (upper * (1 - fr) + lower * fr).astype(x.dtype)


def warp_affine(x: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """OpenCV's warpAffine (bilinear, reflect-101) of (N, H, W, C) by per-image maps dst -> src (N, 2, 3)."""
    h, w = x.shape[1:3]
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    a = inverse[:, :, :, None, None]
    src_x = a[:, 0, 0] * cols + a[:, 0, 1] * rows + a[:, 0, 2]
    src_y = a[:, 1, 0] * cols + a[:, 1, 1] * rows + a[:, 1, 2]
    return bilinear(x, src_y, src_x, reflect101)


_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)

_TAN_22_5 = math.tan(math.radians(22.5))
_TAN_67_5 = math.tan(math.radians(67.5))
_PLANE_8 = np.zeros((3, 3, 3), dtype=bool)
_PLANE_8[1] = True  # 8-connected within each image, never across images of a batch


def canny(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Canny edges (bool) of a uint8 batch (N, H, W): L1 Sobel magnitude, NMS, hysteresis."""
    f = x.astype(np.float64)
    gx = correlate(f, _SOBEL_X, mode="nearest")
    gy = correlate(f, _SOBEL_X.T, mode="nearest")
    magnitude = np.abs(gx) + np.abs(gy)
    padded = np.pad(magnitude, ((0, 0), (1, 1), (1, 1)))
    h, w = x.shape[1:]

    def at(dr: int, dc: int) -> np.ndarray:
        return padded[:, 1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]

    ax, ay = np.abs(gx), np.abs(gy)
    horizontal = ay < ax * _TAN_22_5
    vertical = ay > ax * _TAN_67_5
    same_sign = (gx * gy) >= 0
    keep_h = (magnitude > at(0, -1)) & (magnitude >= at(0, 1))
    keep_v = (magnitude > at(-1, 0)) & (magnitude >= at(1, 0))
    keep_d = np.where(
        same_sign,
        (magnitude > at(-1, -1)) & (magnitude > at(1, 1)),
        (magnitude > at(-1, 1)) & (magnitude > at(1, -1)),
    )
    peak = np.where(horizontal, keep_h, np.where(vertical, keep_v, keep_d)) & (magnitude > low)
    labels, count = ndimage.label(peak, structure=_PLANE_8)
    if count == 0:
        return peak
    strong = np.zeros(count + 1, dtype=bool)
    strong[labels[peak & (magnitude > high)]] = True
    strong[0] = False
    return strong[labels]


def distance_to(edges: np.ndarray, cap: float) -> np.ndarray:
    """OpenCV's ``distanceTransform(DIST_L2, 5)`` to the nearest edge of each image, capped at ``cap``.

    The two raster passes of the 5x5 chamfer mask (steps of 1, 1.4 and 2.1969 pixels in 16-bit fixed
    point), one row at a time for the whole batch; along a row the unit steps are a running minimum.
    """
    n, h, w = edges.shape
    limit = int(cap * 65536) + 1
    unit, diagonal, knight = (round(v * 65536) for v in (1.0, 1.4, 2.1969))
    dist = np.full((n, h + 4, w + 4), limit, dtype=np.int64)
    dist[:, 2:-2, 2:-2] = np.where(edges, 0, limit)
    ramp = np.arange(w) * unit
    for rows, near, far in ((range(2, h + 2), -1, -2), (range(h + 1, 1, -1), 1, 2)):
        for r in rows:
            one, two = dist[:, r + near], dist[:, r + far]
            best = np.minimum.reduce([
                dist[:, r, 2:-2],
                one[:, 2 : w + 2] + unit, one[:, 1 : w + 1] + diagonal, one[:, 3 : w + 3] + diagonal,
                one[:, 0:w] + knight, one[:, 4 : w + 4] + knight, two[:, 1 : w + 1] + knight, two[:, 3 : w + 3] + knight,
            ])
            if near < 0:  # left to right
                best = np.minimum.accumulate(best - ramp, axis=1) + ramp
            else:  # right to left
                best = (np.minimum.accumulate((best + ramp)[:, ::-1], axis=1)[:, ::-1]) - ramp
            dist[:, r, 2:-2] = np.minimum(best, limit)
    found = dist[:, 2:-2, 2:-2].astype(np.float32) * np.float32(1 / 65536)
    return np.minimum(found, np.float32(cap))


def equalize(x: np.ndarray) -> np.ndarray:
    """OpenCV's equalizeHist per image of a uint8 batch (N, H, W)."""
    n = len(x)
    flat = x.reshape(n, -1)
    total = flat.shape[1]
    hist = np.bincount((np.arange(n)[:, None] * 256 + flat).ravel(), minlength=n * 256).reshape(n, 256)
    first = np.argmax(hist > 0, axis=1)
    first_count = hist[np.arange(n), first]
    cumulative = np.cumsum(hist, axis=1) - np.cumsum(hist, axis=1)[np.arange(n), first][:, None]
    scale = np.float32(255.0) / np.maximum(total - first_count, 1).astype(np.float32)
    lut = np.clip(np.rint(cumulative.astype(np.float32) * scale[:, None]), 0, 255).astype(np.uint8)
    constant = first_count == total
    lut[constant] = np.arange(256, dtype=np.uint8)
    return np.take_along_axis(lut, flat.astype(np.intp), axis=1).reshape(x.shape)


def disk_kernel(radius: float, alias_sigma: float) -> np.ndarray:
    """A defocus kernel (that of CIFAR-10-C): a 17x17 disk of ``radius``, normalised, blurred by a 3x3 Gaussian."""
    half = 8 if radius <= 8 else int(radius)
    taps = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(taps, taps)
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    size = 3 if radius <= 8 else 5
    g = np.exp(-((np.arange(size) - size // 2) ** 2) / (2.0 * alias_sigma**2))
    g /= g.sum()
    blurred = ndimage.correlate(disk, np.outer(g, g), mode="mirror")
    nonzero = np.nonzero(blurred)  # the image filter only needs the kernel's support
    return blurred[nonzero[0].min() : nonzero[0].max() + 1, nonzero[1].min() : nonzero[1].max() + 1]


def frost_textures(rng: np.random.Generator, count: int, size: int, tint: np.ndarray) -> np.ndarray:
    """Frost-like RGB textures uint8 (count, size, size, 3): ice needles with side branches over a haze,
    coloured by ``tint`` (RGB in [0, 1]).

    A stand-in for the published frost photographs: bright, fine, blue-white crystal structure,
    clustered in patches, on a darker uneven background; mean brightness roughly 35-40% of white.
    """
    haze = plasma(rng, count, size, 1.8)
    textures = np.empty((count, size, size, 3), dtype=np.uint8)
    for k in range(count):
        canvas = Image.new("L", (2 * size, 2 * size), 0)
        draw = ImageDraw.Draw(canvas)
        # Needles cluster where the haze is bright, as rime does: start points drawn with p ~ haze^2.
        weight = (haze[k] ** 2).ravel()
        starts = rng.choice(size * size, size=int(rng.integers(120, 180)), p=weight / weight.sum())
        for start in starts:
            y0, x0 = 2 * (np.array(divmod(int(start), size)) + rng.uniform(0, 1, 2))
            angle = rng.uniform(0, 2 * np.pi)
            length = rng.uniform(10, 45)
            shade = int(rng.integers(120, 256))
            x1, y1 = x0 + length * np.cos(angle), y0 + length * np.sin(angle)
            draw.line([(x0, y0), (x1, y1)], fill=shade, width=int(rng.integers(1, 3)))
            for _ in range(int(rng.integers(2, 6))):  # side needles at +-60 degrees
                t = rng.uniform(0.15, 0.9)
                bx, by = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
                side = angle + rng.choice([-1.0, 1.0]) * np.pi / 3
                side_length = rng.uniform(0.2, 0.5) * length
                draw.line([(bx, by), (bx + side_length * np.cos(side), by + side_length * np.sin(side))],
                          fill=int(shade * 0.8), width=1)
        needles = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float64) / 255.0
        grain = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (size, size)), 0.8)
        grain /= grain.std()
        value = np.clip(0.12 + 0.35 * haze[k] + 1.2 * needles + 0.05 * grain, 0, 1)
        textures[k] = (value[..., None] * tint * 255.0).astype(np.uint8)
    return textures


def box_resample(images: np.ndarray, small: int) -> np.ndarray:
    """Pillow BOX down-sampling of uint8 (N, H, W, 3) images to ``small`` x ``small`` and back up."""
    h, w = images.shape[1:3]
    out = np.empty_like(images)
    for i, image in enumerate(images):
        picture = Image.fromarray(image).resize((small, small), Image.Resampling.BOX)
        out[i] = np.asarray(picture.resize((w, h), Image.Resampling.BOX))
    return out


def jpeg_round_trip(images: np.ndarray, quality: int) -> np.ndarray:
    """uint8 (N, H, W, 3) images encoded as Pillow JPEG at ``quality`` and decoded again."""
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out[i] = np.asarray(decoded.convert("RGB"))
    return out


# Decoded images kept until a reader knows their order: in memory, or under ``spooling`` on the disk

_SPOOL: ContextVar[Path | None] = ContextVar("spool", default=None)


@contextmanager
def spooling(folder: Path) -> Iterator[None]:
    """Within the block, what readers decode waits in files under ``folder`` (``ImageStore``), so memory holds
    one image at a time, whatever the number and size of the images; arrays come back mapped from the disk."""
    token = _SPOOL.set(Path(folder))
    try:
        yield
    finally:
        _SPOOL.reset(token)


class ImageStore:
    """Decoded images of one source, added one at a time and gathered in the order a reader settles on."""

    def __init__(self) -> None:
        self.folder, self.shapes, self._files, self._size = _SPOOL.get(), [], 0, 0
        self._kept: list[Any] = []  # the images themselves, or (spooling) their offsets in the spool file

    def _new_file(self, array: np.ndarray | None = None) -> Path:
        self._files += 1
        path = self.folder / f"{id(self)}-{self._files}.bin"
        if array is not None:
            self._write(path, array)
        return path

    def _write(self, path: Path, array: np.ndarray) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as file:
                file.write(memoryview(np.ascontiguousarray(array)).cast("B"))
        except OSError as error:  # never taken for a damaged archive: a full disk is one line naming it
            raise disk_full_error(error, path) or DatasetError(f"cannot write {path} ({error})") from None

    def add(self, pixels: np.ndarray) -> int:
        """Keep one image (uint8 (H, W, 3)); returns its row for ``stack``."""
        self.shapes.append(pixels.shape)
        if self.folder is not None:
            self._spool = self._spool if self._kept else self._new_file()
            self._write(self._spool, pixels)
            self._kept.append(self._size)
            self._size += pixels.nbytes
        else:
            self._kept.append(pixels)
        return len(self.shapes) - 1

    def stack(self, rows: list[int]) -> np.ndarray:
        """uint8 (N, H, W, 3): the images ``rows`` in that order (all the same shape; mapped from the disk)."""
        if self.folder is None:
            return np.stack([self._kept[i] for i in rows])
        path = self._new_file()
        with open(self._spool, "rb") as spool:
            for i in rows:
                size = int(np.prod(self.shapes[i]))
                self._write(path, np.frombuffer(os.pread(spool.fileno(), size, self._kept[i]), np.uint8))
        return np.memmap(path, np.uint8, "r", shape=(len(rows), *self.shapes[rows[0]]))

    def keep(self, array: np.ndarray) -> np.ndarray:
        """``array``, or (spooling) a read-only copy of it mapped from the disk."""
        if self.folder is None or array.size == 0:
            return array
        return np.memmap(self._new_file(array), array.dtype, "r", shape=array.shape)
