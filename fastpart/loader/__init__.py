"""From a converted split (.beton or .npz) to batches on the device.

``DeviceLoader`` (``device``) is an iterable of ``(images, labels, indices)`` — or ``(images, labels, indices,
aux)`` when a per-sample auxiliary tensor is attached — where images are float in [0, 1], NCHW in
channels_last memory, in the requested precision. Two sources (``sources``) read the same file behind
one interface:

* ``memory``: the whole split decoded once into one uint8 tensor on the device; batches are index
  gathers (for CIFAR, SVHN, TinyImageNet: they fit with room to spare);
* ``ffcv``: ffcv's Loader streams decoded uint8 batches (for datasets larger than device memory).

Both draw the sample order from the same seeded permutation and run the same batched augmentation
on the device (``augment``: random crop with zero padding, horizontal flip), so for a given seed and epoch they
yield identical batches.

Several processes (``rank`` of ``world_size``, e.g. under ``torchrun``) share one order: every
process draws the same permutation of the epoch, cuts it into *global* batches of
``batch_size * world_size`` samples (dropping the incomplete last one, like ``DistributedSampler``
with ``drop_last``) and takes the ``rank``-th contiguous piece of each, so the processes see disjoint
shards and, together, exactly the batches one process with the global batch size would see, with
the same crops and flips (the augmentation is drawn for the global batch and sliced). The ffcv
backend is given the process's shard as its traversal order (ffcv's own ``distributed=True`` order
interleaves samples differently and is not used).

The auxiliary tensor (PART's mask levels) is looked up by sample index and receives exactly
the crop and flip of its image. ffcv is imported only by the ffcv source, when it is built.

``subset`` serves only some rows of the file (e.g. a validation split held out of training, or the
training split without it): its samples are indexed 0..len(subset)-1 in the order of their rows, and
the order, augmentation and aux lookup are those of a file holding just these rows.
"""

from fastpart.data.splitfiles import read_split, split_path
from fastpart.loader.augment import (Augment, aux_from_nhwc, aux_to_nhwc, crop_flip, crop_flip_coordinates,
                                     epoch_order, stream_seed, to_model_input)
from fastpart.loader.device import DeviceLoader
from fastpart.loader.sources import BACKENDS, FfcvSource, MemorySource, choose_backend

__all__ = ["BACKENDS", "Augment", "DeviceLoader", "FfcvSource", "MemorySource", "aux_from_nhwc", "aux_to_nhwc",
           "choose_backend", "crop_flip", "crop_flip_coordinates", "epoch_order", "read_split", "split_path",
           "stream_seed", "to_model_input"]
