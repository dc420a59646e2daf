"""The one entry point of the method: :func:`enhance`, arrays and affine in, image and affine out."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .acquisition import to_acquired_grid
from .devices import describe_device, resolve_device
from .grids import voxel_sizes
from .methods import METHODS, check_settings, get_method
from .noise import rayleigh_sigma, tissue_sigma, unbias_rician, wavelet_mad_sigma
from .normalise import robust_max
from .prior import Prior
from .problem import Problem, check_input, observation, plan_grids, stack_observation
from .progress import TimeLeft
from .settings import EnhanceSettings
from .upsampler import SliceUpsampler, has_thick_slices

Progress = Callable[[int, int, float, "float | None"], None]  # (done, total, elapsed s, s left: None = not known yet)


@dataclass
class EnhanceResult:
    image: np.ndarray
    affine: np.ndarray
    std: np.ndarray | None
    info: dict = field(default_factory=dict)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class PreparedScan:
    """One scan in normalised units, on the grid it was acquired on, with its noise level."""

    y: np.ndarray
    affine: np.ndarray
    noise: float
    record: dict  # how the noise was found, the acquired grid (in the input's units)


def prepare_scan(lf: np.ndarray, lf_affine: np.ndarray, settings: EnhanceSettings, scale: float) -> PreparedScan:
    """Divide by ``scale``; for magnitude images with air around the head, go to the acquired grid,
    estimate the noise from the air and the tissue, and remove the Rician bias."""
    y, y_affine, acquisition = lf / scale, lf_affine, {}
    background_sigma = rayleigh_sigma(y)  # None unless a magnitude image with air around the head
    if settings.acquired_grid and background_sigma is not None:
        y, y_affine, bands = to_acquired_grid(y, lf_affine, background_sigma)
        acquisition = {"acquired_band": [round(b, 3) for b in bands], "acquired_shape": list(y.shape),
                       "acquired_voxel_size_mm": [float(v) for v in voxel_sizes(y_affine)]}
    tissue = None
    if background_sigma is not None:
        # the air's sigma holds for the stored and the acquired voxels alike (the crop keeps the band's noise)
        in_plane = tuple(int(a) for a in np.argsort(voxel_sizes(y_affine))[:2])
        tissue = tissue_sigma(y, background_sigma, in_plane)
        acquisition.update(noise_sigma_air=float(background_sigma * scale),
                           noise_sigma_tissue=None if tissue is None else float(tissue * scale))
    if settings.noise_sigma is not None:
        noise, noise_how = settings.noise_sigma / scale, "given"
    elif background_sigma is not None:
        noise, noise_how = ((tissue, "tissue_detail") if tissue is not None and tissue > background_sigma
                            else (background_sigma, "rayleigh_background"))
    else:
        noise, noise_how = wavelet_mad_sigma(y), "wavelet_mad"
    if settings.rician_unbias and background_sigma is not None:
        y = unbias_rician(y, background_sigma)  # the magnitude's bias comes from the receiver noise the air shows
        acquisition["rician_unbiased"] = True
    record = {"noise_sigma_estimated": None if settings.noise_sigma is not None else float(noise * scale),
              "noise_sigma_used": float(noise * scale), "noise_estimator": noise_how, **acquisition}
    return PreparedScan(y, y_affine, noise, record)


def _as_stacks(lf, lf_affine) -> tuple[list, list]:
    if isinstance(lf, (list, tuple)):
        if not isinstance(lf_affine, (list, tuple)) or len(lf_affine) != len(lf) or not lf:
            raise ValueError("several stacks need one affine each: enhance([lf, ...], [affine, ...])")
        return list(lf), list(lf_affine)
    return [lf], [lf_affine]


def enhance(lf, lf_affine, settings: EnhanceSettings | None = None, prior: Prior | None = None,
            progress: Progress | None = None, upsampler: SliceUpsampler | None = None) -> EnhanceResult:
    """Enhance one LF volume: arrays and affine in, image on the output grid and its affine out.

    Several thick-slice stacks of one contrast are fused into one volume when ``lf`` and
    ``lf_affine`` are lists (the first stack is the reference: the output covers its field of
    view); their motions are registered and refined (``info["stacks"]``), and a failed
    registration raises :class:`RegistrationError`. ``prior`` is needed by the methods that use
    one (``diffdeur_bids.priors.load_prior`` gives the shipped one). The output keeps the input's
    intensity units. With ``num_samples > 1`` the image is the posterior mean and ``std`` the
    voxelwise standard deviation across samples.
    """
    t_start = time.time()
    settings = settings or EnhanceSettings()
    check_settings(settings)
    method = get_method(settings.method)
    lfs, affines = _as_stacks(lf, lf_affine)
    if len(lfs) > 1 and not method.fuses_stacks:
        fusing = ", ".join(m.name for m in METHODS.values() if m.fuses_stacks)
        raise ValueError(f"method {method.name!r} enhances one stack at a time; {fusing} fuse several")
    checked = [check_input(a, b) for a, b in zip(lfs, affines)]
    lf, lf_affine, notes = checked[0]
    device = resolve_device(settings.device)
    if settings.threads:
        torch.set_num_threads(int(settings.threads))
    if method.needs_prior and prior is None:
        raise ValueError(f"method {method.name!r} needs a prior: pass prior=diffdeur_bids.priors.load_prior()")
    if prior is not None:
        prior = prior.to(device).eval()
    upsampling = settings.learned_upsampling and method.upsamples_start
    if upsampling and upsampler is None:
        raise ValueError(f"method {method.name!r} with learned_upsampling needs the upsampler: pass "
                         "upsampler=diffdeur_bids.priors.load_upsampler() (or learned_upsampling=False)")

    out_g, fid_g = plan_grids(lf.shape, lf_affine, settings.output_resolution)  # refuses a grid too large, before any work
    scale = robust_max(lf)  # one scale for every stack: they share the contrast and the scanner
    scans = [prepare_scan(a, b, settings, scale) for a, b, _ in checked]
    ref = scans[0]
    if ref.y.shape != lf.shape:  # on the acquired grid: the same output grid, described in that grid's voxels
        out_g, fid_g = plan_grids(lf.shape, lf_affine, settings.output_resolution, ref.y.shape, ref.affine)
    if len(scans) == 1:
        observations = [observation(ref.y, ref.affine, fid_g, ref.noise, settings.psf_sigma, device)]
        # no axis thicker than the others: nothing lies between thick slices, and the upsampler never saw such a scan
        upsampling = upsampling and has_thick_slices(fid_g.subdivision)
    else:
        centre = (lf_affine @ np.r_[(np.asarray(lf.shape) - 1) / 2.0, 1.0])[:3]
        observations = [stack_observation(scan.y, scan.affine, out_g, scan.noise, settings.psf_sigma, centre, device)
                        for scan in scans]
        upsampling = upsampling and any(has_thick_slices(o.operator.k) for o in observations)

    upsampler = upsampler.to(device).eval() if upsampling else None  # None: not used, and recorded so
    time_left = TimeLeft(method.ticks(settings), settings.num_samples, method.start_ticks, clock=time.time, t0=t_start)

    def tick(expected_step_s=None):
        done = time_left.tick(expected_step_s)
        if progress:
            progress(*done)

    samples, found = [], {}
    for k in range(settings.num_samples):
        seed = settings.seed + 1000 * k
        _seed_everything(seed)
        gen = torch.Generator(device=device).manual_seed(seed)
        problem = Problem(observations, out_g, settings, device, prior, gen, tick, upsampler=upsampler)
        samples.append(method.run(problem).float().cpu())
        found = problem.notes
    stack = torch.stack(samples)
    image = (stack.mean(0) * scale).numpy().astype(np.float32)
    std = (stack.std(0, unbiased=True) * scale).numpy().astype(np.float32) if len(samples) > 1 else None

    info = {
        "method": settings.method,
        "settings": settings.as_dict(),
        **ref.record,
        "intensity_scale": float(scale),
        "input_shape": list(lf.shape),
        "output_shape": list(out_g.shape),
        "output_voxel_size_mm": [float(v) for v in voxel_sizes(out_g.affine)],
        "subdivision": list(fid_g.subdivision),
        "prior": getattr(prior, "name", None),
        "weights_sha256": getattr(prior, "sha256", None),
        "upsampler": getattr(upsampler, "name", None),
        "upsampler_sha256": getattr(upsampler, "sha256", None),
        "elapsed_seconds": round(time.time() - t_start, 3),
        **describe_device(device),
        **notes,
    }
    if len(scans) > 1:
        info["stacks"] = [{"input_shape": list(c[0].shape), **scan.record, **registered}
                          for c, scan, registered in zip(checked, scans, found.get("stacks", [{}] * len(scans)))]
        for entry, motion in zip(info["stacks"], found.get("refined_motions", [])):
            entry["refined_motion"] = motion
    return EnhanceResult(image=image, affine=out_g.affine, std=std, info=info)
