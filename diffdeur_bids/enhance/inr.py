"""The implicit neural representation (INR) of the data-fidelity step.

A continuous function ``f(p)`` of LF index coordinates: multi-resolution dense feature grids
(trilinearly interpolated, Instant-NGP style but dense, which is faster than hashing on a
CPU) decoded by a small MLP. Being continuous, it renders on any grid: the fidelity grid
(where ``A`` is exact) and the output grid the user asked for.

The fidelity objective is quadratic in the rendered images, so its gradient with respect to
them is closed form (``A^T`` is explicit). Fitting renders without a graph, forms that
gradient, then back-propagates through the INR one slab at a time: memory stays bounded by
the slab size whatever the volume size.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .forward import MIN_NOISE_SIGMA
from .grids import Grid


class FeatureGridINR(nn.Module):
    """Dense multi-resolution feature grids + MLP; coordinates are LF voxel indices."""

    def __init__(self, lf_shape, finest_shape, levels: int = 4, features: int = 2, hidden: int = 16, init_value: float = 0.0):
        super().__init__()
        self.lf_shape = tuple(int(v) for v in lf_shape)
        self.grids = nn.ParameterList()
        for level in range(levels):
            shape = [max(2, int(round(n / 2**level))) for n in finest_shape]
            self.grids.append(nn.Parameter(1e-2 * torch.randn(*shape, features)))  # channels last
        self.mlp = nn.Sequential(nn.Linear(levels * features, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        with torch.no_grad():
            self.mlp[-1].bias.fill_(init_value)

    @staticmethod
    def _lerp_axis(h: torch.Tensor, axis: int, coords: torch.Tensor, lf_n: int) -> torch.Tensor:
        """Linear interpolation of ``h`` along one axis at LF index ``coords`` (edges clamp)."""
        level_n = h.shape[axis]
        # LF voxel p spans [p - 0.5, p + 0.5]; level cells tile the same field of view
        pos = ((coords + 0.5) / lf_n * level_n - 0.5).clamp(0, level_n - 1)
        i0 = pos.floor().long().clamp(max=max(level_n - 2, 0))
        w = pos - i0
        if len(coords) == level_n and bool((w.abs() < 1e-6).all()) and bool((i0 == torch.arange(level_n, device=i0.device)).all()):
            return h  # the grid's own voxel centres: nothing to interpolate
        i1 = (i0 + 1).clamp(max=level_n - 1)
        shape = [1] * h.dim()
        shape[axis] = -1
        return torch.lerp(h.index_select(axis, i0), h.index_select(axis, i1), w.view(shape))

    def render_axes(self, axes: list[torch.Tensor]) -> torch.Tensor:
        """Values on the separable grid ``axes[0] x axes[1] x axes[2]`` (LF index coordinates).

        Trilinear interpolation onto a tensor-product grid is three 1D linear interpolations,
        one per axis: two gathers and a lerp each, O(voxels), and much faster on a CPU than
        ``grid_sample`` (whose backward pass dominates otherwise).
        """
        feats = []
        for g in self.grids:
            h = g
            for axis, coords in enumerate(axes):
                h = self._lerp_axis(h, axis, coords, self.lf_shape[axis])
            feats.append(h)
        return self.mlp(torch.cat(feats, dim=-1))[..., 0]


def _slabs(n: int, slab: int):
    for start in range(0, n, slab):
        yield slice(start, min(n, start + slab))


def render(inr: FeatureGridINR, grid: Grid, device, slab_voxels: int = 2**20) -> torch.Tensor:
    """Render the INR on a grid in slabs along the first axis (no autograd graph kept)."""
    axes = [a.to(device) for a in grid.lf_coordinates()]
    per_slice = grid.shape[1] * grid.shape[2]
    slab = max(1, slab_voxels // per_slice)
    out = torch.empty(grid.shape, device=device)
    with torch.no_grad():
        for s in _slabs(grid.shape[0], slab):
            out[s] = inr.render_axes([axes[0][s], axes[1], axes[2]])
    return out


def backprop_image_grad(inr: FeatureGridINR, grid: Grid, image_grad: torch.Tensor, slab_voxels: int = 2**20) -> None:
    """Accumulate d(loss)/d(theta) given d(loss)/d(rendered image), slab by slab."""
    device = image_grad.device
    axes = [a.to(device) for a in grid.lf_coordinates()]
    slab = max(1, slab_voxels // (grid.shape[1] * grid.shape[2]))
    for s in _slabs(grid.shape[0], slab):
        vals = inr.render_axes([axes[0][s], axes[1], axes[2]])
        vals.backward(image_grad[s])


class FidelityProblem:
    """``min_f ||A f - y||^2 / sigma_n^2 + rho * ||f - z||^2`` over the INR's parameters.

    ``A`` acts on the INR rendered on ``fid_grid``; the proximity term on ``out_grid``
    (they are the same grid, rendered once, when the output subdivides the LF voxels).
    """

    def __init__(self, y: torch.Tensor, operator, noise_sigma: float, fid_grid: Grid, out_grid: Grid, slab_voxels: int = 2**20):
        self.y = y
        self.A = operator
        self.noise_var = max(float(noise_sigma), MIN_NOISE_SIGMA) ** 2
        self.fid_grid, self.out_grid = fid_grid, out_grid
        self.same_grid = fid_grid == out_grid
        self.scale = 1.0 / y.numel()
        self.slab_voxels = slab_voxels

    def step(self, inr: FeatureGridINR, z: torch.Tensor | None, rho: float) -> float:
        """One gradient evaluation (accumulated into ``.grad``); returns the objective."""
        device = self.y.device
        f_fid = render(inr, self.fid_grid, device, self.slab_voxels)
        resid = self.A(f_fid) - self.y
        loss = float(resid.pow(2).sum()) / self.noise_var
        grad_fid = self.A.adjoint(resid) * (2 * self.scale / self.noise_var)
        if z is not None and rho > 0:
            f_out = f_fid if self.same_grid else render(inr, self.out_grid, device, self.slab_voxels)
            diff = f_out - z
            loss += rho * float(diff.pow(2).sum())
            grad_out = diff * (2 * self.scale * rho)
            if self.same_grid:
                grad_fid = grad_fid + grad_out
            else:
                backprop_image_grad(inr, self.out_grid, grad_out, self.slab_voxels)
        backprop_image_grad(inr, self.fid_grid, grad_fid, self.slab_voxels)
        return loss * self.scale


def fit_inr(
    inr: FeatureGridINR,
    problem: FidelityProblem,
    optimizer: torch.optim.Optimizer,
    iters: int,
    z: torch.Tensor | None = None,
    rho: float = 0.0,
    on_iter: Callable[[int, float], None] | None = None,
) -> float:
    """Run ``iters`` optimiser steps on the fidelity problem; returns the last objective."""
    loss = float("nan")
    for it in range(iters):
        optimizer.zero_grad(set_to_none=True)
        loss = problem.step(inr, z, rho)
        optimizer.step()
        if on_iter:
            on_iter(it, loss)
    return loss


def make_inr(lf_shape, fid_grid: Grid, out_grid: Grid, device, init_value: float = 0.0) -> FeatureGridINR:
    finest = [max(a, b) for a, b in zip(fid_grid.shape, out_grid.shape)]
    return FeatureGridINR(lf_shape, finest, init_value=init_value).to(device)


def make_optimizer(inr: FeatureGridINR, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam([{"params": inr.grids.parameters(), "lr": lr}, {"params": inr.mlp.parameters(), "lr": lr * 0.25}])
