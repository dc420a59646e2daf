"""A tiny low-field BIDS dataset built in the test session, and helpers to run the app on it.

Layout (what each scan exercises):
  T1w.json (top level)                          MagneticFieldStrength 0.064: inherited by every T1w
  sub-01/ses-01/anat/sub-01_ses-01_T1w          LAS-oriented, so reorientation to RAS+ matters
  sub-01/ses-01/anat/sub-01_ses-01_T2w          own sidecar with the field strength
  sub-01/ses-02/anat/sub-01_ses-02_T1w
  sub-01/ses-02/anat/sub-01_ses-02_acq-hf_T1w   3 T: must be skipped and left alone
  sub-02/anat/sub-02_run-01_T1w                 no sessions, a run entity
  sub-02/anat/sub-02_T2w                        no MagneticFieldStrength: skipped unless --assume-lowfield
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from diffdeur_bids.demo import write_raw_description, write_scan

LF_SHAPE = (20, 24, 8)         # 4 x 4 x 8 mm voxels: an 80 x 96 x 64 mm field of view
LF_ZOOMS = (4.0, 4.0, 8.0)

LF_SCANS = [
    "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz",
    "sub-01/ses-01/anat/sub-01_ses-01_T2w.nii.gz",
    "sub-01/ses-02/anat/sub-01_ses-02_T1w.nii.gz",
    "sub-02/anat/sub-02_run-01_T1w.nii.gz",
]
HF_SCAN = "sub-01/ses-02/anat/sub-01_ses-02_acq-hf_T1w.nii.gz"
NO_FIELD_SCAN = "sub-02/anat/sub-02_T2w.nii.gz"


def phantom(shape, seed: int, contrast: str = "T1w") -> np.ndarray:
    """A head-like ellipsoid with a brighter core and noise: enough structure for the method to run."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grid))
    head = (r < 0.85).astype(np.float32)
    core = (r < 0.5).astype(np.float32)
    img = 400 * head + (200 if contrast == "T1w" else -150) * core
    return (img + rng.normal(0, 20, shape)).clip(0).astype(np.float32)


def build_raw_dataset(root: Path) -> Path:
    write_raw_description(root, "diffdeur test dataset", "Tiny synthetic low-field dataset for diffdeur's tests.")
    (root / "T1w.json").write_text(json.dumps({"MagneticFieldStrength": 0.064, "Manufacturer": "Hyperfine",
                                               "ManufacturersModelName": "Swoop", "RepetitionTime": 1.5}))
    ras = np.diag([*LF_ZOOMS, 1.0])
    ras[:3, 3] = [-40, -48, -32]
    las = ras.copy()
    las[0, 0], las[0, 3] = -LF_ZOOMS[0], 40
    write_scan(root, LF_SCANS[0], phantom(LF_SHAPE, 1), las)
    write_scan(root, LF_SCANS[1], phantom(LF_SHAPE, 2, "T2w"), ras,
               {"MagneticFieldStrength": 0.064, "Manufacturer": "Hyperfine", "EchoTime": 0.2})
    write_scan(root, LF_SCANS[2], phantom(LF_SHAPE, 3), ras)
    write_scan(root, HF_SCAN, phantom((40, 48, 32), 4), np.diag([2.0, 2.0, 2.0, 1.0]), {"MagneticFieldStrength": 3})
    write_scan(root, LF_SCANS[3], phantom(LF_SHAPE, 5), ras)
    write_scan(root, NO_FIELD_SCAN, phantom(LF_SHAPE, 6, "T2w"), ras, {"Manufacturer": "Hyperfine", "EchoTime": 0.2})
    (root / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    return root


@pytest.fixture(scope="session")
def raw_bids(tmp_path_factory) -> Path:
    return build_raw_dataset(tmp_path_factory.mktemp("raw") / "ds")


@pytest.fixture()
def fresh_bids(tmp_path) -> Path:
    """A private copy for tests that change the dataset."""
    return build_raw_dataset(tmp_path / "ds")


def prior_args() -> list[str]:
    """Use the shipped prior; DIFFDEUR_TEST_PRIOR points at other weights (e.g. before one is shipped)."""
    path = os.environ.get("DIFFDEUR_TEST_PRIOR")
    return ["--prior", path] if path else []


@pytest.fixture(scope="module")
def mni_small():
    """A 2 mm MNI152 crop (RAS+): small enough for seconds-long solver runs."""
    nilearn_datasets = pytest.importorskip("nilearn.datasets")
    img = nilearn_datasets.load_mni152_template(resolution=2)
    data = np.asarray(img.get_fdata(), dtype=np.float32)
    crop = (slice(20, 76), slice(30, 90), slice(24, 72))
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ [c.start for c in crop] + img.affine[:3, 3]
    return data[crop], affine
