"""The diffusion prior: a small 2D denoising network in the EDM parametrisation.

The data-prior step of DiffDeuR needs ``E[x0 | x_t]`` (Tweedie's formula). In the
variance-exploding / EDM view ``x_t = x0 + sigma * eps`` and the network trained with
the denoising loss *is* that posterior mean, ``D(x_t; sigma)``, so no score-to-denoiser
conversion is needed. The network is a pixel-unshuffled U-Net of about 1.5 M parameters
so that a whole volume of slices goes through it in seconds on two CPU cores.

Intensities are in "normalised units": each volume divided by a robust maximum (the
99.5th percentile of its foreground), the same scale the benchmark uses for ground truth.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError

CHECKPOINT_FORMAT = "diffdeur-prior"
CHECKPOINT_VERSION = 1
SIGMA_DATA = 0.5


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
    """U-Net on pixel-unshuffled slices; the noise level enters as an input channel (as in DRUNet)."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config
        r = config.unshuffle
        widths = [config.base_channels * m for m in config.channel_mults]
        self.head = nn.Conv2d(2 * r * r, widths[0], 3, padding=1)
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

    def forward(self, x_scaled: torch.Tensor, noise_cond: torch.Tensor) -> torch.Tensor:
        cond = noise_cond.view(-1, 1, 1, 1).expand_as(x_scaled)
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
        self.sha256 = None  # set when loaded from a file

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Denoise a batch of slices ``(N, 1, H, W)`` with H, W multiples of ``size_multiple``."""
        sd = self.config.sigma_data
        sigma = sigma.to(x.dtype).reshape(-1).expand(x.shape[0]).view(-1, 1, 1, 1)
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1.0 / (sigma**2 + sd**2).sqrt()
        f = self.net(c_in * x, sigma.log().view(-1) / 4)
        return c_skip * x + c_out * f

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        sd = self.config.sigma_data
        return (sigma**2 + sd**2) / (sigma * sd) ** 2

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def karras_sigmas(n: int, sigma_hi: float, sigma_lo: float, rho: float = 7.0) -> list[float]:
    """Noise levels from high to low, spaced as in Karras et al. (2022)."""
    if n == 1:
        return [float(sigma_hi)]
    a, b = sigma_hi ** (1 / rho), sigma_lo ** (1 / rho)
    return [float((a + i / (n - 1) * (b - a)) ** rho) for i in range(n)]


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def denoise_slices(prior: Prior, slices: torch.Tensor, sigma: float, max_pixels: int = 2**21) -> torch.Tensor:
    """Tweedie estimate for a stack of slices ``(N, H, W)``, batched by a pixel budget.

    On a CUDA out-of-memory error the batch is halved and the stack retried, down to one slice.
    """
    padded, (h, w) = _pad_to_multiple(slices.unsqueeze(1), prior.config.size_multiple)
    per_slice = padded.shape[-1] * padded.shape[-2]
    batch = max(1, max_pixels // per_slice)
    sig = torch.tensor([sigma], device=slices.device, dtype=slices.dtype)
    while True:
        try:
            out = torch.empty_like(padded)
            with torch.inference_mode():
                for start in range(0, padded.shape[0], batch):
                    out[start : start + batch] = prior(padded[start : start + batch], sig)
            return out[:, 0, :h, :w].clone()
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            batch = max(1, batch // 2)
            torch.cuda.empty_cache()


def denoise_volume(prior: Prior, volume: torch.Tensor, sigma: float, axis: int, max_pixels: int = 2**21) -> torch.Tensor:
    """Apply the 2D prior to every slice of a 3D volume taken along ``axis``."""
    moved = volume.movedim(axis, 0)
    return denoise_slices(prior, moved, sigma, max_pixels).movedim(0, axis).contiguous()


# --------------------------------------------------------------------------- checkpoints


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_prior(prior: Prior, path: str | Path, extra_metadata: dict | None = None) -> str:
    """Write weights plus everything needed to rebuild the model to one safetensors file."""
    from safetensors.torch import save_file

    meta = dict(prior.metadata)
    meta.update(extra_metadata or {})
    header = {
        "format": CHECKPOINT_FORMAT,
        "format_version": str(CHECKPOINT_VERSION),
        "config": prior.config.to_json(),
        "metadata": json.dumps(meta, sort_keys=True, default=str),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in prior.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=header)
    tmp.replace(path)
    return file_sha256(path)


def load_prior(path: str | Path, device: str | torch.device = "cpu", expected_sha256: str | None = None) -> Prior:
    """Load a prior safely (safetensors holds tensors only: no code is executed)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"prior weights not found: {path}")
    sha = file_sha256(path)
    if expected_sha256 and sha != expected_sha256:
        raise CheckpointError(
            f"prior weights {path} have sha256 {sha}, expected {expected_sha256}: the file is corrupt or not the shipped one"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read prior weights {path}: {exc} (truncated or not a safetensors file)") from exc
    if header.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a diffdeur prior (format {header.get('format')!r})")
    if header.get("format_version") != str(CHECKPOINT_VERSION):
        raise CheckpointError(
            f"{path} has checkpoint format version {header.get('format_version')}, this diffdeur reads version {CHECKPOINT_VERSION}"
        )
    try:
        config = PriorConfig.from_json(header["config"])
        metadata = json.loads(header.get("metadata", "{}"))
        prior = Prior(config, metadata)
        prior.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} does not match the prior architecture it declares: {exc}") from exc
    prior.sha256 = sha
    return prior.to(device).eval()


def default_prior_path() -> Path:
    """The prior shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "data" / "prior" / "diffdeur_prior.safetensors"


def shipped_prior_sha256() -> str | None:
    card = default_prior_path().with_name("sha256.txt")
    return card.read_text().split()[0] if card.is_file() else None

