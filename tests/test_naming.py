"""Derivative names: the one module that builds them, checked against BIDS rules."""

from pathlib import Path, PurePosixPath

import pytest

from diffdeur_bids.bids import naming


@pytest.mark.parametrize("source, expected", [
    ("sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_desc-enhanced_T1w.nii.gz"),
    ("sub-01/ses-02/anat/sub-01_ses-02_T2w.nii.gz", "sub-01/ses-02/anat/sub-01_ses-02_desc-enhanced_T2w.nii.gz"),
    ("sub-01_ses-02_acq-fast_run-01_FLAIR.nii", "sub-01/ses-02/anat/sub-01_ses-02_acq-fast_run-01_desc-enhanced_FLAIR.nii.gz"),
    ("sub-7_ce-gad_rec-norm_run-2_part-mag_T1w.nii.gz", "sub-7/anat/sub-7_ce-gad_rec-norm_run-2_part-mag_desc-enhanced_T1w.nii.gz"),
])
def test_enhanced_name_keeps_source_entities_and_puts_desc_last(source, expected):
    assert naming.enhanced_relpath(source) == PurePosixPath(expected)


def test_other_derivatives():
    src = "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz"
    assert naming.std_relpath(src).name == "sub-01_ses-01_desc-enhancedstd_T1w.nii.gz"
    assert naming.preproc_relpath(src).name == "sub-01_ses-01_desc-preproc_T1w.nii.gz"
    assert naming.synthseg_relpath(src).name == "sub-01_ses-01_desc-synthseg_dseg.nii.gz"


def test_sidecar_keeps_path_type():
    assert naming.sidecar_of("a/sub-01_T1w.nii.gz") == "a/sub-01_T1w.json"
    assert naming.sidecar_of(Path("/x/sub-01_T1w.nii")) == Path("/x/sub-01_T1w.json")
    with pytest.raises(ValueError):
        naming.sidecar_of("sub-01_T1w.mgz")


def test_bids_uri_and_log_dir():
    assert naming.bids_uri("sub-01/anat/sub-01_T1w.nii.gz") == "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"
    assert naming.bids_uri("sub-01/anat/x.nii.gz", dataset="") == "bids::sub-01/anat/x.nii.gz"
    assert naming.subject_log_dir("/out", "01", "RUN") == Path("/out/sub-01/log/RUN")


@pytest.mark.parametrize("bad", ["T1w.nii.gz", "sub-01_T1w.txt", "sub-01_acq_T1w.nii.gz", "ses-1_sub-01_T1w.nii.gz"])
def test_rejects_non_bids_names(bad):
    with pytest.raises(ValueError):
        naming.SourceName.parse(bad)


@pytest.mark.parametrize("label, ok", [("01", True), ("abcXYZ9", True), ("../x", False), ("*", False), ("a-b", False), ("", False)])
def test_labels(label, ok):
    assert naming.is_valid_label(label) is ok


def test_node_names_are_identifiers():
    assert naming.node_name("sub-01/ses-01/anat/sub-01_ses-01_acq-x_T1w.nii.gz") == "sub_01_ses_01_acq_x_T1w"


def test_synthseg_names_and_which_scan_is_segmented():
    from diffdeur_bids.bids import naming

    src = "sub-01/ses-01/anat/sub-01_ses-01_acq-fast_run-2_T2w.nii.gz"
    assert str(naming.synthseg_relpath(src)) == "sub-01/ses-01/anat/sub-01_ses-01_acq-fast_run-2_desc-synthseg_dseg.nii.gz"
    assert str(naming.synthseg_volumes_relpath(src)) == \
        "sub-01/ses-01/anat/sub-01_ses-01_acq-fast_run-2_desc-synthseg_volumes.tsv"
    chosen = naming.synthseg_sources(["sub-01/anat/sub-01_FLAIR.nii.gz", "sub-01/anat/sub-01_T2w.nii.gz",
                                      "sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_acq-x_FLAIR.nii.gz"])
    assert {str(k): v for k, v in chosen.items()} == {
        "sub-01/anat/sub-01_desc-synthseg_dseg.nii.gz": "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-01/anat/sub-01_acq-x_desc-synthseg_dseg.nii.gz": "sub-01/anat/sub-01_acq-x_FLAIR.nii.gz"}
