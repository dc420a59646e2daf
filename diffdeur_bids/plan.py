"""The text users read: the plan before any work, and the summary at the end."""

from __future__ import annotations

from dataclasses import dataclass, field

from .bids import naming


def _mm(zooms) -> str:
    return "x".join(f"{z:g}" for z in zooms) + " mm"


def _shape(shape) -> str:
    return "x".join(str(n) for n in shape)


def _tesla(t) -> str:
    return "? T" if t is None else f"{t:g} T"


def format_plan(discovery, output_shapes: dict, config) -> str:
    """Each scan with field strength, voxel size and shape, and what will happen to it."""
    refused = [s for s in discovery.skipped if s.error]
    skipped = [s for s in discovery.skipped if not s.error]
    n, k = len(discovery.scans), len(skipped)
    cannot = f", {len(refused)} cannot be enhanced" if refused else ""
    lines = [f"Plan: {n} scan(s) to enhance, {k} skipped{cannot} "
             f"(quality {config.quality}, output {config.output_resolution:g} mm, device {config.device_used or config.device})"]
    segmented = {}
    if getattr(config, "synthseg", False):
        lines.append(_synthseg_line(config))
        segmented = {src: dseg for dseg, src in naming.synthseg_sources(s.relpath for s in discovery.scans).items()}
    for scan in discovery.scans:
        out_shape = output_shapes.get(str(scan.relpath))
        seg = f"\n      + segment: {segmented[str(scan.relpath)]}" if str(scan.relpath) in segmented else ""
        lines.append(f"  {scan.relpath}  {_tesla(scan.field_strength)}  {_mm(scan.zooms)}  {_shape(scan.shape)}"
                     f"  -> enhance to {_shape(out_shape) if out_shape else '?'}: "
                     f"{naming.enhanced_relpath(scan.relpath)}{seg}")
    if skipped:
        lines.append("Skipped:")
        lines += [f"  {s.relpath}: {s.reason}" for s in skipped]
    if refused:
        lines.append("Cannot be enhanced (counted as failed; the other scans go on):")
        lines += [f"  {s.relpath}: {s.reason}" for s in refused]
    return "\n".join(lines)


def _synthseg_line(config) -> str:
    kind = "SynthSeg-robust 2.0" if config.synthseg_robust else "SynthSeg 2.0"
    if config.synthseg_backend_used == "freesurfer":
        how = "FreeSurfer mri_synthseg" + (" --parc" if config.synthseg_parc else "")
    else:
        weights = config.synthseg_weights.name if config.synthseg_weights else "?"
        how = f"PyTorch port, weights {weights}"
    return (f"Then segment with {kind} ({how}) the enhanced images marked '+ segment' (one per set of entities: "
            f"T1w, else T2w, else FLAIR) -> *_desc-{naming.DESC_SYNTHSEG}_dseg.nii.gz and "
            f"*_desc-{naming.DESC_SYNTHSEG}_{naming.VOLUMES_SUFFIX}.tsv")


@dataclass
class Outcome:
    done: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    crash_files: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def format_summary(outcome: Outcome, elapsed_s: float, output_dir) -> str:
    lines = [f"Summary: {len(outcome.done)} done, {len(outcome.skipped)} skipped, "
             f"{len(outcome.failed)} failed in {elapsed_s:.0f} s; outputs in {output_dir}"]
    lines += [f"  done     {r}" for r in outcome.done]
    lines += [f"  skipped  {r}" for r in outcome.skipped]
    lines += [f"  FAILED   {r}" for r in outcome.failed]
    if outcome.crash_files:
        lines.append("Crash reports (text):")
        lines += [f"  {c}" for c in outcome.crash_files]
    return "\n".join(lines)
