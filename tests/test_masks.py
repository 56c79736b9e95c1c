"""PART masks: CAM -> eps levels (paper and reference modes), levels -> budgets, schedule, whole splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastpart.errors import FastpartError
from fastpart.kernels import eps_from_levels
from fastpart.part import MaskSettings, compute_split_levels, eps_levels, refresh_epochs
from fastpart.part.released import jet_indices, jet_table, pil_resize

PAPER = MaskSettings()
REFERENCE = MaskSettings(mode="reference")


# ---------------------------------------------------------------------------------------------
# Paper mode
# ---------------------------------------------------------------------------------------------


def expected_paper(maps: np.ndarray, size: tuple[int, int], tau: float, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Independent float64 computation: upsample (torch, align_corners=False), population z-score, z > tau.

    Also returns z, so comparisons can skip pixels whose z is within float32 noise of tau.
    """
    t = torch.from_numpy(maps.astype(np.float64))[:, None]
    up = t if tuple(maps.shape[1:]) == size else F.interpolate(t, size=size, mode=mode, align_corners=False)
    up = up[:, 0].numpy()
    flat = up.reshape(len(up), -1)
    z = (flat - flat.mean(axis=1, keepdims=True)) / flat.std(axis=1, keepdims=True)  # np.std: ddof = 0
    z = z.reshape(up.shape)
    return (z > tau).astype(np.uint8), z


def test_paper_hot_spot_identity_size():
    cam = torch.zeros(1, 6, 6)
    cam[0, 2, 3] = 10.0
    levels, degenerate = eps_levels(cam, (6, 6), PAPER)
    assert levels.dtype == torch.uint8 and levels.shape == (1, 1, 6, 6)
    expected = np.zeros((1, 1, 6, 6), np.uint8)
    expected[0, 0, 2, 3] = 1
    np.testing.assert_array_equal(levels.numpy(), expected)
    assert not degenerate.any()


@pytest.mark.parametrize("tau", [-0.5, 0.0, 0.5, 1.0, 1.5, 2.5])
def test_paper_tau_respected_on_graded_map(tau):
    # values 0..35 permuted: z-scores are spread out, none within 1e-3 of the taus above
    rng = np.random.default_rng(1)
    cam = rng.permutation(36).reshape(1, 6, 6).astype(np.float32) ** 1.5
    expected, z = expected_paper(cam, (6, 6), tau, "bicubic")
    assert np.abs(z - tau).min() > 1e-3
    levels, degenerate = eps_levels(torch.from_numpy(cam), (6, 6), MaskSettings(tau=tau))
    np.testing.assert_array_equal(levels.numpy()[:, 0], expected)
    assert not degenerate.any()


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("h,size", [(4, (32, 32)), (8, (32, 32)), (3, (17, 29))])
def test_paper_upsampled_matches_torch_interpolate(interpolation, h, size):
    rng = np.random.default_rng(h)
    cam = np.maximum(rng.normal(size=(16, h, h + 1)), 0).astype(np.float32) * 3.0
    cam[0, 1, 1] = 7.0  # a clear hot spot
    settings = MaskSettings(interpolation=interpolation)
    levels, degenerate = eps_levels(torch.from_numpy(cam), size, settings)
    assert levels.shape == (16, 1) + size and levels.dtype == torch.uint8
    expected, z = expected_paper(cam, size, 1.0, interpolation)
    differ = levels.numpy()[:, 0] != expected
    assert not (differ & (np.abs(z - 1.0) > 1e-4)).any()  # only float32 ties at the threshold may differ
    assert differ.sum() <= 2
    assert not degenerate.any()
    assert 0 < levels.float().mean() < 0.5


def test_paper_hot_spot_upsampled_is_a_blob_around_it():
    cam = torch.zeros(1, 4, 4)
    cam[0, 1, 2] = 1.0
    levels, _ = eps_levels(cam, (32, 32), PAPER)
    ys, xs = np.nonzero(levels[0, 0].numpy())
    assert len(ys) > 0
    # the hot cell (1, 2) of the 4x4 grid covers rows 8..15 and columns 16..23 at 32x32
    assert 8 <= ys.mean() <= 15 and 16 <= xs.mean() <= 23


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_paper_degenerate_maps_fall_back_to_eps_everywhere(interpolation):
    rng = np.random.default_rng(3)
    cams = torch.from_numpy(rng.random((6, 4, 4)).astype(np.float32))
    cams[1] = 0.37  # constant
    cams[2] = 0.0  # ReLU killed everything
    cams[3, 2, 1] = float("nan")
    cams[4, 0, 0] = float("inf")
    settings = MaskSettings(interpolation=interpolation)
    levels, degenerate = eps_levels(cams, (16, 16), settings)
    assert degenerate.tolist() == [False, True, True, True, True, False]
    for i in (1, 2, 3, 4):
        assert bool((levels[i] == 1).all())
    # the healthy maps are unaffected by their neighbours
    alone, _ = eps_levels(cams[[0, 5]], (16, 16), settings)
    assert torch.equal(levels[[0, 5]], alone)
    assert not bool((levels[0] == 1).all())


def test_paper_is_scale_and_shift_invariant():
    rng = np.random.default_rng(4)
    cams = torch.from_numpy(rng.random((8, 4, 4)).astype(np.float32))
    a, _ = eps_levels(cams, (32, 32), PAPER)
    b, _ = eps_levels(cams * 1000.0 + 5.0, (32, 32), PAPER)
    assert (a != b).float().mean() < 1e-3


def test_eps_levels_rejects_bad_input():
    with pytest.raises(FastpartError):
        eps_levels(torch.zeros(4, 4), (8, 8), PAPER)
    with pytest.raises(FastpartError):
        eps_levels(torch.zeros(1, 4, 4, dtype=torch.int64), (8, 8), PAPER)
    with pytest.raises(FastpartError):
        MaskSettings(mode="weird")
    with pytest.raises(FastpartError):
        MaskSettings(interpolation="nearest")
    with pytest.raises(FastpartError):
        MaskSettings(target="other")
    with pytest.raises(FastpartError):
        MaskSettings(tau=float("nan"))


# ---------------------------------------------------------------------------------------------
# Reference mode
# ---------------------------------------------------------------------------------------------


def test_jet_table_and_indexing_match_matplotlib():
    import matplotlib

    cmap = matplotlib.colormaps["jet"]
    rng = np.random.default_rng(5)
    edges = np.arange(257, dtype=np.float64) / 256
    for dtype in (np.float32, np.float64):
        x = np.concatenate(
            [rng.random(50_000) * 1.4, edges, np.nextafter(edges, -1), np.nextafter(edges, 2), [0.0, 1.0, 3.0]]
        ).astype(dtype)
        x = x[x >= 0]
        ours = jet_table()[jet_indices(torch.from_numpy(x))].numpy()
        np.testing.assert_array_equal(ours, cmap(x)[:, :3])
    assert jet_table().shape == (256, 3) and jet_table().dtype == torch.float64


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_pil_resize_matches_pillow(interpolation):
    from PIL import Image

    rng = np.random.default_rng(6)
    flt = Image.BICUBIC if interpolation == "bicubic" else Image.BILINEAR
    for h, w, rows, cols in [(4, 4, 32, 32), (8, 8, 32, 32), (3, 5, 17, 29), (6, 6, 6, 6)]:
        maps = rng.random((8, h, w)).astype(np.float32)
        ours = pil_resize(torch.from_numpy(maps), (rows, cols), interpolation).numpy()
        ref = np.stack([np.asarray(Image.fromarray(m).resize((cols, rows), resample=flt)) for m in maps])
        np.testing.assert_array_equal(ours, ref)


def released_reference(cam: np.ndarray, size: int, eps: float = 8 / 255, low: float = 7 / 255,
                       torchcam_eps: float = 0.0) -> np.ndarray:
    """The released code (utils.py: craft_weight_matrix, process_overlay, generate_weighted_eps), one image.

    The pinned torchcam 0.3.2 min-max normalises the ReLU'd CAM in float32 (L -= min; L /= max: no epsilon, so a
    flat map is 0 / 0 = NaN; ``torchcam_eps`` 1e-8 gives torchcam >= 0.4); torchvision 0.14's to_pil_image keeps
    a float32 ndarray as a mode "F" image (no x255); PIL BICUBIC resize; square; matplotlib jet (NaN -> the "bad"
    colour, transparent black); RGB x255 as double, /255; np.mean / np.std over all values; clamp to [1, max] in
    torch; float32; > 1 -> eps. Returns the per-element eps (3, size, size) float32.
    """
    import matplotlib
    from PIL import Image

    heat = torch.from_numpy(cam.astype(np.float32)).clone()[None]
    heat.sub_(heat.flatten(start_dim=-2).min(-1).values[..., None, None])
    heat.div_(heat.flatten(start_dim=-2).max(-1).values[..., None, None] + torchcam_eps)
    mask = Image.fromarray(heat[0].numpy(), mode=None)
    assert mask.mode == "F"
    overlay = mask.resize((size, size), resample=Image.BICUBIC)
    cmap_overlay = matplotlib.colormaps["jet"](np.asarray(overlay) ** 2)
    rgb = (255 * cmap_overlay[:, :, :3]).astype(np.double)
    normalized = rgb / 255
    mean, std = np.mean(normalized), np.std(normalized)
    with np.errstate(invalid="ignore"):  # a flat map: 0 / 0
        weight = torch.from_numpy((normalized - mean) / std)
    weight = torch.clamp(weight, 1, weight.max()).float().permute(2, 0, 1)
    return torch.where(weight > 1, eps, low).numpy()


def tiny_cam() -> np.ndarray:
    """A CAM whose max is near 4e-8 (a nearly dead layer): torchcam's later + 1e-8 flattens it to [0, 0.8]."""
    cam = np.maximum(np.random.default_rng(11).normal(size=(4, 4)), 0).astype(np.float32)
    return (cam / cam.max() * 4e-8).astype(np.float32)


def test_reference_mode_matches_released_procedure():
    rng = np.random.default_rng(7)
    cams = []
    for h in (4, 4, 4, 8, 8):
        cam = np.maximum(rng.normal(size=(h, h)), 0) * rng.uniform(0.01, 50)
        cams.append(cam.astype(np.float32))
    peak = np.zeros((4, 4), np.float32)
    peak[2, 1] = 3.0
    cams.append(peak)
    cams.append(tiny_cam())
    flat = [np.zeros((4, 4), np.float32), np.full((4, 4), 0.37, np.float32)]  # ReLU killed everything; constant
    channel_differs = False
    for cam in cams + flat:
        levels, degenerate = eps_levels(torch.from_numpy(cam)[None], (32, 32), REFERENCE)
        assert levels.shape == (1, 3, 32, 32) and levels.dtype == torch.uint8
        assert bool(degenerate.any()) == any(cam is f for f in flat)
        ours = eps_from_levels(levels, 8 / 255, 7 / 255)[0].numpy()
        np.testing.assert_array_equal(ours, released_reference(cam, 32))
        channel_differs |= bool((levels[0, 0] != levels[0, 1]).any() or (levels[0, 1] != levels[0, 2]).any())
    assert channel_differs


def test_reference_mode_flat_map_is_degenerate_with_no_important_pixel():
    """torchcam 0.3.2: 0 / 0 = NaN -> matplotlib's bad colour -> NaN z -> eps_low everywhere (torchcam >= 0.4's
    + 1e-8 gave a uniform dark-blue image instead, whose whole blue channel was important)."""
    for cam in (torch.zeros(1, 4, 4), torch.full((1, 4, 4), 2.5)):
        levels, degenerate = eps_levels(cam, (8, 8), REFERENCE)
        assert degenerate.tolist() == [True]
        assert not levels.any()
        np.testing.assert_array_equal(released_reference(cam[0].numpy(), 8), np.full((3, 8, 8), 7 / 255, np.float32))
    later = released_reference(np.zeros((4, 4), np.float32), 8, torchcam_eps=1e-8)
    assert (later[2] == np.float32(8 / 255)).all() and (later[:2] == np.float32(7 / 255)).all()


def test_reference_mode_tiny_map_is_normalised_to_its_max():
    cam = tiny_cam()
    levels, degenerate = eps_levels(torch.from_numpy(cam)[None], (32, 32), REFERENCE)
    assert not degenerate.any()
    released = released_reference(cam, 32)
    later = released_reference(cam, 32, torchcam_eps=1e-8)
    np.testing.assert_array_equal(eps_from_levels(levels, 8 / 255, 7 / 255)[0].numpy(), released)
    important, important_later = (float((a == np.float32(8 / 255)).mean()) for a in (released, later))
    assert important == pytest.approx(float(levels.float().mean()))
    assert important != important_later and (released != later).mean() > 0.01  # the epsilon matters here


def test_reference_mode_batch_equals_single_images_and_nan_is_degenerate():
    rng = np.random.default_rng(8)
    cams = torch.from_numpy(np.maximum(rng.normal(size=(5, 4, 4)), 0).astype(np.float32))
    cams[3, 0, 0] = float("nan")
    levels, degenerate = eps_levels(cams, (32, 32), REFERENCE)
    assert degenerate.tolist() == [False, False, False, True, False]
    assert not levels[3].any()  # as the released code's NaN: eps_low everywhere
    for i in (0, 1, 2, 4):
        single, _ = eps_levels(cams[i : i + 1], (32, 32), REFERENCE)
        assert torch.equal(levels[i : i + 1], single)


# ---------------------------------------------------------------------------------------------
# Levels -> budget (fastpart.kernels.eps_from_levels)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_eps_from_levels_values_and_dtype(dtype):
    levels = torch.randint(0, 2, (3, 1, 5, 5), dtype=torch.uint8)
    m = eps_from_levels(levels, 8 / 255, 7 / 255, dtype=dtype)
    assert m.dtype == dtype and m.shape == levels.shape
    hi = torch.tensor(8 / 255, dtype=dtype)
    lo = torch.tensor(7 / 255, dtype=dtype)
    assert torch.equal(m[levels == 1], hi.expand(int((levels == 1).sum())))
    assert torch.equal(m[levels == 0], lo.expand(int((levels == 0).sum())))
    assert (torch.zeros(3, 3, 5, 5, dtype=dtype) + m).shape == (3, 3, 5, 5)  # broadcasts over channels


def test_eps_from_levels_reference_levels_per_channel():
    levels = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    levels[0, 1, 0, 0] = 1
    m = eps_from_levels(levels, 0.5, 0.25)
    assert m[0, 1, 0, 0] == 0.5 and m[0, 0, 0, 0] == 0.25 and m[0, 2, 0, 0] == 0.25


# ---------------------------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------------------------


def test_refresh_epochs():
    assert refresh_epochs(80, 20, 10) == [20, 30, 40, 50, 60, 70]
    assert refresh_epochs(80, 20, 0) == []
    assert refresh_epochs(20, 20, 10) == []
    assert refresh_epochs(10, 30, 10) == []
    assert refresh_epochs(25, 20, 10) == [20]
    assert refresh_epochs(5, 0, 1) == [0, 1, 2, 3, 4]
    with pytest.raises(FastpartError):
        refresh_epochs(80, -1, 10)


# ---------------------------------------------------------------------------------------------
# compute_split_levels
# ---------------------------------------------------------------------------------------------


def make_split(n=11, size=8, seed=9):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    images[min(4, n - 1), :, :, 0] = 200  # a flat red channel: a degenerate map in paper mode
    labels = rng.integers(0, 10, size=n)
    return torch.from_numpy(images), torch.from_numpy(labels)


class RedCam:
    """A fake CAM: the red channel, 2x2-subsampled; records what it was given."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, targets):
        self.calls.append((x, targets))
        return x[:, 0, ::2, ::2].float() * 3.0


@pytest.mark.parametrize("settings", [PAPER, REFERENCE, MaskSettings(target="label", interpolation="bilinear")])
def test_compute_split_levels_matches_direct_computation(settings):
    images, labels = make_split()
    cam = RedCam()
    levels, stats = compute_split_levels(cam, images, labels, settings, batch_size=4, progress=False)
    assert levels.shape == (11, settings.channels, 8, 8) and levels.dtype == torch.uint8
    direct_cams = images.permute(0, 3, 1, 2).float()[:, 0, ::2, ::2] / 255 * 3.0
    expected, degenerate = eps_levels(direct_cams, (8, 8), settings)
    assert torch.equal(levels, expected)
    assert [len(x) for x, _ in cam.calls] == [4, 4, 3]
    for i, (x, targets) in enumerate(cam.calls):
        assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
        assert 0 <= float(x.min()) and float(x.max()) <= 1
        if settings.target == "label":
            assert torch.equal(targets, labels[4 * i : 4 * i + len(x)])
        else:
            assert targets is None
    assert stats["n"] == 11
    assert stats["degenerate"] == int(degenerate.sum())
    assert stats["degenerate"] == 1  # the flat red channel, counted in both modes
    assert stats["important_fraction"] == pytest.approx(float(levels.double().mean()), abs=1e-12)
    assert stats["seconds"] >= 0


def test_compute_split_levels_rejects_bad_input():
    images, labels = make_split(3)
    with pytest.raises(FastpartError):
        compute_split_levels(RedCam(), images.float(), labels, PAPER, progress=False)
    with pytest.raises(FastpartError):
        compute_split_levels(RedCam(), images, labels[:2], PAPER, progress=False)
    with pytest.raises(FastpartError):
        compute_split_levels(lambda x, t: x[:1, 0], images, labels, PAPER, batch_size=2, progress=False)
