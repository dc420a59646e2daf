"""The methods DiffDeuR is compared with, behind the same signature (``Problem -> image``).

LoHiResGAN is not here: it has no public weights.
"""

from __future__ import annotations

import numpy as np
import torch

from .alignment import align_and_fuse
from .errors import MissingDependencyError
from .forward import MIN_NOISE_SIGMA
from .grids import resample
from .hqs import karras_sigmas, sample_problem
from .inr import fit_inr, make_inr, make_optimizer, render
from .linalg import conjugate_gradient
from .problem import Problem

PROX_CG_ITERS = 8       # conjugate-gradient iterations of the closed-form fidelity step
DPS_STEP_SCALE = 0.5    # DPS step: mu * sqrt(number of data voxels) * this


def run_linear(p: Problem) -> torch.Tensor:
    """Trilinear interpolation of the LF scan onto the output grid."""
    x = resample(p.scan.y, p.scan.grid, p.out_grid, order=1)
    p.tick()
    return x


def run_cubic(p: Problem) -> torch.Tensor:
    """Cubic B-spline interpolation (scipy), clipped at zero like a magnitude image."""
    x = _cubic(p)
    p.tick()
    return x


def _cubic(p: Problem) -> torch.Tensor:
    return resample(p.scan.y, p.scan.grid, p.out_grid, order=3).clamp_min(0)


def run_cubic_bm3d(p: Problem) -> torch.Tensor:
    """Cubic interpolation, then BM3D on each axial slice (the ``bm3d`` package is non-commercial)."""
    try:
        import bm3d
    except ImportError as exc:
        raise MissingDependencyError(
            "method cubic_bm3d needs the optional 'bm3d' package (non-commercial licence): pip install 'diffdeur[bm3d]'"
        ) from exc
    up = _cubic(p).cpu().numpy()
    out = np.stack([bm3d.bm3d(up[..., i], sigma_psd=p.scan.noise_sigma) for i in range(up.shape[2])], axis=-1)
    p.tick()
    return torch.from_numpy(out.astype("float32")).to(p.device)


def run_inr(p: Problem) -> torch.Tensor:
    """INR fitted to the LF data alone through the degradation model (IREM-like: no learned prior);
    several stacks are aligned first (``alignment.py``) and fitted together."""
    s, obs = p.settings, p.reference
    if p.fused:
        align_and_fuse(p, [o.y for o in p.observations])
    inr = make_inr(obs.y.shape, obs.fid_grid, p.out_grid, p.device, init_value=float(obs.y.mean()))
    opt = make_optimizer(inr, s.inr_lr)
    fit_inr(inr, p.fidelity(), opt, s.inr_init_iters + s.steps * s.inr_iters)
    p.tick()
    return render(inr, p.out_grid)


def _solve_prox(p: Problem, z, rho, x0, iters=PROX_CG_ITERS):
    """Closed-form fidelity step by conjugate gradients: (A^T A / s^2 + rho) x = A^T y / s^2 + rho z."""
    obs = p.scan
    inv_var = 1.0 / max(obs.noise_sigma, MIN_NOISE_SIGMA) ** 2
    A = obs.operator
    b = A.adjoint(obs.y) * inv_var + rho * z
    return conjugate_gradient(lambda x: A.adjoint(A(x)) * inv_var + rho * x, b, x0, iters)


def run_prior_closed_form(p: Problem) -> torch.Tensor:
    """Ablation: the same HQS loop with an exact least-squares fidelity step instead of the INR."""
    s, obs = p.settings, p.scan
    start = resample(obs.y, obs.grid, obs.fid_grid, order=1)
    x0 = sample_problem(p, lambda z, sigma, previous: _solve_prox(p, z, s.mu / sigma**2, previous), start)
    return x0 if obs.fid_grid == p.out_grid else resample(x0, obs.fid_grid, p.out_grid)


def run_dps(p: Problem) -> torch.Tensor:
    """Diffusion posterior sampling (Chung et al. 2023) with the same prior, EDM Euler steps.

    Each step: ``x0 = D(x; sigma)``, gradient of ``||y - A x0||`` back through the prior,
    ``x <- x0 + (sigma'/sigma)(x - x0) - step * grad``.
    """
    s, obs = p.settings, p.scan
    if obs.fid_grid != p.out_grid:
        raise ValueError("DPS runs on grids that subdivide the LF voxels; choose an output resolution that divides the LF voxel size")
    A = obs.operator
    sigmas = karras_sigmas(s.dps_steps, 1.0, s.sigma_end) + [0.0]
    x = resample(obs.y, obs.grid, p.out_grid) + sigmas[0] * p.randn(p.out_grid.shape)
    x0 = x
    sigma_data2 = p.prior.sigma_data**2
    for i, sigma in enumerate(sigmas[:-1]):
        axis = i % 3
        x0 = p.denoise(x, sigma, axis)
        resid = A(x0) - obs.y
        norm = resid.pow(2).sum().sqrt().clamp_min(1e-8)
        grad_x0 = A.adjoint(resid) / norm
        grad_x = p.prior.denoise_vjp(x, sigma, axis, grad_x0, max_pixels=s.max_pixels)
        step = s.mu * (resid.numel() ** 0.5) * DPS_STEP_SCALE
        x = x0 + (sigmas[i + 1] / sigma) * (x - x0) - step * grad_x * (sigma**2 / (sigma**2 + sigma_data2))
        p.tick()
    return x0
