"""Write one scan's (or one group of stacks') derivatives into the output dataset, atomically, with their sidecars.

Names come from :mod:`diffdeur_bids.bids.naming` only. Each file goes to a temporary name beside
its destination and is renamed into place, sidecar first and image last, so an image that exists
always has its sidecar and is never half-written. The node always runs (cheap), so a rerun
restores deleted outputs from the work dir.
"""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, isdefined, traits

from .. import atomic
from ..bids import naming, sidecars


class _SinkInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="enhanced image")
    std_file = File(desc="uncertainty map, when num_samples > 1")
    info_file = File(exists=True, mandatory=True, desc="the method's JSON record")
    output_dir = traits.Str(mandatory=True, desc="root of the derivative dataset")
    source_relpath = traits.Str(mandatory=True, desc="raw scan, relative to the BIDS root")
    source_metadata = traits.Dict(desc="raw sidecar metadata (with inheritance)")
    input_zooms = traits.List(traits.Float, desc="raw voxel size, mm")
    app = traits.Dict(desc="run-level provenance: version, run id, command line")
    fmriprep_compat = traits.Bool(False, usedefault=True, desc="also write desc-preproc_T1w")


class _SinkOutputSpec(TraitedSpec):
    out_files = traits.List(File, desc="written derivative images")


def scan_targets(src: str, image: str, std: str | None, info: dict, meta: dict, input_zooms, app: dict,
                 fmriprep_compat: bool, extra: dict | None = None, stacks=None) -> list[tuple]:
    """``(relpath, file, sidecar)`` of one enhanced image: the image, its std map, its desc-preproc copy.

    ``src`` names them; ``stacks`` (the raw stacks, the reference first) when the image fused several.
    ``extra`` goes into the provenance object.
    """
    prov = {**sidecars.provenance(info, app), **(extra or {})}
    zooms = nib.load(image).header.get_zooms()[:3]
    enhanced = naming.enhanced_relpath(src)
    if stacks:
        sidecar = sidecars.fused_sidecar(stacks, meta, prov, input_zooms, zooms)
    else:
        sidecar = sidecars.enhanced_sidecar(src, meta, prov, input_zooms, zooms)
    targets = [(enhanced, image, sidecar)]
    if std:
        n = (info.get("settings") or {}).get("num_samples", 0)
        std_sidecar = sidecars.std_sidecar(src, enhanced, meta, prov, zooms, n)
        targets.append((naming.std_relpath(src), std, {**std_sidecar, "Sources": sidecar["Sources"]}))
    if fmriprep_compat and naming.SourceName.parse(src).suffix == "T1w":
        targets.append((naming.preproc_relpath(src), image, sidecar))
    return targets


def write_targets(out_dir: Path, targets) -> list[str]:
    """Sidecar first, image last, each renamed into place (``None`` sidecar: a file without one)."""
    written = []
    for relpath, image, sidecar in targets:
        dest = out_dir / relpath
        if sidecar is not None:
            atomic.write_json(naming.sidecar_of(dest), sidecar)
        atomic.copy_file(image, dest)
        written.append(str(dest))
    return written


class DerivativesSink(SimpleInterface):
    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        info = json.loads(Path(self.inputs.info_file).read_text())
        std = self.inputs.std_file if isdefined(self.inputs.std_file) else None
        targets = scan_targets(self.inputs.source_relpath, self.inputs.in_file, std, info, self.inputs.source_metadata,
                               self.inputs.input_zooms, self.inputs.app, self.inputs.fmriprep_compat)
        self._results["out_files"] = write_targets(Path(self.inputs.output_dir), targets)
        return runtime


class _StacksSinkInputSpec(TraitedSpec):
    fused = traits.Bool(mandatory=True, desc="whether the stacks were fused")
    reason = traits.Str("", usedefault=True, desc="why they were not")
    out_files = traits.List(File(exists=True), mandatory=True, desc="the fused image, or one per stack")
    std_files = traits.List(traits.Str, desc="uncertainty maps ('' where there is none)")
    info_files = traits.List(File(exists=True), mandatory=True, desc="the method's JSON records")
    output_dir = traits.Str(mandatory=True, desc="root of the derivative dataset")
    group_relpath = traits.Str(mandatory=True, desc="the name the fused image is made from")
    source_relpaths = traits.List(traits.Str, mandatory=True, desc="the stacks, the reference first")
    source_metadata = traits.List(traits.Dict, desc="each stack's raw sidecar metadata")
    shared_metadata = traits.Dict(desc="the metadata every stack shares")
    input_zooms = traits.List(traits.List(traits.Float), desc="each stack's raw voxel size, mm")
    app = traits.Dict(desc="run-level provenance: version, run id, command line")
    fmriprep_compat = traits.Bool(False, usedefault=True, desc="also write desc-preproc_T1w")


class StacksSink(SimpleInterface):
    """Write a group's fused image, its sidecar (``Sources``: every stack) and one ITK transform per stack
    (transforms first, image last); or, when the stacks were not fused, each stack's own derivatives."""

    input_spec = _StacksSinkInputSpec
    output_spec = _SinkOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        from nitransforms.io.itk import ITKLinearTransform

        out_dir, sources, app = Path(self.inputs.output_dir), list(self.inputs.source_relpaths), self.inputs.app
        infos = [json.loads(Path(f).read_text()) for f in self.inputs.info_files]
        stds = list(self.inputs.std_files) if isdefined(self.inputs.std_files) else [""] * len(infos)
        if not self.inputs.fused:
            fusion = {"StackFusion": {"Fused": False, "Reason": self.inputs.reason,
                                      "Group": [naming.bids_uri(s) for s in sources]}}
            targets = []
            for src, image, std, info, meta, zooms in zip(sources, self.inputs.out_files, stds, infos,
                                                          self.inputs.source_metadata, self.inputs.input_zooms):
                targets += scan_targets(src, image, std, info, meta, zooms, app, self.inputs.fmriprep_compat, fusion)
            self._results["out_files"] = write_targets(out_dir, targets)
            return runtime

        info, group = infos[0], self.inputs.group_relpath
        xfms = [naming.xfm_relpath(src, sources[0], sources) for src in sources]
        targets = []
        for i, (entry, xfm) in enumerate(zip(info["stacks"], xfms)):
            # ITK's convention (mode-image): the reference's points -> where the stack saw them
            motion = np.asarray(entry.get("refined_motion") or entry.get("motion") or np.eye(4), dtype=float)
            text = Path(runtime.cwd) / f"stack{i}_xfm.txt"
            text.write_text(ITKLinearTransform.from_ras(motion).to_string())
            targets.append((xfm, str(text), None))
        stacks = sidecars.stacks_record(info.pop("stacks"), sources, xfms)
        targets += scan_targets(group, self.inputs.out_files[0], stds[0] or None, info, self.inputs.shared_metadata,
                                self.inputs.input_zooms[0], app, self.inputs.fmriprep_compat, {"Stacks": stacks},
                                stacks=sources)
        self._results["out_files"] = write_targets(out_dir, targets)
        return runtime


class _SegSinkInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="SynthSeg labels (int16) on the enhanced grid")
    volumes_file = File(exists=True, mandatory=True, desc="volumes table (TSV)")
    info_file = File(exists=True, mandatory=True, desc="the segmentation node's JSON record")
    output_dir = traits.Str(mandatory=True, desc="root of the derivative dataset")
    source_relpath = traits.Str(mandatory=True, desc="raw scan, relative to the BIDS root")
    app = traits.Dict(desc="run-level provenance: version, run id, command line")


class SegmentationSink(SimpleInterface):
    """Write ``desc-synthseg_dseg`` (+ sidecar), the volumes table and the top-level lookup table.

    Order: lookup table (completed under a lock when new labels appear, e.g. ``--synthseg-parc``
    parcels), sidecar, volumes table, image last; so an image that exists has all of them.
    """

    input_spec = _SegSinkInputSpec
    output_spec = _SinkOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        import numpy as np

        from ..bids.dataset import write_synthseg_lut
        from ..segment import dseg_lookup_rows, freesurfer_lut_rows

        out_dir = Path(self.inputs.output_dir)
        src = self.inputs.source_relpath
        info = json.loads(Path(self.inputs.info_file).read_text())
        img = nib.load(self.inputs.in_file)
        rows = dseg_lookup_rows()
        extra = sorted(set(np.unique(np.asarray(img.dataobj)).tolist()) - {r["index"] for r in rows})
        if extra:  # parcels of mri_synthseg --parc: names and colours from FreeSurfer's own LUT
            rows += freesurfer_lut_rows(extra)
        write_synthseg_lut(out_dir, rows)

        dest = out_dir / naming.synthseg_relpath(src)
        sidecar = sidecars.synthseg_sidecar(naming.enhanced_relpath(src), self.inputs.app, info,
                                            img.header.get_zooms()[:3])
        atomic.write_json(naming.sidecar_of(dest), sidecar)
        volumes = out_dir / naming.synthseg_volumes_relpath(src)
        atomic.copy_file(self.inputs.volumes_file, volumes)
        atomic.copy_file(self.inputs.in_file, dest)
        self._results["out_files"] = [str(dest), str(volumes)]
        return runtime
