"""The segmentation node: load the enhanced image, run SynthSeg, save labels (int16), volumes and info.

Thin: the work is :func:`diffdeur_bids.segment.segment` (PyTorch port) or
:func:`diffdeur_bids.segment.segment_freesurfer` (``mri_synthseg``). The backend and the weights were
chosen and checked at start-up (``runner.check_synthseg``); ``model_sha256`` is hashed so new weights
redo the work, while ``model_file``, ``device``, ``threads`` and ``use_gpu`` are ``nohash``. ``use_gpu``
also tells Nipype's MultiProc to count the node against its GPU slots (``Node.is_gpu_node``).
"""

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, traits

from ..bids.tables import VOLUME_COLUMNS, to_tsv
from ..imageio import load_volume, save_labels, space_code

log = logging.getLogger("nipype.interface")


class _SynthSegInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="enhanced image")
    backend = traits.Enum("torch", "freesurfer", mandatory=True, desc="torch (the port) or freesurfer (mri_synthseg)")
    model_file = traits.Str("", usedefault=True, nohash=True, desc="torch backend weights (.h5 or .safetensors)")
    model_sha256 = traits.Str("", usedefault=True, desc="sha256 of the weights, so new weights redo the work")
    official_file = traits.Str("", usedefault=True, nohash=True, desc="official file these weights are, if any")
    robust = traits.Bool(False, usedefault=True, desc="SynthSeg-robust 2.0")
    parc = traits.Bool(False, usedefault=True, desc="cortical parcellation (freesurfer backend only)")
    fast = traits.Bool(False, usedefault=True, desc="skip flip averaging and topology clean-up (--fast)")
    device = traits.Str("cpu", usedefault=True, nohash=True, desc="torch device (torch backend)")
    threads = traits.Int(1, usedefault=True, nohash=True, desc="CPU threads")
    use_gpu = traits.Bool(False, usedefault=True, nohash=True, desc="for Nipype's GPU scheduling; freesurfer: no --cpu")


class _SynthSegOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="labels (int16) on the enhanced image's grid")
    volumes_file = File(exists=True, desc="volumes table (TSV): label, name, volume_mm3")
    info_file = File(exists=True, desc="JSON record of how the segmentation was made")


def _freesurfer_version() -> str | None:
    home = os.environ.get("FREESURFER_HOME")
    stamp = Path(home) / "build-stamp.txt" if home else None
    try:
        return stamp.read_text().strip().splitlines()[0] if stamp else None
    except (OSError, IndexError):
        return None


def _parcel_rows(labels: np.ndarray, other_volumes: dict, known) -> list[dict]:
    """Volume rows of the ``--parc`` parcels (names from mri_synthseg's CSV, label values from FreeSurfer's LUT)."""
    from ..segment import BackendError, freesurfer_lut_rows

    extra = sorted(set(np.unique(labels).tolist()) - set(known))
    try:
        by_name = {r["name"].lower(): r["index"] for r in freesurfer_lut_rows(extra)} if extra else {}
    except BackendError:
        by_name = {}
    return [dict(label=by_name.get(name.lower()), name=name, volume_mm3=round(float(v), 3))
            for name, v in other_volumes.items()]


class SynthSeg(SimpleInterface):
    input_spec = _SynthSegInputSpec
    output_spec = _SynthSegOutputSpec

    def _run_interface(self, runtime):
        import torch

        from ..segment import segment, segment_freesurfer

        inputs = self.inputs
        data, affine, header = load_volume(inputs.in_file)
        code = space_code(header)  # the enhanced image's space
        started = time.time()
        if inputs.backend == "torch":
            result = segment(data, affine, inputs.model_file, robust=inputs.robust, device=inputs.device,
                             threads=inputs.threads, fast=inputs.fast)
        else:
            result = segment_freesurfer(data, affine, robust=inputs.robust, parc=inputs.parc, threads=inputs.threads,
                                        use_gpu=inputs.use_gpu, fast=inputs.fast, keep_dir=runtime.cwd)
        elapsed = time.time() - started
        log.info("%s: SynthSeg (%s) done in %.0f s", Path(inputs.in_file).name, result.backend, elapsed)

        cwd = Path(runtime.cwd)
        out_file = save_labels(cwd / "synthseg_dseg.nii.gz", result.labels, affine, code)
        rows = result.volume_rows()
        other = result.info.get("other_volumes") or {}
        if other:
            rows += _parcel_rows(result.labels, other, [r["label"] for r in rows] + [0])
        volumes_file = cwd / "synthseg_volumes.tsv"
        volumes_file.write_text(to_tsv(rows, VOLUME_COLUMNS))

        info = {
            "backend": result.backend, "model": result.model,
            "model_file": Path(inputs.model_file).name if inputs.model_file else None,
            "model_sha256": inputs.model_sha256 or None, "official_file": inputs.official_file or None,
            "robust": bool(inputs.robust), "parc": bool(inputs.parc),
            "fast": bool(result.info.get("fast", inputs.fast)),
            "tiv_mm3": None if result.tiv_mm3 is None else round(float(result.tiv_mm3), 3),
            "labels_grid": "enhanced image grid (nearest neighbour from SynthSeg's 1 mm grid)",
            "elapsed_seconds": round(elapsed, 1),
        }
        if result.backend == "torch":
            info.update(crop="head", device=str(inputs.device), threads=int(inputs.threads), torch=torch.__version__)
        else:
            info.update(command=result.info.get("command"), freesurfer=_freesurfer_version(),
                        device="gpu" if inputs.use_gpu else "cpu", threads=int(inputs.threads))
        info_file = cwd / "synthseg_info.json"
        info_file.write_text(json.dumps(info, indent=2, default=str))
        self._results.update(out_file=str(out_file), volumes_file=str(volumes_file), info_file=str(info_file))
        return runtime
