"""The scan's noise level, from the image itself: magnitude-image background or wavelet detail.

Three estimators; ``enhance`` uses the first two wherever the first applies, else the third:

- **Rayleigh background.** A magnitude image of a real scanner keeps the noise of the air around
  the head: there the magnitude of complex Gaussian noise is Rayleigh distributed, whose mode is
  the noise ``sigma`` itself. This holds whatever the reconstruction did to the noise's spectrum
  (zero-filled k-space makes the finest detail nearly noise-free, and a wavelet estimate far too
  small), so it is used whenever such a background is there.
- **Tissue noise** (:func:`tissue_sigma`) on the acquired grid, where the noise is white again: the
  finest in-plane diagonal detail of the bright tissue, where the magnitude's noise is Gaussian.
  Air holds only the receiver's thermal noise; tissue can hold more (ghosts and interference
  along the phase-encoding direction, physiological noise), which the prior must remove as well,
  so the larger of the two is the noise of the data term.
- **Wavelet MAD** (Donoho & Johnstone) of the finest diagonal Haar detail inside the head, for
  images whose background is not Rayleigh: skull-stripped or clipped images, and images whose
  noise was added after the magnitude (the simulation).

The Rician bias of low-signal voxels is removed by :func:`unbias_rician`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter1d

from .errors import InvalidInputError

BACKGROUND_LEVEL = 0.15   # air: below this share of the robust maximum
MIN_BACKGROUND_SHARE = 0.2  # at least this share of the voxels must be air for a background estimate
HISTOGRAM_BINS = 200
MIN_MODE_BIN = 5          # a mode in the first bins is a zero floor (clipped or masked), not a Rayleigh mode
LOW_SHARE = 0.25          # below this share of the mode ...
MAX_LOW_DENSITY = 0.5     # ... a Rayleigh background has less than this share of the density at its mode


def wavelet_mad_sigma(lf: np.ndarray) -> float:
    """Noise standard deviation from the finest diagonal Haar detail inside the head.

    The detail of a 2x2x2 block is almost pure noise in smooth tissue; its median absolute value
    over the head (blocks brighter than 10% of the robust max) divided by 0.6745 estimates sigma.
    Negatives clipped to zero in the background are avoided by staying inside the head.
    """
    x = np.asarray(lf, dtype=np.float64)
    n = [s - s % 2 for s in x.shape]
    if min(n) < 2:
        raise InvalidInputError("image too small to estimate its noise level (needs 2 voxels per axis)")
    x = x[: n[0], : n[1], : n[2]]
    sign = np.ones((2, 2, 2))
    for i in range(2):
        for j in range(2):
            for k in range(2):
                sign[i, j, k] = (-1) ** (i + j + k)
    blocks = x.reshape(n[0] // 2, 2, n[1] // 2, 2, n[2] // 2, 2).transpose(0, 2, 4, 1, 3, 5)
    hhh = (blocks * sign).sum(axis=(3, 4, 5)) / math.sqrt(8)
    mean = blocks.mean(axis=(3, 4, 5))
    positive = x[x > 0]
    if positive.size == 0:
        return 0.0
    head = mean > 0.1 * np.percentile(positive, 99.5)
    values = hhh[head] if head.sum() > 64 else hhh.ravel()
    return float(np.median(np.abs(values)) / 0.6745)


def rayleigh_sigma(lf: np.ndarray) -> float | None:
    """Noise sigma as the mode of the air's intensities (Rayleigh); None when there is no such background."""
    x = np.asarray(lf, dtype=np.float64)
    positive = x[x > 0]
    if positive.size == 0:
        return None
    air = positive[positive < BACKGROUND_LEVEL * np.percentile(positive, 99.5)]  # zeros are a mask, not air
    if air.size < MIN_BACKGROUND_SHARE * x.size:
        return None
    counts, edges = np.histogram(air, bins=HISTOGRAM_BINS)
    smooth = gaussian_filter1d(counts.astype(float), 2)
    mode = int(np.argmax(smooth))
    if mode < MIN_MODE_BIN:
        return None
    sigma = float(0.5 * (edges[mode] + edges[mode + 1]))
    # Rayleigh's density vanishes at zero (a fifth of its peak, on average, below sigma / 4); the
    # half-normal of clipped Gaussian noise is flat there, with a mode anywhere near zero.
    density_low = np.count_nonzero(air < LOW_SHARE * sigma) / (LOW_SHARE * sigma)
    if density_low > MAX_LOW_DENSITY * smooth[mode] / (edges[1] - edges[0]):
        return None
    return sigma


TISSUE_SNR = 5.0          # tissue: blocks brighter than this many air sigmas (Rician there is nearly Gaussian)
MIN_TISSUE_BLOCKS = 256


def tissue_sigma(y: np.ndarray, air_sigma: float, plane: tuple[int, int]) -> float | None:
    """Noise sigma of the bright tissue from its finest diagonal Haar detail in the ``plane`` axes.

    ``y`` is on a grid where the noise is white (the acquired grid); ``plane`` holds the two
    finely sampled axes, since across thick slices the detail is anatomy, not noise. Blocks
    brighter than ``TISSUE_SNR`` air sigmas count; None when too few are there.
    """
    a, b = plane
    x = np.moveaxis(np.asarray(y, dtype=np.float64), (a, b), (0, 1))
    n0, n1 = x.shape[0] - x.shape[0] % 2, x.shape[1] - x.shape[1] % 2
    x = x[:n0, :n1].reshape(n0 // 2, 2, n1 // 2, 2, -1)
    diagonal = (x[:, 0, :, 0] - x[:, 0, :, 1] - x[:, 1, :, 0] + x[:, 1, :, 1]) / 2.0
    tissue = x.mean(axis=(1, 3)) > TISSUE_SNR * air_sigma
    if np.count_nonzero(tissue) < MIN_TISSUE_BLOCKS:
        return None
    return float(np.median(np.abs(diagonal[tissue])) / 0.6745)


def unbias_rician(lf: np.ndarray, sigma: float) -> np.ndarray:
    """``sqrt(max(m^2 - 2 sigma^2, 0))``: the magnitude's second-moment bias removed, voxel by voxel.

    Air, whose magnitude is noise alone, goes to (near) zero instead of ``1.25 sigma``; tissue well
    above the noise is unchanged. Voxels that are zero stay zero.
    """
    return np.sqrt(np.maximum(np.square(lf, dtype=np.float64) - 2.0 * sigma**2, 0.0)).astype(np.float32)
