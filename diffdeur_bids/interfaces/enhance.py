"""The enhancement nodes: load the RAS+ scan (or the stacks of a group), call the method's ``enhance``,
save image, std and info.

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
    progress_bar = traits.Bool(False, usedefault=True, nohash=True, desc="a progress bar on stderr (--verbose)")


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


def _settings_and_prior(inputs):
    from ..enhance import EnhanceSettings, resolve_device
    from ..priors import load_prior

    device = resolve_device(inputs.device)
    settings = EnhanceSettings(**{**inputs.settings, "device": str(device), "threads": inputs.threads})
    return settings, load_prior(inputs.prior, device=device)


def _run_enhance(label: str, data, affine, settings, prior, progress_bar: bool = False):
    """``enhance`` with progress in the log (and on a bar when asked), and the error users read when it
    does not fit in memory."""
    from tqdm import tqdm

    from ..enhance import enhance
    from ..priors import load_upsampler

    upsampler = load_upsampler(device=settings.device) if settings.learned_upsampling else None
    bar = tqdm(desc=label, unit="step", dynamic_ncols=True, disable=not progress_bar,
               bar_format="{desc}: {n}/{total} {bar} {elapsed} elapsed, {postfix}")

    def progress(step, total, elapsed, eta):
        left = "the time left is known after the first sampler step" if eta is None else f"about {eta:.0f} s left"
        log.info("%s: step %d/%d, %.0f s elapsed, %s", label, step, total, elapsed, left)
        bar.total = total
        bar.update(step - bar.n)
        bar.set_postfix_str(left)  # the log's estimate, not tqdm's own (which would count the start as a step)

    try:
        return enhance(data, affine, settings, prior=prior, progress=progress, upsampler=upsampler)
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:
        raise _out_of_memory(label, e) from e
    finally:
        bar.close()


def _save_result(result, data, affine, code, folder: Path, prefix: str = "") -> dict:
    """Image (clipped at zero), std and info in ``folder``; their paths (``std_file`` "" when there is none).

    A magnitude image is not negative: tools that read the background (noise measures, 8-bit conversion,
    bias correction) are thrown by negative air, so the output is clipped at zero like the input.
    """
    negative = result.image < 0
    result.info["negative_output_voxels_clipped"] = int(negative.sum())
    image = np.where(negative, 0, result.image).astype(np.float32)
    result.info.update(noise_and_snr(data, affine, result.info["noise_sigma_used"], image))
    folder.mkdir(parents=True, exist_ok=True)
    files = {"out_file": str(save_volume(folder / f"{prefix}enhanced.nii.gz", image, result.affine, code)),
             "std_file": ""}
    if result.std is not None:
        files["std_file"] = str(save_volume(folder / f"{prefix}enhanced_std.nii.gz", result.std, result.affine, code))
    info_file = folder / f"{prefix}enhance_info.json"
    info_file.write_text(json.dumps(result.info, indent=2, default=str))
    files["info_file"] = str(info_file)
    return files


class EnhanceImage(SimpleInterface):
    input_spec = _EnhanceInputSpec
    output_spec = _EnhanceOutputSpec

    def _run_interface(self, runtime):
        settings, prior = _settings_and_prior(self.inputs)
        data, affine, header = load_volume(self.inputs.in_file)
        label = self.inputs.label or Path(self.inputs.in_file).name
        result = _run_enhance(label, data, affine, settings, prior, self.inputs.progress_bar)
        files = _save_result(result, data, affine, space_code(header), Path(runtime.cwd))
        self._results.update({k: v for k, v in files.items() if v})
        return runtime


class _StacksInputSpec(_EnhanceInputSpec):
    in_file = File(desc="unused: the stacks are in_files")
    in_files = traits.List(File(exists=True), mandatory=True, desc="the group's stacks, RAS+, the reference first")
    labels = traits.List(traits.Str, nohash=True, desc="the stacks' names in progress messages")


class _StacksOutputSpec(TraitedSpec):
    fused = traits.Bool(desc="True: one fused image; False: the stacks could not be aligned, each was enhanced alone")
    reason = traits.Str(desc="why the stacks were not fused ('' when they were)")
    out_files = traits.List(File(exists=True), desc="the fused image, or one image per stack")
    std_files = traits.List(traits.Str, desc="uncertainty maps ('' where num_samples is 1)")
    info_files = traits.List(File(exists=True), desc="JSON records, one per image")
    out_file = File(exists=True, desc="the image to segment: the fused one, or the reference stack's")


class EnhanceStacks(SimpleInterface):
    """Fuse a group's stacks into one image; when they cannot be aligned (the method's ``RegistrationError``),
    enhance each on its own instead, so nothing is fused misaligned and nothing is lost."""

    input_spec = _StacksInputSpec
    output_spec = _StacksOutputSpec

    def _run_interface(self, runtime):
        from ..enhance import RegistrationError
        from ..enhance.errors import InvalidInputError
        from ..enhance.problem import check_input

        settings, prior = _settings_and_prior(self.inputs)
        loaded = [load_volume(f) for f in self.inputs.in_files]
        labels = list(self.inputs.labels) or [Path(f).name for f in self.inputs.in_files]
        for label, (data, affine, _) in zip(labels, loaded):  # a stack that cannot be enhanced names itself
            try:
                check_input(data, affine)
            except InvalidInputError as e:
                raise InvalidInputError(f"{label}, a stack of this group: {e}") from e
        datas, affines = [d for d, _, _ in loaded], [a for _, a, _ in loaded]
        code, cwd = space_code(loaded[0][2]), Path(runtime.cwd)
        try:
            result = _run_enhance(" + ".join(labels), datas, affines, settings, prior, self.inputs.progress_bar)
            made, reason = [_save_result(result, datas[0], affines[0], code, cwd)], ""
        except RegistrationError as e:
            reason = str(e)
            log.warning("%s: not fused, %s; each stack is enhanced on its own", " + ".join(labels), reason)
            made = []
            for i, (label, (data, affine, header)) in enumerate(zip(labels, loaded)):
                result = _run_enhance(label, data, affine, settings, prior, self.inputs.progress_bar)
                made.append(_save_result(result, data, affine, space_code(header), cwd, prefix=f"stack{i}_"))
        self._results.update(fused=not reason, reason=reason, out_file=made[0]["out_file"],
                             out_files=[m["out_file"] for m in made], std_files=[m["std_file"] for m in made],
                             info_files=[m["info_file"] for m in made])
        return runtime
