"""SynthSeg's posterior post-processing, reimplemented: smoothing, flip averaging, clean-up, volumes.

Same steps and thresholds as SynthSeg's ``build_model``/``postprocess``:

* 2.0 (not ``fast``): the softmax is blurred with a 3x3x3 Gaussian of sigma 0.5 voxel (zero
  padded), the left-right flipped image is segmented the same way, flipped back with left and
  right channels swapped, and the two are averaged;
* clean-up: keep the largest 6-connected component of ``sum(non-background) > 0.25``; then,
  per topology class, the largest component of ``posterior > 0.25`` (not ``fast``), or zero the
  non-background posteriors below 0.2 (``fast`` and robust); renormalise; argmax;
* volumes are soft: the sum of each posterior times the voxel volume, total intracranial
  being the sum over all non-background labels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

SMOOTHING_SIGMA = 0.5


def _gaussian_taps(sigma: float) -> torch.Tensor:
    # SynthSeg's window: int(ceil(2.5 * sigma) / 2) * 2 + 1 voxels (3 for sigma 0.5)
    size = int(math.ceil(2.5 * sigma) / 2) * 2 + 1
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return (g / g.sum()).float()


def blur_posteriors(post: torch.Tensor, sigma: float = SMOOTHING_SIGMA) -> torch.Tensor:
    """Per-channel Gaussian blur of ``(N, C, D, H, W)`` with zero padding, in place, one channel at a time.

    Separable shifted sums: the same result as SynthSeg's 3D kernel (a product of 1D Gaussians),
    much faster than a grouped convolution on CPU, and no second copy of the posteriors.
    """
    taps = [float(t) for t in _gaussian_taps(sigma)]
    radius = (len(taps) - 1) // 2
    for c in range(post.shape[1]):
        channel = post[:, c]
        for axis in (1, 2, 3):
            src = channel.clone()
            channel.mul_(taps[radius])
            n = channel.shape[axis]
            for offset in range(1, radius + 1):
                if offset >= n:
                    break
                w = taps[radius + offset]
                channel.narrow(axis, offset, n - offset).add_(src.narrow(axis, 0, n - offset), alpha=w)
                channel.narrow(axis, 0, n - offset).add_(src.narrow(axis, offset, n - offset), alpha=w)
    return post


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 6-connected component (first one in raster order on ties), as SynthSeg."""
    components, n = ndimage.label(mask)
    if n == 0:
        return mask.copy()
    return components == (np.argmax(np.bincount(components.ravel())[1:]) + 1)


def clean_posteriors(post: np.ndarray, topology: np.ndarray | None, fast: bool, crop=None) -> np.ndarray:
    """SynthSeg's clean-up of channel-first posteriors ``(C, X, Y, Z)``, in place; returns them.

    ``crop`` (slices) removes padding: before the clean-up in ``fast`` mode and after it
    otherwise, which is where SynthSeg does it.
    """
    if crop is not None and (fast or topology is None):
        post = post[(slice(None),) + tuple(crop)]
    brain = largest_component(post[1:].sum(axis=0) > 0.25)
    post[1:] *= brain
    del brain
    if not fast and topology is not None:
        above = post > 0.25
        for cls in np.unique(topology)[1:]:
            channels = np.flatnonzero(topology == cls)
            keep = largest_component(above[channels].any(axis=0))
            post[channels] *= keep
        del above
        if crop is not None:
            post = post[(slice(None),) + tuple(crop)]
    else:
        for c in range(1, post.shape[0]):
            post[c] *= post[c] > 0.2
    total = post.sum(axis=0)
    empty = total <= 0
    if empty.any():  # nothing left at a voxel (SynthSeg would divide by zero): call it background
        post[0][empty] = 1.0
        total[empty] = 1.0
    post /= total
    return post


def hard_labels(post: np.ndarray, label_values: np.ndarray) -> np.ndarray:
    """Argmax over channels (first channel wins ties, as ``np.argmax``) without copying the posteriors."""
    best = post[0].copy()
    index = np.zeros(best.shape, dtype=np.uint8)
    for c in range(1, post.shape[0]):
        better = post[c] > best
        index[better] = c
        np.copyto(best, post[c], where=better)
    return np.asarray(label_values, dtype=np.int16)[index]


def soft_volumes(post: np.ndarray, label_values: np.ndarray, voxel_volume: float) -> tuple[dict[int, float], float]:
    """Volume of every non-background label in mm3 (sum of posteriors) and their total (TIV)."""
    sums = post.sum(axis=(1, 2, 3), dtype=np.float64) * voxel_volume
    volumes = {int(v): float(s) for v, s in zip(label_values[1:], sums[1:])}
    return volumes, float(sums[1:].sum())
