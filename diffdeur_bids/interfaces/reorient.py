"""Reorient a scan to RAS+ so the method sees one axis convention; world coordinates are unchanged."""

from pathlib import Path

from nipype.interfaces.base import File, SimpleInterface, TraitedSpec

from ..imageio import reorient_to_ras


class _ReorientInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="input NIfTI")


class _ReorientOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the same image with RAS+ voxel axes")


class Reorient(SimpleInterface):
    input_spec = _ReorientInputSpec
    output_spec = _ReorientOutputSpec

    def _run_interface(self, runtime):
        out = Path(runtime.cwd) / "ras.nii.gz"
        self._results["out_file"] = str(reorient_to_ras(self.inputs.in_file, out))
        return runtime
