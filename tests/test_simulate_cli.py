"""``diffdeur-simulate`` writes a scan and sidecar that follow sim-lf-v1."""

import json

import nibabel as nib
import numpy as np
from click.testing import CliRunner

from diffdeur_bids.simulate import main


def _hf(tmp_path):
    data = np.zeros((24, 24, 24), np.float32)
    data[4:20, 4:20, 4:20] = np.random.default_rng(0).uniform(50, 100, (16, 16, 16))
    path = tmp_path / "hf.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0])), path)
    return path


def test_simulate_writes_lf_scan_sidecar_and_gt(tmp_path):
    out = tmp_path / "sub-01" / "anat" / "sub-01_T1w"
    res = CliRunner().invoke(main, [str(_hf(tmp_path)), str(out), "--track", "2mm", "--ground-truth", "--random-seed", "3"])
    assert res.exit_code == 0, res.output
    lf = nib.load(str(out) + ".nii.gz")
    gt = nib.load(str(out) + "_gt.nii.gz")
    assert lf.shape == (24, 24, 8) and gt.shape == (24, 24, 24)
    np.testing.assert_allclose(lf.affine, np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 3, 1], [0, 0, 0, 1.0]]))
    side = json.loads((tmp_path / "sub-01" / "anat" / "sub-01_T1w.json").read_text())
    assert side["MagneticFieldStrength"] == 0.064
    assert side["SimulatedLowField"]["Factors"] == [1, 1, 3]


def test_simulate_custom_factors_and_bad_input(tmp_path):
    out = tmp_path / "lf"
    res = CliRunner().invoke(main, [str(_hf(tmp_path)), str(out), "-k", "2,2,4", "--noise-sigma", "0"])
    assert res.exit_code == 0, res.output
    assert nib.load(str(out) + ".nii.gz").shape == (12, 12, 6)
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), flat)
    res = CliRunner().invoke(main, [str(flat), str(tmp_path / "x")])
    assert res.exit_code == 65 and "no positive voxels" in res.output


def test_simulate_stacks_writes_three_moved_stacks_with_their_true_motion(tmp_path):
    out = tmp_path / "sub-01" / "anat" / "sub-01_T2w"
    res = CliRunner().invoke(main, [str(_hf(tmp_path)), str(out), "--stacks", "--ground-truth", "--random-seed", "2"])
    assert res.exit_code == 0, res.output
    folder = out.parent
    for name, thick_axis in (("axi", 2), ("cor", 1), ("sag", 0)):
        img = nib.load(folder / f"sub-01_acq-{name}_T2w.nii.gz")
        zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
        world_thick = int(np.argmax(np.abs(img.affine[:3, int(np.argmax(zooms))])))
        assert sorted(np.round(zooms, 3)) == [1.5, 1.5, 5.0] and world_thick == thick_axis
        side = json.loads((folder / f"sub-01_acq-{name}_T2w.json").read_text())
        motion = np.array(side["SimulatedLowField"]["TrueMotion"])
        assert side["SimulatedLowField"]["Protocol"] == "sim-lf-v2" and motion.shape == (4, 4)
        assert np.allclose(motion, np.eye(4)) == (name == "axi")  # the later stacks saw the head moved
    assert nib.load(folder / "sub-01_T2w_gt.nii.gz").shape == (24, 24, 24)
