"""Where the DiffDeuR sampler starts: one prior step on the LF scan, then a damped data-consistency step.

The noise ``n`` of ``y = PSF(L_k(x)) + n`` is white on the LF grid, and the LF slices across
the thickest voxel axis look like the prior's training slices (the prior saw them at 2x its
native scale). So the prior removes the noise there, where it is most at home, before any
upsampling: ``z_y = D(y; sigma_n)``. The resolution loss is then nearly noise-free, and
cubic interpolation ``c`` of ``z_y`` is corrected towards data consistency by the
regularised least-squares step

    x = c + A^T (A A^T + lambda / K)^-1 (z_y - A c)        (K = voxels per LF voxel)

the minimiser of ``||x - c||^2 + (K / lambda) ||A x - z_y||^2``. ``lambda = 0`` projects
onto the denoised data exactly; larger values stay nearer ``c`` and amplify less of the noise
left in ``z_y`` (``start_damping``; its value is chosen in ``benchmarks/README.md``).

Several stacks (:func:`aligned_fused_start`): each is denoised on its own slices, then aligned
and combined by ``alignment.align_and_fuse``, the same minimisation through every operator; with
the learned upsampler, ``c`` is the mean of the stacks' own upsampled starts (each restores
across its own thick slices) rather than the reference's interpolation.
"""

from __future__ import annotations

import numpy as np
import torch

from .alignment import align_and_fuse
from .grids import resample, voxel_sizes
from .linalg import conjugate_gradient
from .problem import Observation, Problem
from .upsampler import upsample

PROJECTION_ITERS = 30


def denoise_lf(p: Problem, obs: Observation | None = None) -> torch.Tensor:
    """``D(y; sigma_n)`` on the LF slices across the thickest voxel axis (``y`` if noise-free)."""
    obs = obs or p.scan
    if p.prior is None or obs.noise_sigma < p.prior.sigma_min:
        return obs.y
    axis = int(np.argmax(voxel_sizes(obs.grid.lf_affine)))
    return p.denoise(obs.y, obs.noise_sigma, axis)


def damped_projection(operator, start: torch.Tensor, data: torch.Tensor, damping: float,
                      iters: int = PROJECTION_ITERS) -> torch.Tensor:
    """``start + A^T (A A^T + damping / K)^-1 (data - A start)``, by conjugate gradients."""
    eps = damping / float(np.prod(operator.k))
    u = conjugate_gradient(lambda v: operator(operator.adjoint(v)) + eps * v, data - operator(start), iters=iters)
    return start + operator.adjoint(u)


def projected_scan(p: Problem, z: torch.Tensor, grid, fine, operator) -> torch.Tensor:
    """A denoised scan ``z`` (on ``grid``) interpolated onto ``fine``, projected onto itself through ``operator``
    (``fine`` -> ``grid``), then upsampled when ``p.upsampler`` is set."""
    cubic = resample(z, grid, fine, order=3).clamp_min(0)
    x = damped_projection(operator, cubic, z, p.settings.start_damping)
    if p.upsampler is not None:  # trained on this projection's output; a second one would bring back its noise
        x = upsample(p.upsampler, x, fine.subdivision, p.settings.max_pixels).clamp_min(0)
    return x


def upsampled_stacks(p: Problem, zs: list[torch.Tensor]) -> torch.Tensor:
    """Every stack's own upsampled start (on its fine grid, across its own thick slices), on the output grid
    through its registered motion, averaged where each covers it."""
    total = torch.zeros(p.out_grid.shape, device=p.device)
    weight = torch.zeros_like(total)
    for obs, z in zip(p.observations, zs):
        op = obs.operator
        image, inside = op.to_output(projected_scan(p, z, obs.grid, op.fine, op.degradation))
        total += image * inside
        weight += inside
    return total / weight.clamp_min(1.0)


def aligned_fused_start(p: Problem) -> torch.Tensor:
    """Several stacks: denoise each on its own slices, align them, start from their joint data-consistent image
    (near the mean of their upsampled starts when ``p.upsampler`` is set)."""
    zs = [denoise_lf(p, obs) for obs in p.observations]
    return align_and_fuse(p, zs, (lambda: upsampled_stacks(p, zs)) if p.upsampler is not None else None)


def single_scan_start(p: Problem) -> torch.Tensor:
    """One scan's start on its fidelity grid: projected, then upsampled when ``p.upsampler`` is set."""
    obs = p.scan
    return projected_scan(p, denoise_lf(p), obs.grid, obs.fid_grid, obs.operator)


def on_output_grid(p: Problem, x: torch.Tensor) -> torch.Tensor:
    """One scan's image on its fidelity grid, on the output grid."""
    obs = p.scan
    return x if obs.fid_grid == p.out_grid else resample(x, obs.fid_grid, p.out_grid)


def upsampled_start(p: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """The upsampled start on the fidelity grid and on the output grid (one image for fused stacks, whose
    fidelity grid is the output grid), for an INR that corrects it."""
    if p.fused:
        x = aligned_fused_start(p)
        return x, x
    x = single_scan_start(p)
    return x, on_output_grid(p, x)


def data_consistent_start(p: Problem) -> torch.Tensor:
    """The start image on the output grid (DiffDeuR's INR is then fitted towards it)."""
    if p.fused:
        return aligned_fused_start(p)
    return on_output_grid(p, single_scan_start(p))


def run_start(p: Problem) -> torch.Tensor:
    """The start alone, as a method (an ablation: DiffDeuR without its sampler)."""
    x = data_consistent_start(p)
    p.tick()
    return x
