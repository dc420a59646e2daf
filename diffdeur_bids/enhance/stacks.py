"""One thick-slice stack seen from the output grid: the degradation operator of a fused reconstruction.

Stack ``j`` (its own shape and affine, in any orientation) sees the head moved by a rigid ``T_j``
(``rigid.py``): the stack voxel at world point ``w`` reads the volume at ``T_j^-1 w``. Its
operator is

    A_j x = PSF_j( L_j( x sampled at the stack's sub-voxel points ) )

where the sub-voxel points split every stack voxel into ``k`` points per axis (``k`` per axis at
least the voxel's size over the output's), ``L_j`` is their mean (the box profile along all three
axes of the stack, in its own orientation) and ``PSF_j`` the in-plane Gaussian on the stack's
grid (none across thick slices). ``x`` is the output-grid image, read between its voxel centres
by trilinear interpolation (its edge voxels extended outwards): the operator is exact for that
continuous image. The adjoint is the transposes in reverse order: the degradation's, then the
interpolation's (``grids.sample_points_adjoint``); ``tests/test_stacks.py`` checks the dot product. Through
autograd the operator also gives the gradient with respect to the six motion parameters, for
refining them during the fit.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .forward import Degradation
from .grids import AlignedUpsampling, Grid, half_pixel_scales, sample_points, sample_points_adjoint, subdivided_grid, voxel_sizes
from .rigid import rigid_matrix

THICK_RATIO = 1.5  # an axis whose voxel is this many times the finest is a slice axis: no PSF across it

_XYZ = np.eye(4)[[2, 1, 0, 3]]  # (i, j, k, 1) <-> (x, y, z, 1) of grid_sample (its x runs along the last axis)


def _to_normalised(shape) -> np.ndarray:
    """Voxel index -> grid_sample's [-1, 1] coordinates (align_corners=True), in index order."""
    m = np.eye(4)
    for axis, n in enumerate(shape):
        m[axis, axis] = 2.0 / max(n - 1, 1)
        m[axis, 3] = -1.0
    return m


def sub_voxels(voxel_mm, out_voxel_mm) -> tuple[int, int, int]:
    """Points per stack voxel along each of its axes: at least as fine as the output grid."""
    return tuple(int(max(1, np.ceil(v / o - 1e-3))) for v, o in zip(voxel_mm, out_voxel_mm))


class StackOperator:
    """``A_j``: from the output-grid image to one stack's voxels, through the stack's motion ``params``."""

    def __init__(self, out_grid: Grid, shape, affine, psf_sigma: float, centre, device, samples=None):
        self.shape = tuple(int(n) for n in shape)
        self.affine = np.asarray(affine, dtype=float)
        vox = voxel_sizes(self.affine)
        self.k = tuple(samples) if samples is not None else sub_voxels(vox, voxel_sizes(out_grid.affine))
        self.psf_sigma = psf_sigma
        self.in_plane = vox <= THICK_RATIO * vox.min()
        self.degradation = Degradation(self.k, [psf_sigma if flat else 0.0 for flat in self.in_plane])
        self.fine = subdivided_grid(self.shape, self.affine, self.k)
        self.out_grid = out_grid
        self.out_shape = tuple(out_grid.shape)
        self.centre = np.asarray(centre, dtype=float)
        self.device = device
        self.params = torch.zeros(6, dtype=torch.float64)  # rotation vector (degrees), translation (mm)
        # grid_sample's coordinates: fine-grid [-1, 1] -> world (before the motion), world -> output [-1, 1] (after)
        self._before = torch.from_numpy(self.fine.affine @ np.linalg.inv(_to_normalised(self.fine.shape)) @ _XYZ)
        self._after = torch.from_numpy(_XYZ @ _to_normalised(self.out_shape) @ np.linalg.inv(out_grid.affine))
        self._grid_cache = (None, None)  # (motion, sample points): the points are reused while the motion holds
        scales = self._half_pixel_scales(out_grid)
        self._aligned = None if scales is None else AlignedUpsampling(self.out_shape, self.fine.shape, scales)

    def coarse(self) -> "StackOperator":
        """The same stack with one point per voxel in-plane (the box kept across thick slices): for comparing
        images blurred in-plane by a voxel or more, as registration's coarse levels do, at a fraction of the cost."""
        samples = [1 if flat else k for flat, k in zip(self.in_plane, self.k)]
        twin = StackOperator(self.out_grid, self.shape, self.affine, self.psf_sigma, self.centre, self.device, samples)
        twin.params = self.params
        return twin

    def motion(self) -> np.ndarray:
        """The stack's current rigid transform (4 x 4, world mm)."""
        return rigid_matrix(self.params.detach(), self.centre).numpy()

    def _theta(self) -> torch.Tensor:
        t = rigid_matrix(self.params, self.centre)
        r, shift = t[:3, :3], t[:3, 3]
        inverse = torch.cat([torch.cat([r.T, (-r.T @ shift).unsqueeze(1)], 1), t[3:]], 0)
        return (self._after @ inverse @ self._before)[:3].float().to(self.device)[None]

    def _half_pixel_scales(self, out_grid: Grid) -> list[float] | None:
        """Unmoved, do the sub-voxel points lie on the output grid's axes by torch's half-pixel rule? Then the
        scales with which trilinear upsampling reads them (as the reference stack, never moved, is read)."""
        to_out = np.linalg.inv(out_grid.affine) @ self.fine.affine
        d = np.diag(to_out[:3, :3])
        if not np.allclose(to_out[:3, :3], np.diag(d), atol=1e-6):
            return None
        return half_pixel_scales(d, to_out[:3, 3])

    def _upsampling(self) -> bool:
        return self._aligned is not None and not self.params.requires_grad and not bool(self.params.any())

    def _points(self) -> torch.Tensor:
        """The sub-voxel points in grid_sample's coordinates of the output grid; differentiable in the
        motion while it is being refined, else computed once per motion."""
        if self.params.requires_grad:
            return F.affine_grid(self._theta(), (1, 1, *self.fine.shape), align_corners=True)
        motion, points = self._grid_cache
        if motion is None or not torch.equal(motion, self.params):
            points = F.affine_grid(self._theta(), (1, 1, *self.fine.shape), align_corners=True)
            self._grid_cache = (self.params.clone(), points)
        return points

    def sample(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` at the stack's sub-voxel points (the fine grid ``self.fine``)."""
        if self._upsampling():  # the same values by a separable kernel, several times faster than grid_sample
            return self._aligned(x)
        return sample_points(x, self._points())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.degradation(self.sample(x))

    def to_output(self, fine_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """An image on the stack's fine grid read at the output voxels through the motion (trilinear), and
        where the stack covers them (1 inside its field of view, 0 outside, where the edge is replicated)."""
        m = _XYZ @ _to_normalised(self.fine.shape) @ np.linalg.inv(self.fine.affine) @ self.motion() \
            @ self.out_grid.affine @ np.linalg.inv(_to_normalised(self.out_shape)) @ _XYZ
        theta = torch.from_numpy(m[:3]).float().to(self.device)[None]
        points = F.affine_grid(theta, (1, 1, *self.out_shape), align_corners=True)
        inside = (points.abs() <= 1 + 1e-4).all(-1)[0].to(fine_image.dtype)
        return sample_points(fine_image, points), inside

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A_j^T y`` on the output grid (the operator is linear in ``x``)."""
        fine = self.degradation.adjoint(y)
        if self._upsampling():
            return self._aligned.adjoint(fine)
        return sample_points_adjoint(fine, self._points(), self.out_shape)
