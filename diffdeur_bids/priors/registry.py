"""The priors diffdeur ships, by name, and the one way to load a prior: a shipped name or a file.

Each shipped prior is a safetensors file under ``diffdeur_bids/data/prior/`` whose sha256 is
recorded beside it, so a file altered after installation is refused instead of used.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..enhance.prior import Prior

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "prior"


@dataclass(frozen=True)
class ShippedPrior:
    name: str
    file: str        # in DATA_DIR
    sha256_file: str  # in DATA_DIR: the expected sha256 as its first word

    @property
    def path(self) -> Path:
        return DATA_DIR / self.file

    def expected_sha256(self) -> str | None:
        card = DATA_DIR / self.sha256_file
        return card.read_text().split()[0] if card.is_file() else None


SHIPPED = {p.name: p for p in [
    ShippedPrior("2d-v2", "diffdeur_prior.safetensors", "sha256.txt"),  # the 2D slice denoiser of MODEL_CARD.md
]}
DEFAULT_PRIOR = "2d-v2"
# the start's learned upsampler (``enhance/upsampler.py``), shipped beside the prior
UPSAMPLER = ShippedPrior("upsampler-v1", "upsampler.safetensors", "upsampler_sha256.txt")


def shipped_path(name: str = DEFAULT_PRIOR) -> Path:
    return SHIPPED[name].path


def is_shipped(spec) -> bool:
    return str(spec) in SHIPPED


def describe(spec) -> str:
    """How logs and the plan name a prior: ``2d-v2 (shipped)`` or the file's path."""
    return f"{spec} (shipped)" if is_shipped(spec) else str(spec)


def load_prior(spec: str | Path = DEFAULT_PRIOR, device="cpu") -> Prior:
    """A shipped prior by name (checked against its recorded sha256, cached) or a prior from a file.

    torch is imported here, not with this module, so the command line reads the names quickly.
    """
    from ..enhance.devices import resolve_device
    from .checkpoint import read_prior

    device = resolve_device(device)
    if is_shipped(spec):
        return _load_shipped(str(spec), str(device))
    return read_prior(spec, device=device)


@lru_cache(maxsize=4)
def _load_shipped(name: str, device: str) -> Prior:
    from .checkpoint import read_prior

    shipped = SHIPPED[name]
    prior = read_prior(shipped.path, device=device, expected_sha256=shipped.expected_sha256())
    prior.name = name
    return prior


@lru_cache(maxsize=4)
def _load_upsampler(device: str):
    from .checkpoint import read_upsampler

    upsampler = read_upsampler(UPSAMPLER.path, device=device, expected_sha256=UPSAMPLER.expected_sha256())
    upsampler.name = UPSAMPLER.name
    return upsampler


def load_upsampler(device="cpu"):
    """The shipped learned upsampler of the start, checked against its recorded sha256 (cached)."""
    from ..enhance.devices import resolve_device

    return _load_upsampler(str(resolve_device(device)))
