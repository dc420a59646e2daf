"""The implicit neural representation (INR) of the data-fidelity step.

A continuous function ``f(p)`` of LF index coordinates: multi-resolution dense feature grids
(trilinearly interpolated, Instant-NGP style but dense, which is faster than hashing on a
CPU) decoded by a small MLP. Being continuous, it renders on any grid: the fidelity grid
(where ``A`` is exact) and the output grid the user asked for.

A render is two parts: the grids' features interpolated onto the whole grid at once (one
trilinear resampling per level, whose backward pass is one fast kernel), then the MLP on those
features in chunks small enough that its activations stay in the CPU's cache (on a 1 M-voxel
chunk the same MLP runs several times slower, bound by memory traffic).

The fidelity objective is quadratic in the rendered images, so its gradient with respect to
them is closed form (``A^T`` is explicit). Fitting renders the image from the features with no
graph through the MLP, forms that gradient, then back-propagates it through the MLP chunk by
chunk into the features and from them, in one pass, into the grids.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .forward import MIN_NOISE_SIGMA
from .grids import Grid, half_pixel_scales, upsample_trilinear

MLP_CHUNK = 2**14  # voxels per MLP call (benchmarks/inr_speed.py; benchmarks/README.md, "Speed on full heads")


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
        i1 = (i0 + 1).clamp(max=level_n - 1)
        shape = [1] * h.dim()
        shape[axis] = -1
        return torch.lerp(h.index_select(axis, i0), h.index_select(axis, i1), w.view(shape))

    def _level_on_grid(self, h: torch.Tensor, grid: Grid) -> torch.Tensor:
        """One level's features ``(X, Y, Z, features)`` at ``grid``'s voxel centres."""
        # grid voxel j lies at LF index o + s j, level cell c at (c + 0.5) lf_n / level_n - 0.5
        per_lf = [level_n / lf_n for level_n, lf_n in zip(h.shape, self.lf_shape)]
        scales = half_pixel_scales([s * r for s, r in zip(grid.step, per_lf)],
                                   [(o + 0.5) * r - 0.5 for o, r in zip(grid.origin, per_lf)])
        if scales is None:  # a grid off torch's rule: three 1D interpolations
            for axis, coords in enumerate(grid.lf_coordinates()):
                h = self._lerp_axis(h, axis, coords.to(h.device), self.lf_shape[axis])
            return h
        if tuple(h.shape[:3]) == tuple(grid.shape) and all(abs(v - 1) < 1e-9 for v in scales):
            return h  # the level's own cells are the grid's voxels: nothing to interpolate
        # channels last as (1, C, X, Y, Z) in channels_last_3d layout: torch's fast path, no copy
        return upsample_trilinear(h.permute(3, 0, 1, 2)[None], grid.shape, scales)[0].permute(1, 2, 3, 0)

    def features(self, grid: Grid) -> torch.Tensor:
        """Every level's features at ``grid``'s voxel centres, ``(X, Y, Z, levels * features)``."""
        return torch.cat([self._level_on_grid(g, grid) for g in self.grids], dim=-1)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """The MLP on ``features`` (no autograd graph kept): the image ``(X, Y, Z)``."""
        flat = features.detach().reshape(-1, features.shape[-1])
        out = torch.empty(flat.shape[0], device=flat.device, dtype=flat.dtype)
        with torch.no_grad():
            for start in range(0, flat.shape[0], MLP_CHUNK):
                out[start:start + MLP_CHUNK] = self.mlp(flat[start:start + MLP_CHUNK])[:, 0]
        return out.view(features.shape[:-1])

    def backprop(self, features: torch.Tensor, image_grad: torch.Tensor) -> None:
        """Accumulate d(loss)/d(theta) given d(loss)/d(image) of ``decode(features)``."""
        flat = features.detach().reshape(-1, features.shape[-1])
        grad_flat = image_grad.reshape(-1)
        feature_grad = torch.empty_like(flat)
        for start in range(0, flat.shape[0], MLP_CHUNK):
            part = slice(start, start + MLP_CHUNK)
            chunk = flat[part].detach().requires_grad_(True)
            self.mlp(chunk)[:, 0].backward(grad_flat[part])
            feature_grad[part] = chunk.grad
        if features.requires_grad:
            features.backward(feature_grad.view(features.shape))


def render(inr: FeatureGridINR, grid: Grid, base: torch.Tensor | None = None) -> torch.Tensor:
    """The INR's image on ``grid`` (no autograd graph kept), on top of ``base`` when given."""
    with torch.no_grad():
        return render_on(inr.decode(inr.features(grid)), base)


def render_on(image: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
    """The INR's decoded ``image`` on top of ``base`` (itself when there is none)."""
    return image if base is None else image + base


class FidelityProblem:
    """``min_f ||A f - y||^2 / sigma_n^2 + rho * ||f - z||^2`` over the INR's parameters.

    ``A`` acts on the INR rendered on ``fid_grid``; the proximity term on ``out_grid``
    (they are the same grid, rendered once, when the output subdivides the LF voxels).
    With ``base`` (the same image on ``fid_grid`` and on ``out_grid``), ``f`` is that image
    plus the INR: the INR fits only a correction of it.
    """

    def __init__(self, y: torch.Tensor, operator, noise_sigma: float, fid_grid: Grid, out_grid: Grid,
                 base: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.y = y
        self.base_fid, self.base_out = base if base is not None else (None, None)
        self.A = operator
        self.noise_var = max(float(noise_sigma), MIN_NOISE_SIGMA) ** 2
        self.fid_grid, self.out_grid = fid_grid, out_grid
        self.same_grid = fid_grid == out_grid
        self.scale = 1.0 / y.numel()

    def step(self, inr: FeatureGridINR, z: torch.Tensor | None, rho: float) -> float:
        """One gradient evaluation (accumulated into ``.grad``); returns the objective."""
        features = inr.features(self.fid_grid)
        f_fid = render_on(inr.decode(features), self.base_fid)
        resid = self.A(f_fid) - self.y
        loss = float(resid.pow(2).sum()) / self.noise_var
        grad_fid = self.A.adjoint(resid) * (2 * self.scale / self.noise_var)
        prox = z is not None and rho > 0
        if prox and self.same_grid:
            diff = f_fid - z
            loss += rho * float(diff.pow(2).sum())
            grad_fid += diff * (2 * self.scale * rho)
        inr.backprop(features, grad_fid)
        del features, f_fid, grad_fid
        if prox and not self.same_grid:
            features = inr.features(self.out_grid)
            diff = render_on(inr.decode(features), self.base_out) - z
            loss += rho * float(diff.pow(2).sum())
            inr.backprop(features, diff * (2 * self.scale * rho))
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


def make_inr(lf_shape, fid_grid: Grid, out_grid: Grid, device, init_value: float = 0.0,
             correction: bool = False) -> FeatureGridINR:
    """The INR for ``fid_grid`` and ``out_grid``; ``correction``: it starts at exactly zero (a
    correction of a base image, ``FidelityProblem(base=...)``), not at ``init_value``."""
    finest = [max(a, b) for a, b in zip(fid_grid.shape, out_grid.shape)]
    inr = FeatureGridINR(lf_shape, finest, init_value=0.0 if correction else init_value).to(device)
    if correction:
        with torch.no_grad():
            inr.mlp[-1].weight.zero_()
    return inr


def make_optimizer(inr: FeatureGridINR, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam([{"params": inr.grids.parameters(), "lr": lr}, {"params": inr.mlp.parameters(), "lr": lr * 0.25}])
