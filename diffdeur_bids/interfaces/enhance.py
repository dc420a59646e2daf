"""The enhancement node: load the RAS+ scan, call the method's ``enhance``, save image, std and info.

``device``, ``threads`` and ``use_gpu`` are ``nohash``: moving a run from GPU to CPU or changing
the thread count does not invalidate finished work in the work dir. ``use_gpu`` exists only so
Nipype's MultiProc counts the node against its GPU slots (``Node.is_gpu_node``).
"""

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, traits

from ..errors import NotEnoughMemoryError
from ..imageio import load_volume, save_volume, space_code
from ..priors.registry import DEFAULT_PRIOR

log = logging.getLogger("nipype.interface")


class _EnhanceInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="low-field scan, RAS+")
    settings = traits.Dict(mandatory=True, desc="EnhanceSettings as a dict, without device and threads")
    prior = traits.Str(DEFAULT_PRIOR, usedefault=True, nohash=True, desc="a shipped prior's name or a weights file")
    weights_sha256 = traits.Str("", usedefault=True, desc="sha256 of the prior, so new weights redo the work")
    device = traits.Str("cpu", usedefault=True, nohash=True, desc="torch device")
    threads = traits.Int(1, usedefault=True, nohash=True, desc="CPU threads for torch")
    use_gpu = traits.Bool(False, usedefault=True, nohash=True, desc="for Nipype's GPU scheduling only")
    label = traits.Str("", usedefault=True, nohash=True, desc="name of the scan in progress messages")


class _EnhanceOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="enhanced image on the output grid, input units")
    std_file = File(desc="voxel-wise std across samples (only when num_samples > 1)")
    info_file = File(exists=True, desc="JSON record of how the image was made")


def _out_of_memory(label: str, error: BaseException) -> NotEnoughMemoryError:
    """The error users read when a scan does not fit (on a GPU: even once the prior's batches are down to one slice)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        what, last_fix = "the GPU ran out of memory even with the smallest batches", "or use --device cpu"
    else:
        what, last_fix = "the machine ran out of memory", "or give the run more memory"
    detail = (str(error).splitlines() or [type(error).__name__])[0][:200]
    return NotEnoughMemoryError(f"{label}: {what} ({detail}); use a coarser --output-resolution, run fewer scans "
                                f"at once (--nprocs, --mem), {last_fix}")


def noise_and_snr(before: np.ndarray, affine, noise_before: float, after: np.ndarray) -> dict:
    """The group report's quality figures: the output's noise (finest wavelet detail inside the head) and
    the signal-to-noise ratio (mean of the head over the noise) before and after, in the image's units."""
    from ..enhance.noise import wavelet_mad_sigma
    from ..enhance.normalise import robust_max
    from ..enhance.problem import check_input

    before = check_input(before, affine)[0]  # the input as the method saw it (non-finite and negative voxels 0)

    def head_mean(x):
        x = np.asarray(x, dtype=np.float64)
        return float(x[x > 0.1 * robust_max(x)].mean())

    def ratio(signal, noise):  # None where it is not a number (a noise-free or degenerate image)
        value = signal / noise if noise > 0 else float("nan")
        return value if math.isfinite(value) else None

    noise_after = wavelet_mad_sigma(after)
    return {"noise_sigma_output": noise_after if math.isfinite(noise_after) else None,
            "snr_input": ratio(head_mean(before), noise_before), "snr_output": ratio(head_mean(after), noise_after)}


class EnhanceImage(SimpleInterface):
    input_spec = _EnhanceInputSpec
    output_spec = _EnhanceOutputSpec

    def _run_interface(self, runtime):
        from ..enhance import EnhanceSettings, enhance, resolve_device
        from ..priors import load_prior

        device = resolve_device(self.inputs.device)
        prior = load_prior(self.inputs.prior, device=device)
        settings = EnhanceSettings(**{**self.inputs.settings, "device": str(device), "threads": self.inputs.threads})
        data, affine, header = load_volume(self.inputs.in_file)
        code = space_code(header)
        label = self.inputs.label or Path(self.inputs.in_file).name

        def progress(step, total, elapsed, eta):
            log.info("%s: step %d/%d, %.0f s elapsed, about %.0f s left", label, step, total, elapsed, eta)

        try:
            result = enhance(data, affine, settings, prior=prior, progress=progress)
        except (torch.cuda.OutOfMemoryError, MemoryError) as e:
            raise _out_of_memory(label, e) from e

        # a magnitude image is not negative: tools that read the background (noise measures, 8-bit conversion,
        # bias correction) are thrown by negative air, so the output is clipped at zero like the input
        negative = result.image < 0
        result.info["negative_output_voxels_clipped"] = int(negative.sum())
        image = np.where(negative, 0, result.image).astype(np.float32)
        result.info.update(noise_and_snr(data, affine, result.info["noise_sigma_used"], image))
        cwd = Path(runtime.cwd)
        self._results["out_file"] = str(save_volume(cwd / "enhanced.nii.gz", image, result.affine, code))
        if result.std is not None:
            self._results["std_file"] = str(save_volume(cwd / "enhanced_std.nii.gz", result.std, result.affine, code))
        info_file = cwd / "enhance_info.json"
        info_file.write_text(json.dumps(result.info, indent=2, default=str))
        self._results["info_file"] = str(info_file)
        return runtime
