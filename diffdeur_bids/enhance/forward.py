"""The degradation model ``y = PSF(L_k(x)) + n`` and its adjoint.

``L_k`` is a box slice profile: the block mean of ``k`` sub-voxels per LF voxel. ``PSF`` is a
Gaussian on the LF grid (sigma in LF voxels) with edge-replicating borders, as
``scipy.ndimage.gaussian_filter(mode='nearest')`` in the benchmark protocol. The operator
acts on a grid that subdivides the LF voxels (see ``grids.fidelity_grid``), so it is exact
for anisotropic voxels and oblique affines alike.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MIN_NOISE_SIGMA = 1e-3  # normalised units: the data term's weight 1 / sigma^2 stays bounded for noise-free data


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Same taps as scipy.ndimage.gaussian_filter1d."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def _blur_axis(x: torch.Tensor, kernel: torch.Tensor, axis: int) -> torch.Tensor:
    r = (kernel.numel() - 1) // 2
    moved = x.movedim(axis, -1)
    shape = moved.shape
    flat = moved.reshape(-1, 1, shape[-1])
    flat = F.pad(flat, (r, r), mode="replicate")
    out = F.conv1d(flat, kernel.to(x).view(1, 1, -1))
    return out.reshape(shape).movedim(-1, axis)


def _blur_axis_adjoint(y: torch.Tensor, kernel: torch.Tensor, axis: int) -> torch.Tensor:
    """Adjoint of replicate-pad + valid convolution: full transposed conv, then fold the pads back."""
    r = (kernel.numel() - 1) // 2
    moved = y.movedim(axis, -1)
    shape = moved.shape
    full = F.conv_transpose1d(moved.reshape(-1, 1, shape[-1]), kernel.to(y).view(1, 1, -1))[:, 0]
    out = full[:, r : r + shape[-1]].clone()
    if r:
        out[:, 0] += full[:, :r].sum(dim=1)
        out[:, -1] += full[:, r + shape[-1] :].sum(dim=1)
    return out.reshape(shape).movedim(-1, axis)


class Degradation:
    """``A = PSF o L_k`` from a grid subdividing the LF voxels by ``k`` to the LF grid."""

    def __init__(self, k, psf_sigma=0.5):
        self.k = tuple(int(v) for v in k)
        sig = np.broadcast_to(np.asarray(psf_sigma, dtype=float), (3,))
        self.kernels = [gaussian_kernel1d(s) if s > 0 else None for s in sig]

    def blur(self, x):
        for axis, kern in enumerate(self.kernels):
            if kern is not None and kern.numel() > 1:
                x = _blur_axis(x, kern, axis)
        return x

    def blur_adjoint(self, y):
        for axis, kern in reversed(list(enumerate(self.kernels))):
            if kern is not None and kern.numel() > 1:
                y = _blur_axis_adjoint(y, kern, axis)
        return y

    def downsample(self, x):
        if self.k == (1, 1, 1):
            return x
        return F.avg_pool3d(x[None, None], self.k, self.k)[0, 0]

    def downsample_adjoint(self, y):
        (n0, n1, n2), (k0, k1, k2) = y.shape, self.k
        up = y[:, None, :, None, :, None].expand(n0, k0, n1, k1, n2, k2).reshape(n0 * k0, n1 * k1, n2 * k2)
        return up / float(np.prod(self.k))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur(self.downsample(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.downsample_adjoint(self.blur_adjoint(y))
