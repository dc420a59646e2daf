"""What every method is given: the observations (LF scans) and the output grid, in normalised units.

An :class:`Observation` is one LF scan with its own grid, noise level and degradation operator;
a :class:`Problem` holds a list of them, so a second stack of the same contrast is one more
item. :func:`check_input` refuses what cannot be enhanced and repairs (and reports) what can.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .errors import InvalidInputError
from .forward import Degradation
from .fusion import StacksFidelity
from .grids import Grid, fidelity_grid, grid_in_space, lf_grid, output_grid, subdivided_grid
from .inr import FidelityProblem
from .prior import Prior, slices_per_batch
from .settings import EnhanceSettings
from .stacks import StackOperator
from .upsampler import SliceUpsampler

MAX_OUTPUT_VOXELS = 2**28  # ~268 M voxels (640^3): beyond this, refuse rather than run out of memory


@dataclass(frozen=True)
class Observation:
    """One LF scan: data ``y`` on ``grid``, its noise level, and ``operator`` from ``fid_grid`` to ``grid``.

    Alone, ``fid_grid`` splits the scan's voxels at least as finely as the output grid, so the
    box slice profile is an exact block mean there (a :class:`Degradation`); it is the output
    grid itself when that one splits the LF voxels into whole sub-voxels. One of several fused
    stacks sees the output grid through its motion (a :class:`StackOperator`; ``fid_grid`` is
    the output grid).
    """

    y: torch.Tensor
    grid: Grid
    fid_grid: Grid
    operator: Degradation | StackOperator
    noise_sigma: float


@dataclass
class Problem:
    """Everything a method needs, on the chosen device."""

    observations: list[Observation]
    out_grid: Grid
    settings: EnhanceSettings
    device: torch.device
    prior: Prior | None
    generator: torch.Generator
    tick: Callable[..., None] = field(default=lambda expected_step_s=None: None)  # a part done (``progress.TimeLeft``)
    notes: dict = field(default_factory=dict)  # what a method found on the way (the stacks' registration)
    upsampler: SliceUpsampler | None = None  # the start's learned upsampler, when the settings ask for it

    @property
    def scan(self) -> Observation:
        """The single observation the methods here work from."""
        if len(self.observations) != 1:
            raise InvalidInputError(f"method {self.settings.method!r} enhances one scan at a time, "
                                    f"got {len(self.observations)}")
        return self.observations[0]

    @property
    def reference(self) -> Observation:
        """The stack whose field of view the output grid covers (the scan itself when alone)."""
        return self.observations[0]

    @property
    def fused(self) -> bool:
        return len(self.observations) > 1

    def fidelity(self, base: tuple[torch.Tensor, torch.Tensor] | None = None) -> FidelityProblem | StacksFidelity:
        """The data term of the INR's fit; ``base``: one scan's INR is a correction of that image
        (on the fidelity and the output grid)."""
        if self.fused:
            obs = self.observations
            return StacksFidelity([o.y for o in obs], [o.operator for o in obs], [o.noise_sigma for o in obs], self.out_grid,
                                  base=None if base is None else base[1])
        obs = self.scan
        return FidelityProblem(obs.y, obs.operator, obs.noise_sigma, obs.fid_grid, self.out_grid, base=base)

    def denoise(self, x: torch.Tensor, sigma: float, axis: int) -> torch.Tensor:
        """The prior step ``D(x; sigma)``, slices along ``axis``."""
        return self.prior.denoise(x, sigma, axis, max_pixels=self.settings.max_pixels)

    def prior_cost(self, x: torch.Tensor, axis: int = 0) -> float:
        """Seconds a prior step on ``x`` (slices along ``axis``) should take, from one batch of its slices
        timed: the cost per voxel depends on the slices' size, so the start's, on the scan's own slices,
        would not tell it."""
        n = min(x.shape[axis], slices_per_batch(self.prior, [v for a, v in enumerate(x.shape) if a != axis],
                                                self.settings.max_pixels))
        t0 = time.perf_counter()
        self.prior.denoise(x.narrow(axis, 0, n), self.settings.sigma_start, axis, max_pixels=self.settings.max_pixels)
        return (time.perf_counter() - t0) / n * x.shape[axis]

    def randn(self, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device)


def check_input(lf, lf_affine) -> tuple[np.ndarray, np.ndarray, dict]:
    """Refuse what cannot be enhanced; repair (and report) what can."""
    notes = {}
    lf = np.asarray(lf)
    if lf.ndim == 4 and lf.shape[3] == 1:
        lf = lf[..., 0]
    if lf.ndim == 4:
        raise InvalidInputError(f"the image is 4D with {lf.shape[3]} volumes; diffdeur enhances 3D anatomical scans (select one volume)")
    if lf.ndim != 3:
        raise InvalidInputError(f"the image must be 3D, got {lf.ndim}D with shape {lf.shape}")
    if lf.size == 0 or min(lf.shape) < 4:
        raise InvalidInputError(f"the image {lf.shape} is too small: at least 4 voxels along every axis are needed")
    if not np.issubdtype(lf.dtype, np.number) or np.iscomplexobj(lf):
        raise InvalidInputError(f"the image has data type {lf.dtype}; a real-valued magnitude image is needed")
    lf = lf.astype(np.float32)
    bad = ~np.isfinite(lf)
    if bad.any():
        if bad.mean() > 0.01:
            raise InvalidInputError(f"{bad.mean():.1%} of the voxels are NaN or infinite; the image looks corrupt")
        notes["nonfinite_voxels_set_to_zero"] = int(bad.sum())
        lf = np.where(bad, 0, lf).astype(np.float32)
    negative = lf < 0
    if negative.any():
        notes["negative_voxels_clipped"] = int(negative.sum())
        lf = np.maximum(lf, 0)
    if float(lf.max()) <= float(lf.min()):
        raise InvalidInputError("the image is constant (all voxels equal): there is nothing to enhance")
    aff = np.asarray(lf_affine, dtype=float)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-9:
        raise InvalidInputError("the image affine is missing, not finite, or singular")
    return lf, aff, notes


def plan_grids(lf_shape, lf_affine, resolution, obs_shape=None, obs_affine=None) -> tuple[Grid, Grid]:
    """The output grid at ``resolution`` mm over the scan's field of view, and the grid where the
    data term of its observation (``obs_shape``, ``obs_affine``: the scan itself by default, or the
    scan on its acquired grid) is exact; both in the observation's voxel-index space.

    Refuses grids too large to hold, before anything is allocated.
    """
    out_g = output_grid(lf_shape, lf_affine, resolution)
    if obs_shape is not None and tuple(obs_shape) != tuple(lf_shape):
        out_g = grid_in_space(out_g, obs_affine)
        k = out_g.subdivision
        if k is not None and out_g.shape == tuple(n * kk for n, kk in zip(obs_shape, k)):
            out_g = subdivided_grid(obs_shape, obs_affine, k)  # exactly the acquired voxels split: say so exactly
        lf_shape, lf_affine = obs_shape, obs_affine
    fid_g = fidelity_grid(lf_shape, lf_affine, resolution)
    if fid_g.subdivision == out_g.subdivision:
        fid_g = out_g
    n_out = int(np.prod(out_g.shape))
    if n_out > MAX_OUTPUT_VOXELS or np.prod(fid_g.shape) > MAX_OUTPUT_VOXELS:
        raise InvalidInputError(
            f"the output grid {out_g.shape} ({n_out / 1e6:.0f} M voxels) is too large; choose a coarser --output-resolution"
        )
    return out_g, fid_g


def observation(y: np.ndarray, lf_affine, fid_g: Grid, noise_sigma: float, psf_sigma, device) -> Observation:
    """One scan in normalised units as the methods see it."""
    y_t = torch.from_numpy(np.ascontiguousarray(y)).to(device)
    return Observation(y_t, lf_grid(y.shape, lf_affine), fid_g, Degradation(fid_g.subdivision, psf_sigma), noise_sigma)


def stack_observation(y: np.ndarray, affine, out_g: Grid, noise_sigma: float, psf_sigma, centre, device) -> Observation:
    """One of several fused stacks in normalised units: seen from the output grid through its motion."""
    y_t = torch.from_numpy(np.ascontiguousarray(y)).to(device)
    operator = StackOperator(out_g, y.shape, affine, psf_sigma, centre, device)
    return Observation(y_t, lf_grid(y.shape, affine), out_g, operator, noise_sigma)
