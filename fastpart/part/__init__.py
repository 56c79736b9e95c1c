"""PART's mask stage: from a model and images to the per-pixel budget of mask-weighted PGD.

    cam        batched class activation maps (GradCAM, XGradCAM, LayerCAM; native, or pytorch-grad-cam)
    levels     MaskSettings; CAMs -> levels (paper mode), for a batch or a whole split; cam_targets, display_cam
    released   the released code's 'reference' mask mode (torchcam, PIL, jet)
    cache      the on-disk cache of a split's levels (bit-packed, keyed by every input)
    plan       MaskPlan (what a run's masks need, fixed once), part_budget, split_levels, refresh_epochs
    refresh    the masks of a whole training split: from the cache or computed, under several processes

Levels are uint8: 1 = important pixel (budget eps), 0 = the rest (eps_low); ``fastpart.budgets.EpsLevels``
carries them with their two values into the attacks.
"""

from fastpart.part.cache import CacheMiss, CorruptCache, MaskCache, cache_key
from fastpart.part.cam import CAM_BACKENDS, CAM_METHODS, CamFn, class_activation_maps
from fastpart.part.levels import MaskSettings, cam_targets, compute_split_levels, display_cam, eps_levels
from fastpart.part.plan import MASK_BATCH, MaskPlan, cam_function, part_budget, refresh_epochs, split_levels
from fastpart.part.refresh import MaskState, SplitImages, cached_levels, refresh_masks

__all__ = ["CAM_BACKENDS", "CAM_METHODS", "MASK_BATCH", "CacheMiss", "CamFn", "CorruptCache", "MaskCache", "MaskPlan",
           "MaskSettings", "MaskState", "SplitImages", "cache_key", "cached_levels", "cam_function", "cam_targets",
           "class_activation_maps", "compute_split_levels", "display_cam", "eps_levels", "part_budget",
           "refresh_epochs", "refresh_masks", "split_levels"]
