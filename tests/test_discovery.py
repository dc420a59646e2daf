"""Discovery: low-field selection, metadata inheritance, labels and filters (pybids, no enhancement)."""

import json

import pytest
from conftest import HF_SCAN, LF_SCANS, NO_FIELD_SCAN

from diffdeur_bids.bids.discovery import discover, load_bids_filters, read_field_strength
from diffdeur_bids.errors import EmptySelectionError, InputMissingError, UsageError


def _rel(items):
    return sorted(str(i.relpath) for i in items)


def test_selects_lowfield_and_explains_skips(raw_bids):
    found = discover(raw_bids)
    assert _rel(found.scans) == sorted(LF_SCANS)
    reasons = {str(s.relpath): s.reason for s in found.skipped}
    assert set(reasons) == {HF_SCAN, NO_FIELD_SCAN}
    assert "above --max-field-strength" in reasons[HF_SCAN]
    assert "--assume-lowfield" in reasons[NO_FIELD_SCAN] and "MagneticFieldStrength" in reasons[NO_FIELD_SCAN]
    assert not any(s.error for s in found.skipped)


def test_metadata_is_inherited_and_header_read(raw_bids):
    scan = next(s for s in discover(raw_bids).scans if s.relpath.name == "sub-02_run-01_T1w.nii.gz")
    assert scan.field_strength == 0.064 and scan.metadata["Manufacturer"] == "Hyperfine"  # from /T1w.json
    assert scan.shape == (20, 24, 8) and scan.zooms == (4.0, 4.0, 8.0)
    assert (scan.subject, scan.session, scan.suffix) == ("02", None, "T1w")


def test_assume_lowfield_and_threshold(raw_bids):
    assert NO_FIELD_SCAN in _rel(discover(raw_bids, assume_lowfield=True).scans)
    assert HF_SCAN in _rel(discover(raw_bids, max_field_strength=3.0).scans)


def test_labels_sessions_modalities(raw_bids):
    assert _rel(discover(raw_bids, participant_label=["sub-02"]).scans) == [LF_SCANS[3]]
    assert _rel(discover(raw_bids, participant_label=["01"], session_label=["ses-02"]).scans) == [LF_SCANS[2]]
    assert all(s.suffix == "T2w" for s in discover(raw_bids, modalities=["T2w"]).scans)


def test_unknown_or_bad_labels(raw_bids):
    with pytest.raises(EmptySelectionError, match="not found; the dataset has: 01, 02"):
        discover(raw_bids, participant_label=["03"])
    with pytest.raises(EmptySelectionError, match="session"):
        discover(raw_bids, session_label=["09"])
    with pytest.raises(UsageError):
        discover(raw_bids, participant_label=["../x"])


def test_filters(raw_bids, tmp_path):
    f = tmp_path / "filters.json"
    f.write_text(json.dumps({"t1w": {"session": "02", "acquisition": None}}))
    found = discover(raw_bids, modalities=["T1w"], bids_filters=load_bids_filters(f))
    assert _rel(found.scans) == [LF_SCANS[2]]
    f.write_text(json.dumps({"T1w": {"acquisition": "nothing"}}))
    with pytest.raises(EmptySelectionError):
        discover(raw_bids, modalities=["T1w"], bids_filters=load_bids_filters(f))


@pytest.mark.parametrize("content", ["{not json", '["t1w"]', '{"bold": {}}', '{"t1w": 3}'])
def test_bad_filter_files(tmp_path, content):
    f = tmp_path / "f.json"
    f.write_text(content)
    with pytest.raises(UsageError):
        load_bids_filters(f)


def test_not_bids(tmp_path):
    with pytest.raises(InputMissingError, match="does not exist"):
        discover(tmp_path / "nope")
    with pytest.raises(InputMissingError, match="dataset_description.json"):
        discover(tmp_path)


@pytest.mark.parametrize("value, tesla", [
    (0.064, 0.064), (3, 3.0), (21.1, 21.1), ("0.55", 0.55), ("0.064 T", 0.064), ("0.064T", 0.064),
    ("0.064 tesla", 0.064), ("64 mT", 0.064), ("64mt", 0.064), ("640 G", 0.064), ("640 gauss", 0.064),
    (640, 0.064), ("640", 0.064), (15000, 1.5), (30000, 3.0),           # above 30: gauss, as old DICOM headers
    (None, None), ("low", None), (True, None), (0, None), (-1, None), ("64 kT", None), ([0.064], None),
])
def test_field_strength_values(value, tesla):
    assert read_field_strength(value)[0] == tesla


def test_field_strength_in_other_units_is_read_and_written_in_tesla(fresh_bids, caplog):
    def set_field(relpath, value):
        path = fresh_bids / relpath
        path.write_text(json.dumps({**json.loads(path.read_text()), "MagneticFieldStrength": value}))

    set_field("sub-01/ses-01/anat/sub-01_ses-01_T2w.json", "64 mT")
    set_field("T1w.json", 640)
    set_field("sub-02/anat/sub-02_T2w.json", "low")
    found = discover(fresh_bids, max_field_strength=1.0, assume_lowfield=True)
    by_name = {s.relpath.name: s for s in found.scans}
    for name in ("sub-01_ses-01_T2w.nii.gz", "sub-02_run-01_T1w.nii.gz"):
        assert by_name[name].field_strength == 0.064
    assert "sub-01_ses-02_acq-hf_T1w.nii.gz" not in by_name  # its own sidecar says 3 (T)
    assert by_name["sub-01_ses-01_T2w.nii.gz"].metadata["MagneticFieldStrength"] == 0.064  # the sidecars get tesla
    assert by_name["sub-02_run-01_T1w.nii.gz"].metadata["MagneticFieldStrength"] == 0.064
    assert "MagneticFieldStrength" not in by_name["sub-02_T2w.nii.gz"].metadata  # unreadable: not propagated
    assert by_name["sub-02_T2w.nii.gz"].field_strength is None
    assert "MagneticFieldStrength '64 mT' read as 0.064 T (sub-01/ses-01/anat/sub-01_ses-01_T2w.nii.gz)" in caplog.text
    assert ("MagneticFieldStrength 640 read as 0.064 T (a bare number above 30 is taken as gauss) "
            "(sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz and 2 more); BIDS wants a number in tesla") in caplog.text
    skipped = {str(s.relpath): s.reason for s in discover(fresh_bids).skipped}
    assert skipped[NO_FIELD_SCAN].startswith("MagneticFieldStrength 'low' cannot be read as a field strength")


def test_only_magnitude_images(fresh_bids):
    import shutil

    src = fresh_bids / "sub-02/anat/sub-02_run-01_T1w.nii.gz"
    for part in ("mag", "phase"):
        shutil.copy(src, src.with_name(f"sub-02_run-02_part-{part}_T1w.nii.gz"))
    names = [s.relpath.name for s in discover(fresh_bids, participant_label=["02"]).scans]
    assert names == ["sub-02_run-01_T1w.nii.gz", "sub-02_run-02_part-mag_T1w.nii.gz"]


def test_unreadable_scan_is_reported_as_an_error(fresh_bids):
    (fresh_bids / "sub-02/anat/sub-02_run-01_T1w.nii.gz").write_bytes(b"not a nifti")
    found = discover(fresh_bids, participant_label=["02"], assume_lowfield=True)
    bad = [s for s in found.skipped if s.error]
    assert len(bad) == 1 and "cannot read the NIfTI header" in bad[0].reason
