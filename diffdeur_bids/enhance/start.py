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
left in ``z_y`` (0.3: measured on training volumes of both tracks, see the README).
"""

from __future__ import annotations

import numpy as np
import torch

from .grids import resample, voxel_sizes
from .linalg import conjugate_gradient
from .prior import denoise_volume

PROJECTION_ITERS = 30


def denoise_lf(p) -> torch.Tensor:
    """``D(y; sigma_n)`` on the LF slices across the thickest voxel axis (``y`` if noise-free)."""
    if p.prior is None or p.noise_sigma < p.prior.config.sigma_min:
        return p.y
    axis = int(np.argmax(voxel_sizes(p.lf_grid.lf_affine)))
    return denoise_volume(p.prior, p.y, p.noise_sigma, axis=axis, max_pixels=p.settings.max_pixels)


def damped_projection(operator, start: torch.Tensor, data: torch.Tensor, damping: float,
                      iters: int = PROJECTION_ITERS) -> torch.Tensor:
    """``start + A^T (A A^T + damping / K)^-1 (data - A start)``, by conjugate gradients."""
    eps = damping / float(np.prod(operator.k))
    u = conjugate_gradient(lambda v: operator(operator.adjoint(v)) + eps * v, data - operator(start), iters=iters)
    return start + operator.adjoint(u)


def data_consistent_start(p) -> torch.Tensor:
    """The start image on the output grid (the solver's INR is then fitted towards it)."""
    z_y = denoise_lf(p)
    cubic = resample(z_y, p.lf_grid, p.fid_grid, order=3).clamp_min(0)
    x = damped_projection(p.operator, cubic, z_y, p.settings.start_damping)
    return x if p.fid_grid == p.out_grid else resample(x, p.fid_grid, p.out_grid)
