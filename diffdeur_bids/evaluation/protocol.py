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


# --------------------------------------------------------------------------- sim-lf-v2: three stacks with motion

STACKS = {  # name: the RAS axes of the array's (in-plane u, in-plane v, slice) axes
    "axi": (0, 1, 2),
    "cor": (0, 2, 1),
    "sag": (1, 2, 0),
}
STACK_VOXEL_MM = (1.5, 1.5, 5.0)
STACK_SAMPLES = (3, 3, 10)  # points per LF voxel along (u, v, slice) for the box profile
MAX_ROTATION_DEG = 3.0
MAX_TRANSLATION_MM = 2.0


def rigid_about(rotvec_rad, translation_mm, centre) -> np.ndarray:
    """The 4 x 4 world transform ``w -> R (w - c) + c + t``."""
    from scipy.spatial.transform import Rotation

    m = np.eye(4)
    m[:3, :3] = Rotation.from_rotvec(np.asarray(rotvec_rad, dtype=float)).as_matrix()
    c = np.asarray(centre, dtype=float)
    m[:3, 3] = c - m[:3, :3] @ c + np.asarray(translation_mm, dtype=float)
    return m


def stack_affine(axes, gt_shape, gt_affine, voxel_mm=STACK_VOXEL_MM) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of a stack whose array axes run along the RAS ``axes``, covering the GT's field
    of view (``ceil(extent / voxel)`` voxels) and centred on the GT's centre."""
    gt_vox = np.sqrt((np.asarray(gt_affine)[:3, :3] ** 2).sum(0))
    centre = np.asarray(gt_affine, dtype=float) @ np.r_[(np.asarray(gt_shape) - 1) / 2.0, 1.0]
    shape = tuple(int(np.ceil(gt_shape[a] * gt_vox[a] / v - 1e-6)) for a, v in zip(axes, voxel_mm))
    aff = np.zeros((4, 4))
    aff[3, 3] = 1.0
    for col, (a, v) in enumerate(zip(axes, voxel_mm)):
        aff[a, col] = v
    aff[:3, 3] = centre[:3] - aff[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return shape, aff


def simulate_stacks(hf_ras, hf_affine, psf_sigma=0.5, noise_sigma=0.04, seed=0, voxel_mm=STACK_VOXEL_MM) -> dict:
    """sim-lf-v2: three thick-slice stacks (``axi`` the reference, ``cor``, ``sag``) of an RAS+ HF volume,
    the later two seeing the head moved by a random rigid transform.

    Returns ``{"gt", "gt_affine", "stacks": [{"name", "lf", "affine", "motion"}]}``; ``motion`` is the
    4 x 4 world transform the stack saw the head moved by (identity for the reference); the stack's
    ``affine`` is its nominal position. ``voxel_mm`` other than the protocol's is for small tests.
    """
    from scipy.ndimage import gaussian_filter, map_coordinates

    hf = np.asarray(hf_ras, dtype=np.float32)
    if hf.ndim == 4:
        hf = hf[..., 0]
    if hf.ndim != 3:
        raise InvalidInputError(f"a 3D volume is needed, got shape {hf.shape}")
    gt = normalise_ground_truth(hf)
    gt_affine = np.asarray(hf_affine, dtype=float)
    centre = (gt_affine @ np.r_[(np.asarray(gt.shape) - 1) / 2.0, 1.0])[:3]
    rng = np.random.default_rng(seed)
    stacks = []
    for i, (name, axes) in enumerate(STACKS.items()):
        motion = np.eye(4)
        if i > 0:
            rotvec = rng.uniform(-1, 1, 3) * np.deg2rad(MAX_ROTATION_DEG) / np.sqrt(3)
            motion = rigid_about(rotvec, rng.uniform(-MAX_TRANSLATION_MM, MAX_TRANSLATION_MM, 3), centre)
        shape, aff = stack_affine(axes, gt.shape, gt_affine, voxel_mm)
        # the head moved by ``motion``: stack voxel -> world -> (motion^-1) -> GT voxel
        to_gt = np.linalg.inv(gt_affine) @ np.linalg.inv(motion) @ aff
        index = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), 0).reshape(3, -1)
        lf = np.zeros(int(np.prod(shape)))
        offsets = [(np.arange(n) + 0.5) / n - 0.5 for n in STACK_SAMPLES]
        for du in offsets[0]:
            for dv in offsets[1]:
                for ds in offsets[2]:
                    pts = to_gt[:3, :3] @ (index + np.array([[du], [dv], [ds]])) + to_gt[:3, 3:]
                    lf += map_coordinates(gt, pts, order=1, mode="constant", cval=0.0)
        lf = lf.reshape(shape) / np.prod(STACK_SAMPLES)
        lf = gaussian_filter(lf, (psf_sigma, psf_sigma, 0), mode="nearest")
        lf = np.clip(lf + rng.normal(0.0, noise_sigma, lf.shape), 0, None).astype(np.float32)
        stacks.append({"name": name, "lf": lf, "affine": aff, "motion": motion})
    return {"gt": gt, "gt_affine": gt_affine, "stacks": stacks}
