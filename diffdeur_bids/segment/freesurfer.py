"""FreeSurfer backend: run the real ``mri_synthseg`` (FreeSurfer >= 7.3) when it is installed.

It returns the same :class:`SegResult` as the PyTorch port: FreeSurfer writes SynthSeg's 1 mm
segmentation and a volumes CSV; we bring the labels onto the input grid by nearest neighbour
and read the volumes from the CSV, so downstream code does not care which backend ran.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from . import labels as lab
from .errors import BackendError, SegmentationUnavailable
from .pipeline import SegResult
from .preprocess import as_volume, nearest_to_grid


def freesurfer_home() -> Path | None:
    home = os.environ.get("FREESURFER_HOME")
    return Path(home) if home and Path(home).is_dir() else None


def freesurfer_license() -> Path | None:
    """The licence file FreeSurfer itself would use: $FS_LICENSE, else $FREESURFER_HOME/{license.txt,.license}."""
    candidates = [os.environ.get("FS_LICENSE")]
    home = freesurfer_home()
    if home is not None:
        candidates += [str(home / "license.txt"), str(home / ".license")]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


def freesurfer_status() -> tuple[bool, str]:
    """Whether ``mri_synthseg`` can run here, and if not, why."""
    if shutil.which("mri_synthseg") is None:
        return False, "mri_synthseg is not on the PATH"
    if freesurfer_home() is None:
        return False, "FREESURFER_HOME is not set to an existing directory"
    if freesurfer_license() is None:
        return False, "no FreeSurfer licence ($FS_LICENSE or $FREESURFER_HOME/license.txt)"
    return True, "mri_synthseg found"


def mri_synthseg_command(in_file, out_file, *, robust: bool = False, parc: bool = False, fast: bool = False,
                         threads: int | None = None, use_gpu: bool = False, vol_file=None) -> list[str]:
    """Command line of ``mri_synthseg`` for one image (also usable by a Nipype interface)."""
    cmd = ["mri_synthseg", "--i", str(in_file), "--o", str(out_file)]
    if robust:
        cmd.append("--robust")
    if parc:
        cmd.append("--parc")
    if fast and not robust:  # --robust implies --fast in mri_synthseg
        cmd.append("--fast")
    if vol_file is not None:
        cmd += ["--vol", str(vol_file)]
    if threads:
        cmd += ["--threads", str(int(threads))]
    if not use_gpu:
        cmd.append("--cpu")
    return cmd


def read_volumes_csv(path) -> tuple[dict[int, float], float | None, dict[str, float]]:
    """Parse SynthSeg's ``--vol`` CSV: (label -> mm3, total intracranial, other columns by name)."""
    by_name = {r.synthseg_name.lower(): r.index for r in lab.label_infos("2.0")}
    with open(path, newline="") as handle:
        rows = [r for r in csv.reader(handle) if r]
    if len(rows) < 2:
        raise BackendError(f"mri_synthseg volumes file {path} has no data row")
    header, values = rows[0][1:], rows[-1][1:]
    volumes, other, tiv = {}, {}, None
    for name, value in zip(header, values):
        key = name.strip().lower()
        if key == lab.TIV_NAME:
            tiv = float(value)
        elif key in by_name:
            volumes[by_name[key]] = float(value)
        else:
            other[name.strip()] = float(value)
    return volumes, tiv, other


def freesurfer_lut_rows(values) -> list[dict]:
    """BIDS lookup rows for labels outside SynthSeg's 33 (the ``--parc`` cortical parcels), read from the
    installed ``$FREESURFER_HOME/FreeSurferColorLUT.txt``; cortical parcels map to BIDS 8 (CGM)."""
    home = freesurfer_home()
    lut = home / "FreeSurferColorLUT.txt" if home else None
    if lut is None or not lut.is_file():
        raise BackendError("FreeSurferColorLUT.txt not found under $FREESURFER_HOME")
    wanted, rows = {int(v) for v in values}, []
    for line in lut.read_text().splitlines():
        parts = line.split()
        if len(parts) < 5 or not parts[0].isdigit() or int(parts[0]) not in wanted:
            continue
        index, name = int(parts[0]), parts[1]
        r, g, b = (int(x) for x in parts[2:5])
        rows.append(dict(index=index, name=name, abbreviation=name, color=f"#{r:02x}{g:02x}{b:02x}",
                         mapping=8 if 1000 <= index < 3000 else 0))
        wanted.discard(index)
    if wanted:
        raise BackendError(f"labels {sorted(wanted)} are not in {lut}")
    return rows


def segment_freesurfer(image, affine, robust: bool = False, parc: bool = False, threads: int | None = None,
                       use_gpu: bool = False, fast: bool = False, keep_dir=None) -> SegResult:
    """Segment with ``mri_synthseg`` through temporary files; returns labels on the input grid."""
    import nibabel as nib

    ok, reason = freesurfer_status()
    if not ok:
        raise SegmentationUnavailable(f"FreeSurfer backend unavailable: {reason}")
    affine = np.asarray(affine, dtype=np.float64)
    volume = as_volume(image)
    with tempfile.TemporaryDirectory(prefix="synthseg-", dir=keep_dir) as tmp:
        tmp = Path(tmp)
        src, out, vol = tmp / "input.nii.gz", tmp / "input_synthseg.nii.gz", tmp / "volumes.csv"
        nib.save(nib.Nifti1Image(volume, affine), src)
        cmd = mri_synthseg_command(src, out, robust=robust, parc=parc, fast=fast, threads=threads,
                                   use_gpu=use_gpu, vol_file=vol)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stdout + proc.stderr)[-2000:]
            raise BackendError(f"mri_synthseg failed (exit {proc.returncode}): {tail}")
        seg = nib.load(out)
        labels_1mm = np.asarray(seg.dataobj).astype(np.int16)
        affine_1mm = seg.affine.copy()
        volumes, tiv, other = read_volumes_csv(vol)
    labels = nearest_to_grid(labels_1mm, affine_1mm, volume.shape, affine)
    name = "SynthSeg-robust 2.0" if robust else "SynthSeg 2.0"
    return SegResult(labels=labels, affine=affine, volumes=volumes, tiv_mm3=tiv, labels_1mm=labels_1mm,
                     affine_1mm=affine_1mm, model=name + (" + parc" if parc else ""), backend="freesurfer",
                     info={"command": " ".join(cmd), "other_volumes": other})
