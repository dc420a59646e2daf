"""The learned upsampler: a 2D network that restores what the thick slices lost, for the start.

The start (``start.py``) interpolates the prior-denoised scan and projects it onto the data;
what lies between the slices is then as smooth as the interpolation made it. The upsampler
is a residual U-Net (the prior's architecture) trained on high-field volumes to map that
start, slice by slice, to the high-field image: ``x + f(x; log k_rows, log k_cols)``, on 2D
slices whose rows run along the thick axis and whose columns run along one in-plane axis,
with the two factors ``k`` (sub-voxels per LF voxel along each) as input channels. A network
whose config has ``image_channels`` 2c + 1 also sees the c neighbouring slices on each side (the
slicing axis is an in-plane axis of the scan, sampled finely: 3D context at 2D cost) and restores
the centre one. The two slice families that contain the thick axis are both restored and
averaged, so every axis the scan blurred is seen by the network once in-plane and the result
stays 3D-consistent.

It is a regression network (no noise level, no sampling): the diffusion prior and the INR
still do the rest of the schedule from this better start. Weights are read by
:mod:`diffdeur_bids.priors` (``load_upsampler``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .prior import DEFAULT_MAX_PIXELS, DenoiserNet, PriorConfig, slices_per_batch, _pad_to_multiple


class SliceUpsampler(nn.Module):
    """``x + f(x, log k)`` on slices ``(N, 2c + 1, H, W)`` (rows along the thick axis), ``x`` the centre slice."""

    def __init__(self, config: PriorConfig | None = None, metadata: dict | None = None):
        super().__init__()
        self.config = config or PriorConfig(base_channels=32)
        self.net = DenoiserNet(self.config, cond_channels=2)
        self.metadata = dict(metadata or {})
        self.name = None
        self.sha256 = None

    def forward(self, x: torch.Tensor, log_k: torch.Tensor) -> torch.Tensor:
        """``log_k`` (N, 2): the log of the factors along the rows and the columns of each slice."""
        c = self.context
        return x[:, c : c + 1] + self.net(x, log_k)

    @property
    def context(self) -> int:
        """Neighbouring slices seen on each side of the one restored."""
        return (self.config.image_channels - 1) // 2

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def has_thick_slices(k) -> bool:
    """Whether voxels split into ``k`` sub-voxels are thicker along one axis than along the others: what the
    upsampler restores, and the only scans it was trained on."""
    k = sorted(float(v) for v in k)
    return k[2] > k[1] + 1e-3


def slice_families(k) -> list[tuple[int, int, int]]:
    """``(slicing axis, row axis, column axis)`` of the slice families that contain the thickest axis
    (none when no axis is thicker than the others)."""
    if not has_thick_slices(k):
        return []
    thick = max(range(3), key=lambda a: (k[a], -a))
    others = [a for a in range(3) if a != thick]
    return [(others[1], thick, others[0]), (others[0], thick, others[1])]


def upsample(net: SliceUpsampler, x: torch.Tensor, k, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """The upsampler on a volume whose voxels split each LF voxel into ``k`` (the mean of its two families).

    A ``k`` with no axis thicker than the others returns ``x`` unchanged: there are no thick slices.
    """
    families = slice_families(k)
    if not families:
        return x
    total = torch.zeros_like(x)
    for axis, rows, cols in families:
        slices = x.permute(axis, rows, cols)
        log_k = torch.tensor([[math.log(k[rows]), math.log(k[cols])]], dtype=x.dtype, device=x.device)
        out = _upsample_slices(net, slices, log_k, max_pixels)
        total += out.permute(*_inverse((axis, rows, cols)))
    return total / len(families)


def _inverse(order) -> list[int]:
    inverse = [0, 0, 0]
    for position, axis in enumerate(order):
        inverse[axis] = position
    return inverse


def with_neighbours(slices: torch.Tensor, index: torch.Tensor, context: int) -> torch.Tensor:
    """Slices ``index`` of ``slices`` (S, H, W) with ``context`` neighbours on each side as channels, (N, 2c + 1, H, W);
    beyond the first and last slice the edge slice is repeated."""
    offsets = torch.arange(-context, context + 1, device=index.device)
    return slices[(index[:, None] + offsets).clamp(0, slices.shape[0] - 1)]


def _upsample_slices(net: SliceUpsampler, slices: torch.Tensor, log_k: torch.Tensor, max_pixels: int) -> torch.Tensor:
    h, w = slices.shape[-2:]
    multiple = net.config.size_multiple
    batch = slices_per_batch(net, (h, w), max_pixels)
    out = torch.empty(slices.shape, device=slices.device, dtype=slices.dtype)
    with torch.inference_mode():
        for start in range(0, slices.shape[0], batch):
            index = torch.arange(start, min(start + batch, slices.shape[0]), device=slices.device)
            part = with_neighbours(slices, index, net.context)
            padded = _pad_to_multiple(part, multiple)
            out[start : start + batch] = net(padded, log_k.expand(part.shape[0], 2))[:, 0, :h, :w]
    return out
