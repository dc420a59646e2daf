"""The diffusion prior: a small 2D denoising network in the EDM parametrisation.

The data-prior step of DiffDeuR needs ``E[x0 | x_t]`` (Tweedie's formula). In the
variance-exploding / EDM view ``x_t = x0 + sigma * eps`` and the network trained with
the denoising loss *is* that posterior mean, ``D(x_t; sigma)``, so no score-to-denoiser
conversion is needed. The network is a pixel-unshuffled U-Net of about 1.3 M parameters
so that a whole volume of slices goes through it in seconds on two CPU cores.

Every method reaches the prior through one call, ``prior.denoise(x, sigma, axis)``
(k-diffusion's ``D(x, sigma)`` with the slicing axis added), and DPS through
``prior.denoise_vjp``; both go through :func:`denoise_slices`, the one place that pads and
batches slices. Checkpoint files are read and written by :mod:`diffdeur_bids.priors`.

Intensities are in "normalised units": each volume divided by a robust maximum (the
99.5th percentile of its foreground), the same scale the benchmark uses for ground truth.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

SIGMA_DATA = 0.5          # EDM's sigma_data: the standard deviation of normalised training slices
DEFAULT_MAX_PIXELS = 2**21  # slice pixels per batch through the network
VJP_BATCH_SHARE = 4       # autograd keeps every activation of a batch: a vector-Jacobian product batches 1/4 as much


@dataclass(frozen=True)
class PriorConfig:
    """Architecture and noise range; stored inside every checkpoint."""

    base_channels: int = 40
    channel_mults: tuple[int, ...] = (1, 2, 4)
    blocks_per_level: int = 1
    unshuffle: int = 2
    sigma_min: float = 0.002
    sigma_max: float = 2.0
    sigma_data: float = SIGMA_DATA
    image_channels: int = 1  # slices seen side by side as channels: the prior sees one, the upsampler its neighbours too

    @property
    def size_multiple(self) -> int:
        """Slices are padded to a multiple of this so every level divides evenly."""
        return self.unshuffle * 2 ** (len(self.channel_mults) - 1)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PriorConfig":
        data = json.loads(text)
        data["channel_mults"] = tuple(data["channel_mults"])
        return cls(**data)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class DenoiserNet(nn.Module):
    """U-Net on pixel-unshuffled slices; the noise level enters as an input channel (as in DRUNet).

    ``cond_channels`` constant maps are given beside the image (one for the prior's noise level;
    the learned upsampler gives its factors, ``upsampler.py``).
    """

    def __init__(self, config: PriorConfig, cond_channels: int = 1):
        super().__init__()
        self.config = config
        r = config.unshuffle
        widths = [config.base_channels * m for m in config.channel_mults]
        self.head = nn.Conv2d((config.image_channels + cond_channels) * r * r, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for i, w in enumerate(widths):
            self.down_blocks.append(nn.Sequential(*[ResBlock(w) for _ in range(config.blocks_per_level)]))
            if i + 1 < len(widths):
                self.downsamplers.append(nn.Conv2d(w, widths[i + 1], 2, stride=2))
        self.middle = ResBlock(widths[-1])
        self.upsamplers = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(len(widths) - 1)):
            self.upsamplers.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
            self.up_blocks.append(nn.Sequential(*[ResBlock(widths[i]) for _ in range(config.blocks_per_level)]))
        self.tail = nn.Conv2d(widths[0], r * r, 3, padding=1)

    def forward(self, x_scaled: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``x_scaled`` (N, image_channels, H, W); ``cond`` (N,) or (N, cond_channels), one value per slice and
        channel; returns (N, 1, H, W)."""
        n, _, h, w = x_scaled.shape
        cond = cond.reshape(n, -1, 1, 1).expand(n, cond.numel() // n, h, w)
        h = F.pixel_unshuffle(torch.cat([x_scaled, cond], dim=1), self.config.unshuffle)
        h = self.head(h)
        skips = []
        for i, block in enumerate(self.down_blocks):
            h = block(h)
            if i < len(self.downsamplers):
                skips.append(h)
                h = self.downsamplers[i](h)
        h = self.middle(h)
        for up, block in zip(self.upsamplers, self.up_blocks):
            h = block(up(h) + skips.pop())
        return F.pixel_shuffle(self.tail(F.silu(h)), self.config.unshuffle)


class Prior(nn.Module):
    """EDM-preconditioned denoiser: ``D(x; sigma) ~= E[x0 | x_t = x]``, i.e. Tweedie's estimate."""

    def __init__(self, config: PriorConfig | None = None, metadata: dict | None = None):
        super().__init__()
        self.config = config or PriorConfig()
        self.net = DenoiserNet(self.config)
        self.metadata = dict(metadata or {})
        self.name = None    # set by the registry: a shipped name or the file it was loaded from
        self.sha256 = None  # set when loaded from a file

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Denoise a batch of slices ``(N, 1, H, W)`` with H, W multiples of ``size_multiple``."""
        sd = self.config.sigma_data
        sigma = sigma.to(x.dtype).reshape(-1).expand(x.shape[0]).view(-1, 1, 1, 1)
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1.0 / (sigma**2 + sd**2).sqrt()
        c_noise = sigma.log().view(-1) / 4
        f = self.net(c_in * x, c_noise)
        return c_skip * x + c_out * f

    @property
    def sigma_min(self) -> float:
        """Below this noise level the prior has nothing to remove."""
        return self.config.sigma_min

    @property
    def sigma_data(self) -> float:
        return self.config.sigma_data

    def denoise(self, x: torch.Tensor, sigma: float, axis: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
        """``D(x; sigma)`` of a volume: the 2D prior on every slice of ``x`` taken along ``axis``."""
        out = denoise_slices(self, x.movedim(axis, 0), sigma, max_pixels)
        return out.movedim(0, axis).contiguous()

    def denoise_vjp(self, x: torch.Tensor, sigma: float, axis: int, grad_out: torch.Tensor,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
        """The vector-Jacobian product ``grad_out^T dD(x; sigma)/dx``, slices along ``axis`` as :meth:`denoise`."""
        out = denoise_slices(self, x.movedim(axis, 0), sigma, max_pixels // VJP_BATCH_SHARE,
                             grad_out=grad_out.movedim(axis, 0))
        return out.movedim(0, axis)

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        sd = self.config.sigma_data
        return (sigma**2 + sd**2) / (sigma * sd) ** 2

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x


def slices_per_batch(net, size, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """How many slices of ``size`` (H, W) one batch of :func:`denoise_slices` holds, padding included."""
    multiple = net.config.size_multiple
    h, w = size
    return max(1, max_pixels // ((h + (-h) % multiple) * (w + (-w) % multiple)))


def denoise_slices(net, slices: torch.Tensor, sigma: float, max_pixels: int = DEFAULT_MAX_PIXELS,
                   grad_out: torch.Tensor | None = None) -> torch.Tensor:
    """The prior ``net`` on a stack of slices ``(N, H, W)``, batched by a pixel budget.

    Without ``grad_out``: Tweedie's estimate of each slice, without autograd. With it: the
    vector-Jacobian product ``grad_out^T dD/dx`` (the gradient DPS needs). Slices are padded to
    the network's size multiple and cropped back. On a CUDA out-of-memory error the batch is
    halved and the stack retried, down to one slice.
    """
    h, w = slices.shape[-2:]
    multiple = net.config.size_multiple
    batch = slices_per_batch(net, (h, w), max_pixels)
    sig = torch.tensor([sigma], device=slices.device, dtype=slices.dtype)
    while True:
        try:
            out = torch.empty(slices.shape, device=slices.device, dtype=slices.dtype)
            for start in range(0, slices.shape[0], batch):
                part = slice(start, start + batch)
                if grad_out is None:
                    with torch.inference_mode():
                        out[part] = net(_pad_to_multiple(slices[part].unsqueeze(1), multiple), sig)[:, 0, :h, :w]
                else:
                    xb = slices[part].detach().unsqueeze(1).requires_grad_(True)
                    denoised = net(_pad_to_multiple(xb, multiple), sig)[:, :, :h, :w]
                    (grad,) = torch.autograd.grad(denoised, xb, grad_out[part].unsqueeze(1))
                    out[part] = grad[:, 0]
            return out
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            batch = max(1, batch // 2)
            torch.cuda.empty_cache()
