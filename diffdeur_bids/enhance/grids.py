"""Voxel grids and the coordinates the INR is evaluated at.

Every grid here is described in the LF image's continuous voxel-index space: index ``p``
of the LF grid has centre ``p`` and the LF voxel spans ``[p - 0.5, p + 0.5]``. A grid that
subdivides the LF voxels by ``k`` has step ``1/k`` in that space; a grid of any other
resolution has step ``resolution / lf_voxel_size``. Working in LF index space makes
anisotropic voxels, non-integer factors and oblique affines the same case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

_INTEGER_TOL = 1e-3


@dataclass(frozen=True)
class Grid:
    """A regular grid inside the LF field of view: ``index = origin + step * j`` in LF index space."""

    shape: tuple[int, int, int]
    step: tuple[float, float, float]
    origin: tuple[float, float, float]
    lf_affine: np.ndarray

    @property
    def affine(self) -> np.ndarray:
        to_lf = np.diag(list(self.step) + [1.0])
        to_lf[:3, 3] = self.origin
        return self.lf_affine @ to_lf

    @property
    def subdivision(self) -> tuple[int, int, int] | None:
        """The integer factors when this grid splits each LF voxel into whole sub-voxels."""
        k = tuple(int(round(1 / s)) for s in self.step)
        aligned = all(abs(1 / s - kk) < _INTEGER_TOL and abs(o - (-0.5 + s / 2)) < 1e-6 for s, kk, o in zip(self.step, k, self.origin))
        return k if aligned else None

    def lf_coordinates(self) -> list[torch.Tensor]:
        """1D LF-index coordinates of the grid's voxel centres along each axis."""
        return [torch.tensor(o + s * np.arange(n), dtype=torch.float32) for o, s, n in zip(self.origin, self.step, self.shape)]


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def subdivided_grid(lf_shape, lf_affine, k) -> Grid:
    """The LF grid with each voxel split into ``k`` sub-voxels per axis (the sim-lf-v1 HF grid)."""
    k = tuple(int(v) for v in k)
    step = tuple(1.0 / v for v in k)
    origin = tuple(-0.5 + s / 2 for s in step)
    shape = tuple(int(n * v) for n, v in zip(lf_shape, k))
    return Grid(shape, step, origin, np.asarray(lf_affine, dtype=float))


def output_grid(lf_shape, lf_affine, resolution) -> Grid:
    """The grid at ``resolution`` mm that covers the LF field of view.

    When the LF voxel size is an integer multiple of the resolution along an axis, each LF
    voxel is split into whole sub-voxels, so the two grids line up exactly.
    """
    res = np.broadcast_to(np.asarray(resolution, dtype=float), (3,))
    vox = voxel_sizes(lf_affine)
    ratio = vox / res
    k = np.round(ratio)
    if np.all(np.abs(ratio - k) < _INTEGER_TOL * np.maximum(1, ratio)) and np.all(k >= 1):
        return subdivided_grid(lf_shape, lf_affine, k.astype(int))
    step = tuple(float(s) for s in res / vox)
    shape = tuple(int(np.ceil(n / s - 1e-6)) for n, s in zip(lf_shape, step))
    origin = tuple(-0.5 + s / 2 for s in step)
    return Grid(shape, step, origin, np.asarray(lf_affine, dtype=float))


def fidelity_grid(lf_shape, lf_affine, resolution) -> Grid:
    """Where the data term is evaluated: LF voxels split at least as finely as the output.

    A whole number of samples per LF voxel makes the box slice profile ``L_k`` an exact
    block mean on this grid, whatever the output grid is.
    """
    ratio = voxel_sizes(lf_affine) / np.broadcast_to(np.asarray(resolution, dtype=float), (3,))
    k = np.maximum(1, np.ceil(ratio - _INTEGER_TOL)).astype(int)
    return subdivided_grid(lf_shape, lf_affine, k)


def grid_in_space(grid: Grid, lf_affine) -> Grid:
    """The same grid described in the voxel-index space of another LF grid (axis-aligned with it)."""
    to_lf = np.linalg.inv(np.asarray(lf_affine, dtype=float)) @ grid.affine
    if not np.allclose(to_lf[:3, :3], np.diag(np.diag(to_lf[:3, :3])), atol=1e-6):
        raise ValueError("the grid is rotated relative to the LF grid")
    step = tuple(float(v) for v in np.diag(to_lf[:3, :3]))
    origin = tuple(float(v) for v in to_lf[:3, 3])
    return Grid(grid.shape, step, origin, np.asarray(lf_affine, dtype=float))


def resample(volume: torch.Tensor, src: Grid, dst: Grid, order: int = 1) -> torch.Tensor:
    """Values of ``volume`` (on ``src``) at the voxel centres of ``dst``; edges replicate.

    ``order`` 1 is trilinear (torch, any device); 3 is cubic B-spline (scipy, on the CPU).
    """
    axes = []
    for a_dst, o, s, n in zip(dst.lf_coordinates(), src.origin, src.step, src.shape):
        axes.append(((a_dst - o) / s).clamp(0, n - 1))  # in src voxel indices
    if order == 3:
        from scipy.ndimage import map_coordinates

        mesh = np.meshgrid(*[a.numpy() for a in axes], indexing="ij")
        out = map_coordinates(volume.detach().cpu().numpy(), mesh, order=3, mode="nearest", prefilter=True)
        return torch.from_numpy(out.astype(np.float32)).to(volume.device)
    norm = [(a.to(volume.device) / max(n - 1, 1)) * 2 - 1 for a, n in zip(axes, src.shape)]
    coords = torch.stack(torch.meshgrid(*norm, indexing="ij"), dim=-1).flip(-1)[None]
    return sample_points(volume, coords)


MAX_POINT_BATCHES = 4


def _point_batches(points: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``points`` ``(1, ..., 3)`` as ``(B, 1, 1, P / B, 3)``, padded with its last point, and the count ``P``.

    On the CPU, torch's 3D ``grid_sample`` (and its backward) parallelises over the batch only: one
    batch per thread spreads the points over the threads (the values are the same). At most
    ``MAX_POINT_BATCHES``: the backward kernel writes one volume per batch before they are summed."""
    flat = points.reshape(-1, 3)
    count = flat.shape[0]
    batches = torch.get_num_threads() if points.device.type == "cpu" else 1
    batches = max(1, min(batches, MAX_POINT_BATCHES, count))
    pad = -count % batches
    if pad:
        flat = torch.cat([flat, flat[-1:].expand(pad, 3)])
    return flat.reshape(batches, 1, 1, -1, 3), count


def sample_points(x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``x`` (3D) read trilinearly at ``points`` (``grid_sample``'s coordinates, align_corners, edges
    replicate), in the shape of ``points`` without its last axis; differentiable in both."""
    batched, count = _point_batches(points)
    out = F.grid_sample(x[None, None].expand(batched.shape[0], 1, *x.shape), batched, mode="bilinear",
                        padding_mode="border", align_corners=True)
    return out.reshape(-1)[:count].reshape(points.shape[1:-1])


def sample_points_adjoint(y: torch.Tensor, points: torch.Tensor, shape) -> torch.Tensor:
    """The transpose of :func:`sample_points` from a volume of ``shape``: torch's backward kernel of
    ``grid_sample`` alone, without the forward pass a vector-Jacobian product would repeat."""
    batched, count = _point_batches(points.detach())
    grad_out = F.pad(y.reshape(-1), (0, batched.shape[0] * batched.shape[3] - count)).reshape(batched.shape[:-1])
    zeros = torch.zeros((batched.shape[0], 1, *shape), device=y.device, dtype=y.dtype)  # only its shape matters
    grad, _ = torch.ops.aten.grid_sampler_3d_backward(grad_out[:, None], zeros, batched, 0, 1, True, [True, False])
    return grad.sum((0, 1))


def half_pixel_scales(scale, offset) -> list[float] | None:
    """Per axis, a map ``u = scale * j + offset`` from destination voxel ``j`` to source index ``u``. When it
    is torch's half-pixel rule (``u = scale (j + 0.5) - 0.5``), the scale factors with which
    :func:`upsample_trilinear` reads the source at exactly those points; else ``None``."""
    d, t = np.asarray(scale, dtype=float), np.asarray(offset, dtype=float)
    if np.all(d > 0) and np.allclose(t, (d - 1) / 2, atol=1e-6):
        return [float(1 / v) for v in d]
    return None


def upsample_trilinear(x: torch.Tensor, shape, scales) -> torch.Tensor:
    """``x`` ``(N, C, X, Y, Z)`` read trilinearly onto ``shape`` by the rule of :func:`half_pixel_scales`
    (edges replicate); torch's separable kernel, much faster than ``grid_sample`` and its backward pass."""
    return torch.ops.aten.upsample_trilinear3d(x, list(shape), False, *scales)


class AlignedUpsampling:
    """:func:`upsample_trilinear` from ``in_shape`` to ``shape`` (3D) with a fast transpose: torch's backward
    kernel of it runs on one thread (it parallelises over channels only, and there is one), while the
    separable 1D weights (torch's own) make the transpose three matrix products. Autograd uses that transpose."""

    def __init__(self, in_shape, shape, scales):
        self.in_shape, self.shape, self.scales = tuple(in_shape), tuple(shape), list(scales)
        self.weights = [None if n == m and s == 1.0 else torch.ops.aten.upsample_linear1d(torch.eye(n)[None], [m], False, s)[0]
                        for n, m, s in zip(self.in_shape, self.shape, self.scales)]  # (n, m): input i's weight at output j

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _Upsampling.apply(x, self)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        w0, w1, w2 = (w if w is None else w.to(y) for w in self.weights)
        if w2 is not None:
            y = y @ w2.T
        if w1 is not None:
            y = torch.matmul(w1, y)
        if w0 is not None:
            y = (w0 @ y.reshape(y.shape[0], -1)).reshape(w0.shape[0], *y.shape[1:])
        return y


class _Upsampling(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, up):
        ctx.up = up
        return upsample_trilinear(x[None, None], up.shape, up.scales)[0, 0]

    @staticmethod
    def backward(ctx, grad):
        return ctx.up.adjoint(grad), None


def lf_grid(lf_shape, lf_affine) -> Grid:
    return subdivided_grid(lf_shape, lf_affine, (1, 1, 1))
