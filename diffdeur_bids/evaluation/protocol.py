"""The sim-lf-v1 protocol: a simulated low-field scan from a high-field volume, for scoring.

Each LF voxel is the mean of ``k`` HF voxels (box slice profile), then a Gaussian in-plane PSF
on the LF grid (sigma in LF voxels, edge-replicating), then white Gaussian noise, clipped at
zero like a magnitude image. The ground truth is the HF volume divided by its robust maximum
and cropped to a whole number of LF voxels. The operator the method inverts is
:class:`diffdeur_bids.enhance.forward.Degradation`; this module is evaluation only.
"""

from __future__ import annotations

import numpy as np

from ..enhance.errors import InvalidInputError
from ..enhance.normalise import robust_max

TRACKS = {
    "2mm": dict(k=(1, 1, 3), psf_sigma=0.5, noise_sigma=0.04),
    "1mm": dict(k=(2, 2, 4), psf_sigma=0.5, noise_sigma=0.04),
}


def normalise_ground_truth(hf: np.ndarray) -> np.ndarray:
    """Protocol step 2: divide by the 99.5th percentile of the positive voxels, clip to [0, 1]."""
    hf = np.asarray(hf, dtype=np.float32)
    return np.clip(hf / robust_max(hf), 0, 1).astype(np.float32)


def simulate_lowfield(hf_ras, hf_affine, k=(2, 2, 4), psf_sigma=0.5, noise_sigma=0.04, seed=0):
    """sim-lf-v1: a simulated LF scan from an RAS+ HF volume.

    Returns ``(lf, lf_affine, gt, gt_affine)``: ``gt`` is the normalised, cropped ground truth
    whose grid splits each LF voxel into ``k`` sub-voxels.
    """
    from scipy.ndimage import gaussian_filter

    hf = np.asarray(hf_ras, dtype=np.float32)
    if hf.ndim == 4:
        hf = hf[..., 0]
    if hf.ndim != 3:
        raise InvalidInputError(f"a 3D volume is needed, got shape {hf.shape}")
    k = tuple(int(v) for v in k)
    gt = normalise_ground_truth(hf)
    n = [s // kk * kk for s, kk in zip(gt.shape, k)]
    if min(n) == 0:
        raise InvalidInputError(f"volume {gt.shape} is smaller than the factors {k}")
    gt = np.ascontiguousarray(gt[: n[0], : n[1], : n[2]])
    lf = gt.reshape(n[0] // k[0], k[0], n[1] // k[1], k[1], n[2] // k[2], k[2]).mean(axis=(1, 3, 5))
    if psf_sigma:
        lf = gaussian_filter(lf, psf_sigma, mode="nearest")
    rng = np.random.default_rng(seed)
    lf = np.clip(lf + rng.normal(0.0, noise_sigma, lf.shape), 0, None).astype(np.float32)
    s = np.diag([*k, 1.0]).astype(float)
    s[:3, 3] = (np.asarray(k) - 1) / 2.0
    lf_affine = np.asarray(hf_affine, dtype=float) @ s
    return lf, lf_affine, gt, np.asarray(hf_affine, dtype=float)
