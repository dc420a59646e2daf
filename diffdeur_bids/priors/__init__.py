"""Diffusion priors: the shipped ones by name, checkpoint files, and training (``diffdeur-train-prior``).

    prior = load_prior("2d-v2", device="cpu")     # or a path to a .safetensors file
    result = enhance(lf, affine, settings, prior=prior)

Checkpoint files are written and read by :mod:`.checkpoint` (``save_prior``, ``read_prior``).
"""

from .registry import DEFAULT_PRIOR, SHIPPED, describe, is_shipped, load_prior, load_upsampler, shipped_path

__all__ = ["DEFAULT_PRIOR", "SHIPPED", "describe", "is_shipped", "load_prior", "load_upsampler", "shipped_path"]
