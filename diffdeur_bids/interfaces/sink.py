"""Write one scan's derivatives into the output dataset, atomically, with their sidecars.

Names come from :mod:`diffdeur_bids.bids.naming` only. Each file goes to a temporary name beside
its destination and is renamed into place, sidecar first and image last, so an image that exists
always has its sidecar and is never half-written. The node always runs (cheap), so a rerun
restores deleted outputs from the work dir.
"""

import json
from pathlib import Path

import nibabel as nib
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


class DerivativesSink(SimpleInterface):
    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        out_dir = Path(self.inputs.output_dir)
        src = self.inputs.source_relpath
        info = json.loads(Path(self.inputs.info_file).read_text())
        prov = sidecars.provenance(info, self.inputs.app)
        zooms = nib.load(self.inputs.in_file).header.get_zooms()[:3]
        meta = self.inputs.source_metadata

        enhanced = naming.enhanced_relpath(src)
        targets = [(enhanced, self.inputs.in_file,
                    sidecars.enhanced_sidecar(src, meta, prov, self.inputs.input_zooms, zooms))]
        if isdefined(self.inputs.std_file) and self.inputs.std_file:
            n = (info.get("settings") or {}).get("num_samples", 0)
            targets.append((naming.std_relpath(src), self.inputs.std_file,
                            sidecars.std_sidecar(src, enhanced, meta, prov, zooms, n)))
        if self.inputs.fmriprep_compat and naming.SourceName.parse(src).suffix == "T1w":
            targets.append((naming.preproc_relpath(src), self.inputs.in_file,
                            sidecars.enhanced_sidecar(src, meta, prov, self.inputs.input_zooms, zooms)))

        written = []
        for relpath, image, sidecar in targets:
            dest = out_dir / relpath
            atomic.write_json(naming.sidecar_of(dest), sidecar)
            atomic.copy_file(image, dest)
            written.append(str(dest))
        self._results["out_files"] = written
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
