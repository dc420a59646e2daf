"""The SynthSeg node and its sink, without the rest of the app: FreeSurfer backend with --parc (a fake
mri_synthseg), the top-level lookup table written once and completed safely, the volumes table."""

from __future__ import annotations

import json
import stat
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from diffdeur_bids.bids import naming
from diffdeur_bids.bids.dataset import write_synthseg_lut
from diffdeur_bids.bids.tables import VOLUME_COLUMNS, read_tsv
from diffdeur_bids.segment import dseg_lookup_rows

pytest.importorskip("h5py")
from test_segment_backends import FAKE_MRI_SYNTHSEG  # noqa: E402

SRC = "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz"


@pytest.fixture()
def fake_freesurfer_parc(monkeypatch, tmp_path):
    """mri_synthseg stand-in that writes a cortical parcel (1001) as --parc does."""
    home, bindir = tmp_path / "fs", tmp_path / "bin"
    (home / "models").mkdir(parents=True)
    bindir.mkdir()
    script = bindir / "mri_synthseg"
    script.write_text(FAKE_MRI_SYNTHSEG.format(python=sys.executable).replace(
        "seg[12:16, 4:12, 4:12] = 53", "seg[12:16, 4:12, 4:12] = 1001").replace('"ctx-lh-x"', '"ctx-lh-bankssts"'))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    (home / "license.txt").write_text("licence\n")
    (home / "build-stamp.txt").write_text("freesurfer-linux-ubuntu22_x86_64-7.4.1-20230614-7eb8460\n")
    (home / "FreeSurferColorLUT.txt").write_text("#No. Label Name: R G B A\n1001    ctx-lh-bankssts     25  100 40  0\n")
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setenv("FREESURFER_HOME", str(home))
    monkeypatch.delenv("FS_LICENSE", raising=False)
    return home


def test_freesurfer_parc_node_and_sink(fake_freesurfer_parc, tmp_path, monkeypatch):
    from diffdeur_bids.imageio import save_volume
    from diffdeur_bids.interfaces import SegmentationSink, SynthSeg

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10, -12, -8]
    enhanced = save_volume(tmp_path / "enhanced.nii.gz", np.random.default_rng(0).random((10, 12, 9)), affine)
    monkeypatch.chdir(tmp_path)
    res = SynthSeg(in_file=str(enhanced), backend="freesurfer", parc=True, threads=2).run()
    labels = nib.load(res.outputs.out_file)
    assert labels.get_data_dtype() == np.int16 and labels.shape == (10, 12, 9)
    np.testing.assert_array_equal(labels.affine, affine)
    assert set(np.unique(np.asarray(labels.dataobj))) == {0, 17, 1001}
    rows = read_tsv(res.outputs.volumes_file)
    assert list(rows[0]) == list(VOLUME_COLUMNS) and rows[0] == dict(label="n/a", name="total intracranial",
                                                                      volume_mm3="1000.5")
    assert rows[-1] == dict(label="1001", name="ctx-lh-bankssts", volume_mm3="3")  # the parcel, from the CSV
    info = json.loads(Path(res.outputs.info_file).read_text())
    assert info["backend"] == "freesurfer" and info["parc"] is True and "--parc" in info["command"]
    assert info["freesurfer"].startswith("freesurfer-linux") and info["device"] == "cpu"

    out = tmp_path / "out"
    app = {"Version": "0.1.0", "RunUUID": "r"}
    SegmentationSink(in_file=res.outputs.out_file, volumes_file=res.outputs.volumes_file,
                     info_file=res.outputs.info_file, output_dir=str(out), source_relpath=SRC, app=app).run()
    lut = {int(r["index"]): r for r in read_tsv(out / naming.SYNTHSEG_LUT)}
    assert set(lut) == {r["index"] for r in dseg_lookup_rows()} | {1001}  # completed with the parcel
    assert lut[1001] == dict(index="1001", name="ctx-lh-bankssts", abbreviation="ctx-lh-bankssts",
                             color="#196428", mapping="8")
    sidecar = json.loads((out / naming.sidecar_of(naming.synthseg_relpath(SRC))).read_text())
    assert sidecar["Sources"] == ["bids::sub-01/ses-01/anat/sub-01_ses-01_desc-enhanced_T1w.nii.gz"]
    assert sidecar["SynthSeg"]["Parcellation"] is True and sidecar["SynthSeg"]["Backend"] == "freesurfer"
    assert sidecar["DiffDeuR"] == app and sidecar["Resolution"] == "2x2x2 mm"
    assert (out / naming.synthseg_volumes_relpath(SRC)).read_text() == Path(res.outputs.volumes_file).read_text()
    top = json.loads((out / naming.SYNTHSEG_LUT_SIDECAR).read_text())
    assert top["Description"] == sidecar["Description"]  # inherited: same value, no override warning


def test_lookup_table_written_once_and_completed(tmp_path):
    base = dseg_lookup_rows()
    path = write_synthseg_lut(tmp_path, base)
    first = path.read_text()
    assert first.splitlines()[0] == "index\tname\tabbreviation\tcolor\tmapping"
    assert first.splitlines()[3] == "3\tLeft-Cerebral-Cortex\tL-CCX\t#cd3e4e\t8"
    stamp = path.stat().st_mtime_ns
    write_synthseg_lut(tmp_path, base[:5])  # nothing new: not rewritten
    assert path.stat().st_mtime_ns == stamp and path.read_text() == first
    extra = [dict(index=2035, name="ctx-rh-insula", abbreviation="ctx-rh-insula", color="#ffc020", mapping=8),
             dict(index=1001, name="ctx-lh-bankssts", abbreviation="ctx-lh-bankssts", color="#196428", mapping=8)]
    write_synthseg_lut(tmp_path, base + extra)
    lines = path.read_text().splitlines()
    assert lines[: len(base) + 1] == first.splitlines() and [ln.split("\t")[0] for ln in lines[-2:]] == ["1001", "2035"]


def test_lookup_table_concurrent_writers(tmp_path):
    base = dseg_lookup_rows()
    extra = [dict(index=1000 + i, name=f"parcel{i}", abbreviation=f"p{i}", color="#000000", mapping=8)
             for i in range(8)]
    threads = [threading.Thread(target=write_synthseg_lut, args=(tmp_path, base + extra[i:i + 1])) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    indices = [int(r["index"]) for r in read_tsv(tmp_path / naming.SYNTHSEG_LUT)]
    assert sorted(indices) == sorted({r["index"] for r in base + extra})  # every row exactly once
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
