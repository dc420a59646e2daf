"""Backend choice and early failures: missing, corrupt or wrong weights; FreeSurfer's mri_synthseg."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from diffdeur_bids.segment import (SegmentationUnavailable, WeightsError, available_backends,  # noqa: E402
                                   choose_backend, inspect_weights, load_network, mri_synthseg_command,
                                   segment_freesurfer)
from diffdeur_bids.segment import labels as lab  # noqa: E402

DATA = Path(__file__).parent / "data" / "synthseg"


@pytest.fixture()
def no_freesurfer(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.delenv("FREESURFER_HOME", raising=False)
    monkeypatch.delenv("FS_LICENSE", raising=False)


def test_no_backend_says_where_to_get_weights(no_freesurfer):
    assert available_backends() == []
    with pytest.raises(SegmentationUnavailable) as err:
        choose_backend()
    message = str(err.value)
    for needle in ("synthseg_2.0.h5", "--synthseg-model", "FREESURFER_HOME", "models/", "mri_synthseg"):
        assert needle in message


def test_missing_weights_file(no_freesurfer, tmp_path):
    with pytest.raises(SegmentationUnavailable, match="not found"):
        choose_backend(tmp_path / "nope.h5")
    with pytest.raises(SegmentationUnavailable, match="--synthseg-model"):
        load_network(tmp_path / "nope.h5")


@pytest.mark.parametrize("content,match", [
    (b"\x00" * 4096, "not an HDF5 file"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:f190bf\nsize 53079152\n", "Git LFS pointer"),
])
def test_wrong_file_types(tmp_path, content, match):
    path = tmp_path / "synthseg_2.0.h5"
    path.write_bytes(content)
    for check in (inspect_weights, load_network):
        with pytest.raises(WeightsError, match=match):
            check(path)


def test_truncated_file(tmp_path):
    """Like the truncated 20 MB LFS copy of the robust weights found in the wild."""
    path = tmp_path / "synthseg_2.0.h5"
    full = (DATA / "synthseg2_tiny.h5").read_bytes()
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_network(path)


def _write_h5(path: Path, layers: dict[str, dict[str, np.ndarray]]) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in layers])
        for name, weights in layers.items():
            g = f.create_group(name)
            g.attrs["weight_names"] = np.array([f"{name}/{w}:0".encode() for w in weights])
            for w, arr in weights.items():
                g.create_dataset(f"{name}/{w}:0", data=arr)
    return path


def test_hdf5_that_is_not_synthseg(tmp_path):
    path = _write_h5(tmp_path / "other.h5", {"dense": {"kernel": np.zeros((3, 3), np.float32)}})
    with pytest.raises(WeightsError, match="no SynthSeg segmentation network"):
        inspect_weights(path)
    parc = _write_h5(tmp_path / "parc.h5", {"unet_parc_likelihood": {"kernel": np.zeros((1, 1, 1, 24, 69), np.float32)}})
    with pytest.raises(WeightsError, match="parcellation"):
        load_network(parc)


def test_inconsistent_shapes(tmp_path):
    with h5py.File(DATA / "synthseg2_tiny.h5") as f:
        layers = {n: {k.split(":")[0]: np.asarray(v) for k, v in f[n][n].items()} for n in f if len(f[n])}
    layers["unet_conv_uparm_6_0"]["kernel"] = np.zeros((3, 3, 3, 7, 16), np.float32)
    with pytest.raises(WeightsError, match="unet_conv_uparm_6_0"):
        load_network(_write_h5(tmp_path / "bad.h5", layers))


def test_robust_flag_must_match_weights(no_freesurfer):
    assert choose_backend(DATA / "synthseg2_tiny.h5") == ("torch", DATA / "synthseg2_tiny.h5")
    with pytest.raises(WeightsError, match="synthseg_robust_2.0.h5"):
        choose_backend(DATA / "synthseg2_tiny.h5", robust=True)
    with pytest.raises(WeightsError, match="synthseg_2.0.h5"):
        choose_backend(DATA / "robust_tiny.h5", robust=False)
    assert available_backends(DATA / "robust_tiny.h5", robust=True) == ["torch"]


FAKE_MRI_SYNTHSEG = '''#!{python}
import argparse, csv, sys
import numpy as np, nibabel as nib
p = argparse.ArgumentParser()
for a in ("--i", "--o", "--vol", "--threads"):
    p.add_argument(a)
for a in ("--robust", "--parc", "--fast", "--cpu"):
    p.add_argument(a, action="store_true")
args = p.parse_args()
open(args.o + ".args", "w").write(" ".join(sys.argv[1:]))
img = nib.load(args.i)
aff = img.affine.copy(); aff[:3, :3] /= 2; aff[:3, 3] -= 0.5   # SynthSeg's 1 mm grid of a 2 mm image
seg = np.zeros([2 * n for n in img.shape], np.int32); seg[4:12, 4:12, 4:12] = 17; seg[12:16, 4:12, 4:12] = 53
nib.save(nib.Nifti1Image(seg, aff), args.o)
names = ["total intracranial", "left cerebral white matter", "left hippocampus", "right hippocampus", "ctx-lh-x"]
with open(args.vol, "w", newline="") as f:
    csv.writer(f).writerows([["subject"] + names, ["input", "1000.5", "0.0", "512.0", "256.0", "3.0"]])
'''


@pytest.fixture()
def fake_freesurfer(monkeypatch, tmp_path):
    home, bindir = tmp_path / "fs", tmp_path / "bin"
    (home / "models").mkdir(parents=True)
    bindir.mkdir()
    script = bindir / "mri_synthseg"
    script.write_text(FAKE_MRI_SYNTHSEG.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    (home / "license.txt").write_text("licence\n")
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setenv("FREESURFER_HOME", str(home))
    monkeypatch.delenv("FS_LICENSE", raising=False)
    return home


def test_freesurfer_backend(fake_freesurfer, tmp_path):
    assert available_backends() == ["freesurfer"]
    assert choose_backend() == ("freesurfer", None)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    image = np.random.default_rng(0).random((10, 10, 10)).astype(np.float32)
    result = segment_freesurfer(image, affine, robust=True, threads=3)
    assert result.backend == "freesurfer" and result.model == "SynthSeg-robust 2.0"
    assert result.labels.shape == image.shape and result.labels.dtype == np.int16
    assert result.labels_1mm.shape == (20, 20, 20)
    assert result.labels[3, 3, 3] == 17 and result.labels[6, 3, 3] == 53 and result.labels[0, 0, 0] == 0
    assert result.tiv_mm3 == 1000.5 and result.volumes == {2: 0.0, 17: 512.0, 53: 256.0}
    assert result.info["other_volumes"] == {"ctx-lh-x": 3.0}
    cmd = result.info["command"].split()
    assert "--robust" in cmd and "--cpu" in cmd and cmd[cmd.index("--threads") + 1] == "3" and "--fast" not in cmd
    # FreeSurfer's own weights also make the torch port available
    shutil.copy(DATA / "synthseg2_tiny.h5", fake_freesurfer / "models" / "synthseg_2.0.h5")
    assert choose_backend(backend="torch") == ("torch", fake_freesurfer / "models" / "synthseg_2.0.h5")


def test_parcellation_lookup_rows_from_freesurfer_lut(fake_freesurfer):
    from diffdeur_bids.segment.freesurfer import freesurfer_lut_rows

    (fake_freesurfer / "FreeSurferColorLUT.txt").write_text(
        "#No. Label Name: R G B A\n1001    ctx-lh-bankssts     25  100 40  0\n"
        "2035    ctx-rh-insula    255 192 32  0\n")
    rows = freesurfer_lut_rows([1001, 2035])
    assert rows[0] == dict(index=1001, name="ctx-lh-bankssts", abbreviation="ctx-lh-bankssts",
                           color="#196428", mapping=8)
    assert rows[1]["color"] == "#ffc020"


def test_freesurfer_needs_a_licence(fake_freesurfer, monkeypatch):
    (fake_freesurfer / "license.txt").unlink()
    assert available_backends() == []
    with pytest.raises(SegmentationUnavailable, match="licence"):
        choose_backend(backend="freesurfer")


def test_mri_synthseg_command_mapping():
    cmd = mri_synthseg_command("in.nii.gz", "out.nii.gz", parc=True, fast=True, threads=4, use_gpu=True,
                               vol_file="v.csv")
    assert cmd == ["mri_synthseg", "--i", "in.nii.gz", "--o", "out.nii.gz", "--parc", "--fast",
                   "--vol", "v.csv", "--threads", "4"]
    assert mri_synthseg_command("a", "b", robust=True, fast=True)[-2:] == ["--robust", "--cpu"]


def test_dseg_lookup_and_volume_rows():
    rows = lab.dseg_lookup_rows()
    assert list(rows[0]) == ["index", "name", "abbreviation", "color", "mapping"]
    assert rows[0] == dict(index=0, name="Unknown", abbreviation="BG", color="#000000", mapping=0)
    by_index = {r["index"]: r for r in rows}
    assert by_index[3]["mapping"] == 8 and by_index[2]["mapping"] == 2 and by_index[24]["mapping"] == 3
    assert by_index[16]["mapping"] == 10 and by_index[47]["mapping"] == 11 and by_index[17]["mapping"] == 9
    assert len({r["abbreviation"] for r in rows}) == len(rows)
    vols = lab.volume_rows({2: 1.23456}, 10.0)
    assert vols[0] == dict(label=None, name="total intracranial", volume_mm3=10.0)
    assert vols[1] == dict(label=2, name="Left-Cerebral-White-Matter", volume_mm3=1.235)
    assert len(vols) == 33 and len(lab.volume_rows({}, None, "1.0")) == 31
    assert os.path.basename(lab.LABEL_TABLE) == "labels_2.0.tsv"
