"""SynthSeg's input preparation, reimplemented in numpy/scipy, plus a head crop to save memory.

As SynthSeg's ``preprocess``: resample to 1 mm when any voxel size is off by more than
0.05 mm (Gaussian pre-filter of sigma 0.25/factor when downsampling, then trilinear
sampling on a grid that keeps the field of view centred), reorient the voxel axes to RAS by
permutations and flips only, rescale intensities to [0, 1] between the 0.5th and 99.5th
percentiles, and pad to a multiple of 32 centred. The percentiles are taken on the whole
volume, as SynthSeg does without ``--crop``; the head crop comes after them so it does not
change the intensity scaling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .errors import InvalidImageError

TARGET_RES = 1.0
RES_TOLERANCE = 0.05
PAD_MULTIPLE = 32  # 2 ** n_levels in SynthSeg (5 levels)
MIN_PAD = 128  # SynthSeg's padding floor when it does not crop
PERCENTILES = (0.5, 99.5)


def as_volume(image) -> np.ndarray:
    """A finite 3D float32 array (a 4D image with one volume is accepted, as SynthSeg does)."""
    data = np.asarray(image)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InvalidImageError(f"SynthSeg segments 3D images; got shape {data.shape}")
    if min(data.shape) < 2:
        raise InvalidImageError(f"image too small to segment: shape {data.shape}")
    data = data.astype(np.float32, copy=False)
    if not np.all(np.isfinite(data)):
        raise InvalidImageError("image contains NaN or infinite values")
    return data


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def needs_resampling(affine: np.ndarray) -> bool:
    res = voxel_sizes(affine)
    return bool(np.any(np.abs(res - TARGET_RES) > RES_TOLERANCE))


def _sample_positions(n: int, factor: float) -> np.ndarray:
    """Old-grid coordinates of the new voxels (SynthSeg's ``resample_volume`` grid), clamped."""
    start = -(factor - 1) / (2 * factor)
    step = 1.0 / factor
    stop = start + step * np.ceil(n * factor)
    return np.clip(np.arange(start, stop, step), 0, n - 1)


def _interp_axis(volume: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    n = volume.shape[axis]
    if n == 1:
        return np.repeat(volume, len(positions), axis=axis)
    lower = np.clip(np.floor(positions).astype(np.int64), 0, n - 2)
    weight = (positions - lower).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = -1
    weight = weight.reshape(shape)
    a = np.take(volume, lower, axis=axis)
    b = np.take(volume, lower + 1, axis=axis)
    return a * (1 - weight) + b * weight


def resample_to_1mm(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SynthSeg's ``resample_volume`` to 1 mm: returns the new volume and its affine.

    Trilinear interpolation on a tensor grid is separable, so it is done one axis at a time.
    """
    affine = np.asarray(affine, dtype=np.float64)
    factor = voxel_sizes(affine) / TARGET_RES
    sigmas = np.where(factor > 1, 0.0, 0.25 / factor)
    out = ndimage.gaussian_filter(volume, sigmas) if np.any(sigmas > 0) else volume
    for axis in range(3):
        out = _interp_axis(out, _sample_positions(volume.shape[axis], factor[axis]), axis)
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] / factor
    new_affine[:3, 3] = affine[:3, 3] - new_affine[:3, :3] @ (0.5 * (factor - 1))
    return out.astype(np.float32, copy=False), new_affine


def ras_axes(affine: np.ndarray) -> np.ndarray:
    """For each world axis (R, A, S), the voxel axis closest to it (SynthSeg's ``get_ras_axes``)."""
    axes = np.argmax(np.abs(np.linalg.inv(affine)[:3, :3]), axis=0)
    for i in range(3):
        if i not in axes:  # oblique by ~45 degrees: give the duplicated axis the missing one
            values, counts = np.unique(axes, return_counts=True)
            axes[np.where(axes == values[np.argmax(counts)])[0][-1]] = i
    return axes


@dataclass(frozen=True)
class Orientation:
    """Axis permutation and flips that bring a volume to RAS voxel order (no interpolation)."""

    perm: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @classmethod
    def from_affine(cls, affine: np.ndarray) -> "Orientation":
        perm = ras_axes(affine)
        flips = tuple(bool(affine[i, perm[i]] < 0) for i in range(3))
        return cls(tuple(int(p) for p in perm), flips)

    def apply(self, volume: np.ndarray) -> np.ndarray:
        out = np.transpose(volume, self.perm + tuple(range(3, volume.ndim)))
        for axis, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis)
        return np.ascontiguousarray(out)

    def invert(self, volume: np.ndarray) -> np.ndarray:
        out = volume
        for axis, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis)
        inverse = tuple(int(i) for i in np.argsort(self.perm))
        return np.ascontiguousarray(np.transpose(out, inverse + tuple(range(3, volume.ndim))))


def rescale_intensities(volume: np.ndarray) -> np.ndarray:
    """Linear map of the 0.5th..99.5th percentiles to [0, 1], clipped (float64 maths, float32 out)."""
    lo, hi = np.percentile(volume, PERCENTILES)
    if hi == lo:
        return np.zeros_like(volume, dtype=np.float32)
    out = (np.clip(volume.astype(np.float64), lo, hi) - lo) / (hi - lo)
    return out.astype(np.float32)


@dataclass(frozen=True)
class Window:
    """The box fed to the network, in voxel indices of the volume; it may stick out (zero padding)."""

    start: tuple[int, int, int]
    shape: tuple[int, int, int]

    def inside(self, volume_shape) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """Slices of the part inside the volume: (in volume coordinates, in window coordinates)."""
        vol, win = [], []
        for s, n, size in zip(self.start, self.shape, volume_shape):
            a, b = max(s, 0), min(s + n, size)
            vol.append(slice(a, b))
            win.append(slice(a - s, b - s))
        return tuple(vol), tuple(win)

    def extract(self, volume: np.ndarray) -> np.ndarray:
        out = np.zeros(self.shape, dtype=np.float32)
        vol, win = self.inside(volume.shape)
        out[win] = volume[vol]
        return out


def _round_up(n: int, multiple: int) -> int:
    return int(np.ceil(n / multiple) * multiple)


def _padded(start: np.ndarray, stop: np.ndarray) -> Window:
    """SynthSeg's padding of a crop ``[start, stop)``: centred, to a multiple of 32, at least 128."""
    size = stop - start
    padded = np.maximum([_round_up(n, PAD_MULTIPLE) for n in size], MIN_PAD)
    return Window(tuple(int(v) for v in start - (padded - size) // 2), tuple(int(v) for v in padded))


def full_window(shape) -> Window:
    """SynthSeg's default (no cropping): the whole volume, padded."""
    return _padded(np.zeros(3, dtype=np.int64), np.asarray(shape, dtype=np.int64))


def _box_window(mask: np.ndarray, margin: int = 0) -> Window:
    """``mri_synthseg --autocrop`` geometry around ``mask``: its bounding box (+ margin) + 2, rounded up
    to a multiple of 32 around it, clipped to the volume, then padded as usual."""
    if not mask.any():
        return full_window(mask.shape)
    shape = np.asarray(mask.shape, dtype=np.int64)
    lo = np.array([np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != i)))[0] for i in range(3)])
    hi = np.array([np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != i)))[-1] for i in range(3)])
    lo, hi = lo - margin, hi + margin
    extent = hi - lo + 2
    crop = np.array([_round_up(n, PAD_MULTIPLE) for n in extent])
    start = np.maximum(lo - (crop - extent) // 2, 0)
    stop = np.minimum(start + crop, shape)
    return _padded(start, stop)


def autocrop_window(rescaled: np.ndarray) -> Window:
    """Exactly ``mri_synthseg --autocrop``: the box of all voxels above the 0.5th percentile."""
    return _box_window(rescaled > 0)


def head_window(rescaled: np.ndarray, margin: int = 8, threshold: float = 0.1, sigma: float = 2.0) -> Window:
    """``--autocrop`` geometry around the head only: the largest blob of the smoothed image above 10 %
    of the intensity range, plus a margin, so background noise (common at low field) cannot
    stretch the box to the whole field of view.
    """
    mask = ndimage.gaussian_filter(rescaled, sigma) > threshold
    components, n = ndimage.label(mask)
    if n > 1:
        mask = components == (np.argmax(np.bincount(components.ravel())[1:]) + 1)
    del components
    return _box_window(mask, margin)


def nearest_to_grid(labels: np.ndarray, affine_src: np.ndarray, shape_dst, affine_dst: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling of a label map onto another grid (zero outside the source).

    When the grids differ by per-axis scale and shift only (always the case between an image and
    its SynthSeg 1 mm version), the lookup is separable and needs no coordinate arrays.
    Ties (a target centre exactly between two source centres) go to the higher index.
    """
    m = np.linalg.solve(affine_src, affine_dst)
    if np.allclose(m[:3, :3], np.diag(np.diag(m[:3, :3])), atol=1e-6):
        index = []
        for axis in range(3):
            c = m[axis, axis] * np.arange(shape_dst[axis]) + m[axis, 3]
            i = np.floor(c + 0.5 + 1e-6).astype(np.int64)
            index.append(i)
        valid = [(i >= 0) & (i < labels.shape[a]) for a, i in enumerate(index)]
        clipped = [np.clip(i, 0, labels.shape[a] - 1) for a, i in enumerate(index)]
        out = labels[np.ix_(*clipped)]
        out = out * (valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :])
        return out.astype(labels.dtype, copy=False)
    grid = np.indices(tuple(shape_dst), dtype=np.float32).reshape(3, -1)
    coords = m[:3, :3].astype(np.float32) @ grid + m[:3, 3:4].astype(np.float32)
    return ndimage.map_coordinates(labels, coords, order=0, mode="constant", cval=0).reshape(shape_dst)
