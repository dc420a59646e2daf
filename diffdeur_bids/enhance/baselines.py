"""The methods DiffDeuR is compared with, behind the solver's signature (``Problem -> image``).

LoHiResGAN is not here: it has no public weights.
"""

from __future__ import annotations

import torch

from .errors import MissingDependencyError
from .grids import resample
from .inr import fit_inr, make_inr, make_optimizer, render
from .linalg import conjugate_gradient
from .prior import denoise_slices, karras_sigmas


def run_linear(p) -> torch.Tensor:
    """Trilinear interpolation of the LF scan onto the output grid."""
    return resample(p.y, p.lf_grid, p.out_grid, order=1)


def run_cubic(p) -> torch.Tensor:
    """Cubic B-spline interpolation (scipy), clipped at zero like a magnitude image."""
    return resample(p.y, p.lf_grid, p.out_grid, order=3).clamp_min(0)


def run_cubic_bm3d(p) -> torch.Tensor:
    """Cubic interpolation, then BM3D on each axial slice (the ``bm3d`` package is non-commercial)."""
    try:
        import bm3d
    except ImportError as exc:
        raise MissingDependencyError(
            "method cubic_bm3d needs the optional 'bm3d' package (non-commercial licence): pip install 'diffdeur[bm3d]'"
        ) from exc
    import numpy as np

    up = run_cubic(p).cpu().numpy()
    out = np.stack([bm3d.bm3d(up[..., i], sigma_psd=p.noise_sigma) for i in range(up.shape[2])], axis=-1)
    return torch.from_numpy(out.astype("float32")).to(p.device)


def run_inr(p) -> torch.Tensor:
    """INR fitted to the LF data alone through the degradation model (IREM-like: no learned prior)."""
    s = p.settings
    inr = make_inr(p.y.shape, p.fid_grid, p.out_grid, p.device, init_value=float(p.y.mean()))
    opt = make_optimizer(inr, s.inr_lr)
    fit_inr(inr, p.fidelity(), opt, s.inr_init_iters + s.steps * s.inr_iters)
    p.tick()
    return render(inr, p.out_grid, p.device)


def _on_fid_grid(p, volume):
    return volume if p.fid_grid == p.out_grid else resample(volume, p.fid_grid, p.out_grid)


def _solve_prox(p, z, rho, x0, iters=8):
    """Closed-form fidelity step by conjugate gradients: (A^T A / s^2 + rho) x = A^T y / s^2 + rho z."""
    inv_var = 1.0 / max(p.noise_sigma, 1e-3) ** 2
    A = p.operator
    b = A.adjoint(p.y) * inv_var + rho * z
    return conjugate_gradient(lambda x: A.adjoint(A(x)) * inv_var + rho * x, b, x0, iters)


def run_prior_closed_form(p) -> torch.Tensor:
    """Ablation: the same HQS loop with an exact least-squares fidelity step instead of the INR."""
    from .solver import hqs_sample

    s = p.settings
    start = resample(p.y, p.lf_grid, p.fid_grid, order=1)
    x0 = hqs_sample(p, start, lambda z, sigma, previous: _solve_prox(p, z, s.mu / sigma**2, previous))
    return _on_fid_grid(p, x0)


def _denoise_with_grad(prior, x, sigma, axis, grad_out, max_pixels):
    """Tweedie estimate and the vector-Jacobian product ``grad_out^T dD/dx``, slice batch by batch."""
    from .prior import _pad_to_multiple

    slices = x.movedim(axis, 0)
    g_slices = grad_out.movedim(axis, 0)
    padded, (h, w) = _pad_to_multiple(slices.unsqueeze(1), prior.config.size_multiple)
    batch = max(1, max_pixels // (padded.shape[-1] * padded.shape[-2]) // 4)
    sig = torch.tensor([sigma], device=x.device)
    vjp = torch.zeros_like(slices)
    for start in range(0, slices.shape[0], batch):
        xb = slices[start : start + batch].detach().unsqueeze(1).requires_grad_(True)
        xp, _ = _pad_to_multiple(xb, prior.config.size_multiple)
        out = prior(xp, sig)[:, :, :h, :w]
        (gb,) = torch.autograd.grad(out, xb, g_slices[start : start + batch].unsqueeze(1))
        vjp[start : start + batch] = gb[:, 0]
    return vjp.movedim(0, axis)


def run_dps(p) -> torch.Tensor:
    """Diffusion posterior sampling (Chung et al. 2023) with the same prior, EDM Euler steps.

    Each step: ``x0 = D(x; sigma)``, gradient of ``||y - A x0||`` back through the prior,
    ``x <- x0 + (sigma'/sigma)(x - x0) - step * grad``.
    """
    s = p.settings
    if p.fid_grid != p.out_grid:
        raise ValueError("DPS runs on grids that subdivide the LF voxels; choose an output resolution that divides the LF voxel size")
    A = p.operator
    sigmas = karras_sigmas(s.dps_steps, 1.0, s.sigma_end) + [0.0]
    x = resample(p.y, p.lf_grid, p.out_grid) + sigmas[0] * p.randn(p.out_grid.shape)
    x0 = x
    for i, sigma in enumerate(sigmas[:-1]):
        axis = i % 3
        with torch.no_grad():
            x0 = denoise_slices(p.prior, x.movedim(axis, 0), sigma, s.max_pixels).movedim(0, axis)
        resid = A(x0) - p.y
        norm = resid.pow(2).sum().sqrt().clamp_min(1e-8)
        grad_x0 = A.adjoint(resid) / norm
        grad_x = _denoise_with_grad(p.prior, x, sigma, axis, grad_x0, s.max_pixels)
        step = s.mu * (resid.numel() ** 0.5) * 0.5
        x = x0 + (sigmas[i + 1] / sigma) * (x - x0) - step * grad_x * (sigma**2 / (sigma**2 + 0.25))
        p.tick()
    return x0
