"""The plan, made before anything is read or enhanced: each scan's (or group of stacks') output grid
and memory, and its text.

A scan whose grid cannot be computed, whose output grid is larger than the method handles, or
that needs more memory than ``--mem`` (or this machine, or its cgroup) allows is refused: it
moves to the discovery's skipped list with the reason, and the other scans go on. A group of
stacks is refused as a whole, each of its stacks listed with the reason.
"""

from __future__ import annotations

import math

from .bids import discovery as disc
from .bids import naming
from .bids.stacks import StackGroup
from .config import Config, Resolved
from .imageio import ras_grid
from .resources import estimate_enhance_mem_gb, format_gb, memory_limit_gb


def output_shape(scan, resolution: float) -> tuple[int, ...]:
    """Output grid shape of a scan, computed from its header on its RAS+ grid exactly as the method will."""
    from .enhance import output_grid

    shape, affine = ras_grid(scan.shape[:3], scan.affine)
    return tuple(output_grid(shape, affine, resolution).shape)


def scan_plan(scan, config: Config) -> dict:
    """One scan's (or group's) entry in the memory plan: its output grid and the memory its enhancement needs."""
    shape = output_shape(scan, config.output_resolution)
    others = [s.shape[:3] for s in scan.stacks[1:]] if isinstance(scan, StackGroup) else []
    return {"output_shape": list(shape),
            "mem_gb": estimate_enhance_mem_gb(shape, config.num_samples, scan.shape[:3], stacks=others)}


def _refuse(found, unit, reason: str) -> None:
    for relpath in unit.sources if isinstance(unit, StackGroup) else [unit.relpath]:
        found.skipped.append(disc.Skipped(relpath, reason, error=True))


def memory_limit(config: Config) -> tuple[float | None, str]:
    """The memory the plan must fit in, and how to say where that limit comes from."""
    if config.mem_gb:
        return config.mem_gb, f"--mem {format_gb(config.mem_gb)} allows"
    limit = memory_limit_gb()
    return limit, (f"this machine has ({format_gb(limit)})" if limit else "")


def plan_scans(found, config: Config) -> dict:
    """The memory plan of the scans that fit (relpath -> :func:`scan_plan`); the others move to ``found.skipped``."""
    from .enhance import MAX_OUTPUT_VOXELS

    limit, allowed = memory_limit(config)
    plan, keep = {}, []
    for scan in found.scans:
        try:
            entry = scan_plan(scan, config)
        except Exception as e:  # a singular or non-finite affine
            _refuse(found, scan, f"its output grid cannot be computed from the header affine ({e}); fix the header")
            continue
        shape, need = entry["output_shape"], entry["mem_gb"]
        size = (f"input {'x'.join(map(str, scan.shape[:3]))}, output grid {'x'.join(map(str, shape))} "
                f"at {config.output_resolution:g} mm")
        too_much_memory = limit is not None and need > limit
        if too_much_memory or math.prod(shape) > MAX_OUTPUT_VOXELS:
            why = f"more than {allowed}" if too_much_memory else \
                f"more than the {MAX_OUTPUT_VOXELS / 1e6:.0f} M output voxels diffdeur handles"
            fused = f" to fuse its {len(scan.stacks)} stacks" if isinstance(scan, StackGroup) else ""
            separate = ", --stacks separate" if fused else ""
            _refuse(found, scan, f"too large: it needs about {format_gb(need)} of memory{fused} ({size}), {why}; use "
                                 f"a coarser --output-resolution{separate}, crop the image, or run it where more "
                                 "memory is available")
            continue
        plan[str(scan.relpath)] = entry
        keep.append(scan)
    found.scans = keep
    return plan


def _mm(zooms) -> str:
    return "x".join(f"{z:g}" for z in zooms) + " mm"


def _shape(shape) -> str:
    return "x".join(str(n) for n in shape)


def _tesla(t) -> str:
    return "? T" if t is None else f"{t:g} T"


def format_plan(discovery, config: Config, resolved: Resolved) -> str:
    """Each scan with field strength, voxel size and shape, and what will happen to it."""
    refused = [s for s in discovery.skipped if s.error]
    skipped = [s for s in discovery.skipped if not s.error]
    n, k = len(discovery.scans), len(skipped)
    cannot = f", {len(refused)} cannot be enhanced" if refused else ""
    groups = [u for u in discovery.scans if isinstance(u, StackGroup)]
    fused = f" ({len(groups)} of them fused from {sum(len(g.stacks) for g in groups)} stacks)" if groups else ""
    lines = [f"Plan: {n} scan(s) to enhance{fused}, {k} skipped{cannot} "
             f"(quality {config.quality}, output {config.output_resolution:g} mm, device {resolved.device})"]
    segmented = {}
    if config.synthseg:
        lines.append(_synthseg_line(config, resolved))
        segmented = {src: dseg for dseg, src in naming.synthseg_sources(s.relpath for s in discovery.scans).items()}
    for scan in discovery.scans:
        out_shape = resolved.output_shape(scan.relpath)
        seg = f"\n      + segment: {segmented[str(scan.relpath)]}" if str(scan.relpath) in segmented else ""
        target = f"-> enhance to {_shape(out_shape) if out_shape else '?'}: {naming.enhanced_relpath(scan.relpath)}{seg}"
        if isinstance(scan, StackGroup):
            lines.append(f"  fuse {len(scan.stacks)} stacks {target}")
            for stack in scan.stacks:
                role = "  reference (smallest in-plane voxel)" if stack is scan.reference else ""
                lines.append(f"      {stack.relpath}  {_tesla(stack.field_strength)}  {_mm(stack.zooms)}  "
                             f"{_shape(stack.shape)}{role}")
        else:
            lines.append(f"  {scan.relpath}  {_tesla(scan.field_strength)}  {_mm(scan.zooms)}  {_shape(scan.shape)}"
                         f"  {target}")
    if discovery.notes:
        lines.append("Stacks kept apart:")
        lines += [f"  {note}" for note in discovery.notes]
    lines += [f"Warning: {w}" for w in _fmriprep_warnings(discovery, config)]
    if skipped:
        lines.append("Skipped:")
        lines += [f"  {s.relpath}: {s.reason}" for s in skipped]
    if refused:
        lines.append("Cannot be enhanced (counted as failed; the other scans go on):")
        lines += [f"  {s.relpath}: {s.reason}" for s in refused]
    return "\n".join(lines)


def _fmriprep_warnings(discovery, config: Config) -> list[str]:
    """With --fmriprep-compat: subjects and sessions that would still get several desc-preproc_T1w."""
    if not config.fmriprep_compat:
        return []
    t1w = {}
    for unit in discovery.scans:
        if unit.suffix == "T1w":
            t1w.setdefault((unit.subject, unit.session), []).append(str(naming.preproc_relpath(unit.relpath)))
    return [f"--fmriprep-compat writes {len(names)} desc-preproc_T1w for sub-{sub}{f' ses-{ses}' if ses else ''} "
            f"({', '.join(names)}); fMRIPrep takes one T1w: keep one with its --bids-filter-file or fuse them "
            "(--stacks auto, when they are stacks of one scan)" for (sub, ses), names in t1w.items() if len(names) > 1]


def _synthseg_line(config: Config, resolved: Resolved) -> str:
    kind = "SynthSeg-robust 2.0" if config.synthseg_robust else "SynthSeg 2.0"
    if resolved.synthseg_backend == "freesurfer":
        how = "FreeSurfer mri_synthseg" + (" --parc" if config.synthseg_parc else "")
    else:
        weights = resolved.synthseg_weights.name if resolved.synthseg_weights else "?"
        how = f"PyTorch port, weights {weights}"
    return (f"Then segment with {kind} ({how}) the enhanced images marked '+ segment' (one per set of entities: "
            f"T1w, else T2w, else FLAIR) -> *_desc-{naming.DESC_SYNTHSEG}_dseg.nii.gz and "
            f"*_desc-{naming.DESC_SYNTHSEG}_{naming.VOLUMES_SUFFIX}.tsv")
