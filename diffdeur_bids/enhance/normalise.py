"""Contrast-agnostic intensity scale: the same rule for training, solving and scoring."""

from __future__ import annotations

import numpy as np

from .errors import InvalidInputError


def robust_max(volume: np.ndarray, percentile: float = 99.5) -> float:
    """The 99.5th percentile of the positive voxels (sim-lf-v1's normalisation)."""
    positive = volume[volume > 0]
    if positive.size == 0:
        raise InvalidInputError("the image has no positive voxels (all zero or negative): nothing to enhance")
    value = float(np.percentile(positive, percentile))
    if not np.isfinite(value) or value <= 0:
        raise InvalidInputError("the image has no usable intensity range")
    return value
