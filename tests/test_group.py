"""The group level: a table and a page over what the participant runs wrote, recomputing nothing."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import nibabel as nib
import numpy as np
import pytest

from conftest import LF_ZOOMS, phantom
from diffdeur_bids.bids import naming
from diffdeur_bids.bids.tables import read_tsv
from diffdeur_bids.demo import write_raw_description, write_scan
from test_faults import FAST, run_app, shown


def test_group_level_aggregates_three_subjects_one_of_which_failed(tmp_path):
    raw = tmp_path / "raw"
    write_raw_description(raw, "three subjects", "sub-03's scan is cut short, so its enhancement fails.")
    ras = np.diag([*LF_ZOOMS, 1.0])
    for sub in ("01", "02", "03"):
        write_scan(raw, f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz", phantom((20, 24, 8), int(sub)), ras,
                   {"MagneticFieldStrength": 0.064})
    broken = raw / "sub-03" / "anat" / "sub-03_T1w.nii.gz"
    broken.write_bytes(broken.read_bytes()[:-2000])  # a truncated gzip: readable header, data cut short
    out = tmp_path / "out"
    participant = run_app(raw, out, "participant", "-w", tmp_path / "w", "--skip-bids-validation", *FAST)
    assert participant.returncode == 1 and "2 done" in participant.stdout, shown(participant)

    group = run_app(raw, out, "group")
    assert group.returncode == 0, shown(group)
    rows = read_tsv(out / "group_T1w.tsv")
    assert [r["participant_id"] for r in rows] == ["sub-01", "sub-02"]  # the failed subject has no row
    for r in rows:
        meta = json.loads((out / naming.sidecar_of(r["enhanced"])).read_text())["DiffDeuR"]
        assert float(r["noise_input"]) == pytest.approx(meta["NoiseSigma"], rel=1e-6)
        assert float(r["seconds"]) == pytest.approx(meta["EnhanceSeconds"], rel=1e-6)
        assert r["output_shape"] == "x".join(map(str, nib.load(str(out / r["enhanced"])).shape))
        assert float(r["snr_output"]) > float(r["snr_input"]) > 0  # enhancement removed noise
        assert r["input_voxel_mm"] == "4x4x8" and r["field_strength_t"] == "0.064" and r["tiv_mm3"] == "n/a"
    columns = json.loads((out / "group_T1w.json").read_text())
    assert set(columns) == set(rows[0]) and all(v["Description"] for v in columns.values())

    page = (out / "group.html").read_text()
    HTMLParser().feed(page)
    assert "<h2>T1w: 2 image(s)" in page and "data:image/png;base64," in page and "http" not in page

    only = run_app(raw, out, "group", "--participant-label", "02")
    assert only.returncode == 0
    assert [r["participant_id"] for r in read_tsv(out / "group_T1w.tsv")] == ["sub-02"]
    none = run_app(raw, out, "group", "--participant-label", "03")
    assert none.returncode == 18 and "participant" in none.stderr


def test_outliers_are_named_beyond_the_quartiles():
    from diffdeur_bids.group import outliers

    rows = [{"snr_input": v, "seconds": 10} for v in (10, 11, 12, 11, 10, 12, 40)]
    assert outliers(rows) == {6: ["snr_input"]}
