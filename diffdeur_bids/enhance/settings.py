"""Settings of one enhancement run, with the quality presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

# Each preset trades time for quality; benchmarks/README.md has the figures behind them.
PRESETS = {
    "fast": dict(steps=4, inr_iters=4, inr_init_iters=40),
    "default": dict(steps=10, inr_iters=4, inr_init_iters=40),
    "best": dict(steps=20, inr_iters=6, inr_init_iters=60),
}


@dataclass(frozen=True)
class EnhanceSettings:
    """Everything that changes the result of :func:`diffdeur_bids.enhance.enhance`.

    ``output_resolution`` is in mm (one number for isotropic, or three). ``noise_sigma`` is
    in the input image's units; ``None`` estimates it from the image. ``mu`` weights the
    prior term of the fidelity step: rho_t = mu * (sigma_n / sigma_t)^2 (DiffPIR's form of
    the poster's ``mu * sigma_t^2`` weighting). ``zeta`` is the share of fresh noise when
    re-noising between steps (0: deterministic DDIM-like, 1: fully stochastic).
    ``start_damping`` is the lambda of the start's data-consistency step (``start.py``):
    0 projects onto the prior-denoised data exactly, larger values stay nearer interpolation.
    ``learned_upsampling`` passes the projected start of one scan (or of each fused stack) through the
    learned upsampler (``upsampler.py``); DiffDeuR's INR is then a correction on top of that start, fitted with
    ``upsampled_pull``, ``upsampled_init_iters`` and ``upsampled_lr`` in place of ``inr_init_pull``,
    ``inr_init_iters`` and ``inr_lr`` (``diffdeur.py``). ``average_fraction`` is the share of the
    last sampler levels whose estimates are averaged into the result (0: the last estimate alone).
    For magnitude images with air around the head (``noise.rayleigh_sigma``): ``acquired_grid``
    works on the grid the scan was acquired on when its stored grid is finer (zero-filled
    k-space, ``acquisition.py``), and ``rician_unbias`` removes the magnitude's noise bias
    before the data term.
    """

    method: str = "diffdeur"
    quality: str = "default"
    output_resolution: float | tuple[float, float, float] = 1.0
    steps: int = 10
    num_samples: int = 1
    mu: float = 1.0
    inr_iters: int = 4
    inr_init_iters: int = 40
    inr_lr: float = 0.05
    inr_init_pull: float = 1.0
    start_damping: float = 0.3
    learned_upsampling: bool = True
    upsampled_pull: float = 30.0
    upsampled_init_iters: int = 10
    upsampled_lr: float = 0.01
    sigma_start: float = 0.25
    sigma_end: float = 0.01
    zeta: float = 0.3
    average_fraction: float = 0.5
    acquired_grid: bool = True
    rician_unbias: bool = True
    noise_sigma: float | None = None
    psf_sigma: float = 0.5
    slice_profile: str = "box"
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    max_pixels: int = 2**21
    dps_steps: int = 50

    @classmethod
    def preset(cls, quality: str = "default", **overrides) -> "EnhanceSettings":
        if quality not in PRESETS:
            raise ValueError(f"unknown quality preset {quality!r}; choose one of {', '.join(PRESETS)}")
        values = dict(PRESETS[quality], quality=quality)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes) -> "EnhanceSettings":
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Refuse out-of-range values (the method name is checked against ``methods.METHODS``)."""
        if self.steps < 1 or self.num_samples < 1 or self.inr_iters < 1 or self.upsampled_init_iters < 1:
            raise ValueError("steps, num_samples, inr_iters and upsampled_init_iters must be at least 1")
        res = self.output_resolution
        res = (res,) * 3 if isinstance(res, (int, float)) else tuple(res)
        if len(res) != 3 or any(not (0 < r <= 20) for r in res):
            raise ValueError(f"output resolution must be 1 or 3 positive sizes in mm (got {self.output_resolution!r})")
        if self.noise_sigma is not None and not self.noise_sigma >= 0:
            raise ValueError("noise_sigma must be >= 0")
        if self.slice_profile != "box":
            raise ValueError("only the box slice profile is implemented (slice_profile='box')")
        if not (self.inr_init_pull >= 0 and self.upsampled_pull >= 0):
            raise ValueError("inr_init_pull and upsampled_pull must be >= 0")
        if not self.start_damping >= 0:
            raise ValueError("start_damping must be >= 0")
        if not 0 <= self.average_fraction <= 1:
            raise ValueError("average_fraction must be in [0, 1]")
        if not 0 <= self.zeta <= 1:
            raise ValueError("zeta must be in [0, 1]")
