"""Which scans are fused as stacks of one contrast, their reference, and the names of what a group writes."""

from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np
import pytest

from diffdeur_bids.bids import naming
from diffdeur_bids.bids.discovery import discover
from diffdeur_bids.bids.stacks import StackGroup, group_stacks
from diffdeur_bids.demo import write_raw_description, write_scan

FIELD = {"MagneticFieldStrength": 0.064}


def stack_affine(thick_axis: int, in_plane: float = 1.5, thick: float = 5.0, shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    aff = np.diag([in_plane, in_plane, in_plane, 1.0])
    aff[thick_axis, thick_axis] = thick
    aff[:3, 3] = np.array([-30.0, -30.0, -30.0]) + np.asarray(shift)
    return aff


def shape_of(thick_axis: int) -> tuple[int, int, int]:
    shape = [40, 40, 40]
    shape[thick_axis] = 12
    return tuple(shape)


def write(root, relpath, thick_axis=2, sidecar=FIELD, **kw):
    data = np.random.default_rng(0).random(shape_of(thick_axis)).astype(np.float32)
    write_scan(root, relpath, data, stack_affine(thick_axis, **kw), sidecar)


def grouped(root, mode="auto"):
    found = discover(root)
    return found, group_stacks(found.scans, found.skipped, mode)


@pytest.fixture()
def ds(tmp_path):
    root = tmp_path / "ds"
    write_raw_description(root, "stacks", "grouping test")
    return root


def test_three_stacks_form_one_group_named_from_the_shared_entities(ds):
    for name, axis in (("axi", 2), ("cor", 1), ("sag", 0)):
        write(ds, f"sub-01/ses-1/anat/sub-01_ses-1_acq-{name}_run-1_T2w.nii.gz", axis)
    write(ds, "sub-01/ses-1/anat/sub-01_ses-1_acq-axi_run-1_T1w.nii.gz", 2)  # another suffix: alone
    write(ds, "sub-01/ses-2/anat/sub-01_ses-2_acq-cor_T2w.nii.gz", 1)        # another session: alone
    _, grouping = grouped(ds)
    groups = [u for u in grouping.units if isinstance(u, StackGroup)]
    assert len(groups) == 1 and len(grouping.units) == 3
    group = groups[0]
    # run-1 is shared, so it stays in the name; acq differs, so it goes
    assert group.relpath == PurePosixPath("sub-01/ses-1/anat/sub-01_ses-1_run-1_T2w.nii.gz")
    assert naming.enhanced_relpath(group.relpath).name == "sub-01_ses-1_run-1_desc-enhanced_T2w.nii.gz"
    # equal in-plane voxels: the first in BIDS order (axi) is the reference
    assert [group.label(s) for s in group.stacks] == ["axi", "cor", "sag"]
    assert naming.xfm_relpath(group.sources[1], group.sources[0], group.sources) == PurePosixPath(
        "sub-01/ses-1/anat/sub-01_ses-1_acq-cor_run-1_from-orig_to-axi_mode-image_xfm.txt")


def test_the_reference_is_the_stack_with_the_smallest_in_plane_voxel(ds):
    write(ds, "sub-01/anat/sub-01_acq-axi_T2w.nii.gz", 2)
    write(ds, "sub-01/anat/sub-01_acq-cor_T2w.nii.gz", 1, in_plane=1.2)
    write(ds, "sub-01/anat/sub-01_acq-sag_T2w.nii.gz", 0)
    _, grouping = grouped(ds)
    (group,) = grouping.units
    assert [str(s.relpath.name) for s in group.stacks][0] == "sub-01_acq-cor_T2w.nii.gz"
    assert group.zooms == pytest.approx((1.2, 5.0, 1.2))


def test_runs_on_one_grid_are_repeats_not_stacks(ds):
    write(ds, "sub-01/anat/sub-01_run-1_T2w.nii.gz", 2)
    write(ds, "sub-01/anat/sub-01_run-2_T2w.nii.gz", 2)
    _, grouping = grouped(ds)
    assert len(grouping.units) == 2 and not any(isinstance(u, StackGroup) for u in grouping.units)
    assert "same grid as sub-01/anat/sub-01_run-1_T2w.nii.gz" in grouping.notes[0]


def test_stacks_offset_by_half_a_slice_are_fused(ds):
    write(ds, "sub-01/anat/sub-01_run-1_T2w.nii.gz", 2)
    write(ds, "sub-01/anat/sub-01_run-2_T2w.nii.gz", 2, shift=(0, 0, 2.5))
    _, grouping = grouped(ds)
    (group,) = grouping.units
    assert isinstance(group, StackGroup) and group.label(group.stacks[1]) == "run2"
    assert group.relpath.name == "sub-01_T2w.nii.gz"


def test_a_stack_outside_the_reference_field_of_view_is_kept_apart(ds):
    write(ds, "sub-01/anat/sub-01_acq-axi_T2w.nii.gz", 2)
    write(ds, "sub-01/anat/sub-01_acq-cor_T2w.nii.gz", 1, shift=(0, 0, 200))
    _, grouping = grouped(ds)
    assert len(grouping.units) == 2 and "shares only 0%" in grouping.notes[0]


def test_separate_leaves_every_scan_alone(ds):
    write(ds, "sub-01/anat/sub-01_acq-axi_T2w.nii.gz", 2)
    write(ds, "sub-01/anat/sub-01_acq-cor_T2w.nii.gz", 1)
    found, grouping = grouped(ds, "separate")
    assert grouping.units == found.scans and not grouping.notes


def test_an_unreadable_stack_refuses_its_group_and_names_itself(ds):
    for name, axis in (("axi", 2), ("cor", 1), ("sag", 0)):
        write(ds, f"sub-01/anat/sub-01_acq-{name}_T2w.nii.gz", axis)
    write(ds, "sub-02/anat/sub-02_acq-axi_T2w.nii.gz", 2)
    write(ds, "sub-02/anat/sub-02_acq-cor_T2w.nii.gz", 1)
    (ds / "sub-01/anat/sub-01_acq-sag_T2w.nii.gz").write_bytes(b"not a nifti")
    found, grouping = grouped(ds)
    assert [str(u.relpath) for u in grouping.units] == ["sub-02/anat/sub-02_T2w.nii.gz"]  # the other group goes on
    refused = {str(s.relpath): s.reason for s in grouping.refused}
    assert set(refused) == {"sub-01/anat/sub-01_acq-axi_T2w.nii.gz", "sub-01/anat/sub-01_acq-cor_T2w.nii.gz"}
    assert all("sub-01/anat/sub-01_acq-sag_T2w.nii.gz" in why and "--stacks separate" in why
               for why in refused.values())


def test_a_group_named_like_a_scan_enhanced_alone_is_not_fused(ds):
    # elsewhere (enhanced alone), and named as the fused axi + cor would be
    write(ds, "sub-01/anat/sub-01_T2w.nii.gz", 2, in_plane=2.0, shift=(0, 0, 200))
    write(ds, "sub-01/anat/sub-01_acq-axi_T2w.nii.gz", 2)
    write(ds, "sub-01/anat/sub-01_acq-cor_T2w.nii.gz", 1)
    _, grouping = grouped(ds)
    assert not any(isinstance(u, StackGroup) for u in grouping.units) and len(grouping.units) == 3
    assert any("not fused" in note and "sub-01/anat/sub-01_T2w.nii.gz's" in note for note in grouping.notes)


def test_a_group_keeps_only_the_metadata_its_stacks_share(ds):
    write(ds, "sub-01/anat/sub-01_acq-axi_T2w.nii.gz", 2, sidecar={**FIELD, "EchoTime": 0.1, "ReceiveCoilName": "a"})
    write(ds, "sub-01/anat/sub-01_acq-cor_T2w.nii.gz", 1, sidecar={**FIELD, "EchoTime": 0.1, "ReceiveCoilName": "b"})
    _, grouping = grouped(ds)
    (group,) = grouping.units
    assert group.metadata["EchoTime"] == 0.1 and "ReceiveCoilName" not in group.metadata


def test_stack_labels_and_names():
    sources = ["sub-01/anat/sub-01_acq-axi_run-1_T2w.nii.gz", "sub-01/anat/sub-01_acq-cor_run-2_T2w.nii.gz"]
    assert naming.differing_entities(sources) == ["acq", "run"]
    assert [naming.stack_label(s, sources) for s in sources] == ["axirun1", "corrun2"]
    assert naming.group_relpath(sources) == PurePosixPath("sub-01/anat/sub-01_T2w.nii.gz")


def test_fmriprep_compat_warns_only_when_a_session_still_gets_several_t1w(ds, tmp_path):
    from diffdeur_bids.config import Config
    from diffdeur_bids.plan import _fmriprep_warnings

    write(ds, "sub-01/anat/sub-01_acq-axi_T1w.nii.gz", 2)
    write(ds, "sub-01/anat/sub-01_acq-cor_T1w.nii.gz", 1)  # fused with axi: one T1w
    write(ds, "sub-02/anat/sub-02_run-1_T1w.nii.gz", 2)
    write(ds, "sub-02/anat/sub-02_run-2_T1w.nii.gz", 2)    # a repeat on one grid: two T1w
    found, grouping = grouped(ds)
    found.scans = grouping.units
    config = Config(bids_dir=ds, output_dir=tmp_path / "out", fmriprep_compat=True)
    (warning,) = _fmriprep_warnings(found, config)
    assert "2 desc-preproc_T1w for sub-02" in warning and "sub-02_run-2_desc-preproc_T1w" in warning
    assert not _fmriprep_warnings(found, Config(bids_dir=ds, output_dir=tmp_path / "out"))


def test_a_scan_with_other_timing_is_another_sequence_not_a_stack(ds):
    write(ds, "sub-01/anat/sub-01_acq-axi_T1w.nii.gz", 2, sidecar={**FIELD, "EchoTime": 0.006, "InversionTime": 0.8})
    write(ds, "sub-01/anat/sub-01_acq-cor_T1w.nii.gz", 1, sidecar={**FIELD, "EchoTime": 0.006, "InversionTime": 0.8})
    write(ds, "sub-01/anat/sub-01_acq-gre_T1w.nii.gz", 0, sidecar={**FIELD, "EchoTime": 0.006})  # no TI: not compared
    write(ds, "sub-01/anat/sub-01_acq-se_T1w.nii.gz", 0, sidecar={**FIELD, "EchoTime": 0.012, "InversionTime": 0.8},
          shift=(2.5, 0, 0))
    _, grouping = grouped(ds)
    (group,) = [u for u in grouping.units if isinstance(u, StackGroup)]
    assert [group.label(s) for s in group.stacks] == ["axi", "cor", "gre"]
    assert len(grouping.notes) == 1 and "acq-se_T1w.nii.gz: enhanced on its own, its EchoTime 0.012" in grouping.notes[0]
