"""Rigid registration of a stack to the current reconstruction, through the stack's own operator.

The stack's motion parameters (``StackOperator.params``) are fitted so that the reconstruction
seen through the stack, ``A_j(T) x``, correlates best with the stack's data ``y_j``: normalised
cross-correlation (the stacks share the contrast, not necessarily the intensity scale), coarse to
fine (both sides blurred in-plane by the same Gaussian, then less), by Adam on the six
parameters. The blurred levels see the stack through its coarse twin (``StackOperator.coarse``:
one point per voxel in-plane), the last, unblurred one through the exact operator. Comparing through ``A_j`` puts the reconstruction at the stack's resolution, so thick
slices and other orientations are compared like with like.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .forward import Degradation
from .grids import voxel_sizes
from .stacks import THICK_RATIO, StackOperator

LEVELS = ((2.0, 0.3, 25), (1.0, 0.1, 20), (0.0, 0.03, 15))  # (in-plane blur in stack voxels, step in deg/mm, iterations)


def ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12)


@dataclass
class Registration:
    """What registering one stack found: its similarity to the reconstruction and the residual's size."""

    ncc: float
    residual_rms: float   # of y_j - (gain A_j x + offset), in y's units
    gain: float
    detail: float         # NCC of the in-plane differences (edges), corrected for y's noise; see :func:`detail_ncc`


def _blur(op: StackOperator, sigma: float):
    if sigma <= 0:
        return lambda v: v
    in_plane = [sigma if kern is not None else 0.0 for kern in op.degradation.kernels]
    return Degradation((1, 1, 1), in_plane).blur


def detail_ncc(op: StackOperator, pred: torch.Tensor, y: torch.Tensor, noise_sigma: float = 0.0) -> float:
    """How well ``pred`` has ``y``'s edges: the NCC of their first differences along the stack's in-plane
    axes (averaged), with the share of ``y``'s difference variance that is noise (``2 sigma^2``) taken out.

    The head's outline and brightness make up most of a stack's variance, and another head, or this
    one misplaced, still matches them once registered; the edges inside the head do not.
    """
    vox = voxel_sizes(op.affine)
    scores = []
    for axis in np.flatnonzero(vox <= THICK_RATIO * vox.min()):
        dp, dy = torch.diff(pred, dim=int(axis)), torch.diff(y, dim=int(axis))
        signal = float(dy.var()) - 2.0 * noise_sigma ** 2
        scores.append(float(ncc(dp, dy)) * (float(dy.var()) / max(signal, 1e-12 * float(dy.var()) + 1e-30)) ** 0.5)
    return min(float(np.mean(scores)), 1.0)


def fit_quality(op: StackOperator, x: torch.Tensor, y: torch.Tensor, noise_sigma: float = 0.0) -> Registration:
    """NCC, edge NCC and the residual of the best affine intensity fit of ``A_j x`` to ``y``, at the current motion."""
    with torch.no_grad():
        pred = op(x)
        a = torch.stack([pred.flatten(), torch.ones_like(pred).flatten()], 1).double()
        coef = torch.linalg.lstsq(a, y.flatten().double()[:, None]).solution[:, 0]
        resid = y.flatten().double() - a @ coef
        return Registration(float(ncc(pred, y)), float(resid.pow(2).mean().sqrt()), float(coef[0]),
                            detail_ncc(op, pred, y, noise_sigma))


def register(op: StackOperator, x: torch.Tensor, y: torch.Tensor, levels=LEVELS, noise_sigma: float = 0.0) -> Registration:
    """Fit ``op.params`` (from their current value) so that ``op(x)`` matches ``y``; returns the fit
    (``noise_sigma``, ``y``'s noise, for :func:`detail_ncc`)."""
    x = x.detach()
    params = op.params.detach().clone().requires_grad_(True)
    coarse = op.coarse() if any(sigma > 0 for sigma, _, _ in levels) else op
    for sigma, step, iters in levels:
        blur = _blur(op, sigma)
        target = blur(y)
        level_op = coarse if sigma > 0 else op
        optimiser = torch.optim.Adam([params], lr=step)
        for _ in range(iters):
            level_op.params = params
            loss = 1.0 - ncc(blur(level_op(x)), target)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    op.params = params.detach()
    return fit_quality(op, x, y, noise_sigma)
