"""End to end with stacks: a T1w acquired as three moved thick-slice stacks (sim-lf-v2, scaled to a 4 mm
head so a run takes seconds), fused by the real app; and a group with a stack of another head in it,
which must not be fused.

    sub-01: acq-axi, acq-cor, acq-sag of one head (the later two moved by up to 3 deg / 2 mm)
    sub-02: the same, but its acq-sag is of a head moved 40 mm (a stack mislabelled into the group)
    sub-03: the same, but its acq-cor is constant (a stack that cannot be enhanced)
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import prior_args
from test_e2e import FAST, SYNTHSEG_TINY, run_app

from diffdeur_bids.bids import naming
from diffdeur_bids.bids.validation import errors_of, run_validator
from diffdeur_bids.demo import write_raw_description, write_scan
from diffdeur_bids.enhance import output_grid
from diffdeur_bids.evaluation.protocol import simulate_stacks

VOXEL = (6.0, 6.0, 16.0)  # the protocol's 1.5 x 1.5 x 5 mm, scaled as the head is
STACKS = ("axi", "cor", "sag")


def head_4mm():
    nilearn_datasets = pytest.importorskip("nilearn.datasets")
    img = nilearn_datasets.load_mni152_template(resolution=2)
    data = np.asarray(img.get_fdata(), dtype=np.float32)[:90, :108, :90].reshape(45, 2, 54, 2, 45, 2).mean(axis=(1, 3, 5))
    return data, img.affine @ np.diag([2.0, 2.0, 2.0, 1.0]) @ np.r_[np.c_[np.eye(3), [0.25, 0.25, 0.25]], [[0, 0, 0, 1]]]


def stack_name(sub: str, stack: str) -> str:
    return f"sub-{sub}/anat/sub-{sub}_acq-{stack}_T1w.nii.gz"


def build(root):
    from scipy import ndimage

    write_raw_description(root, "stacks", "Three thick-slice T1w stacks per subject, simulated (sim-lf-v2).")
    head, affine = head_4mm()
    moved = ndimage.shift(head, (0, 0, 10), order=1)  # 10 voxels of 4 mm: not where this head is
    truth = {}
    for sub, seed in (("01", 3), ("02", 5), ("03", 7)):
        sim = simulate_stacks(head, affine, seed=seed, voxel_mm=VOXEL)["stacks"]
        if sub == "02":
            sim[2] = simulate_stacks(moved, affine, seed=6, voxel_mm=VOXEL)["stacks"][2]
        if sub == "03":
            sim[1] = {**sim[1], "lf": np.full_like(sim[1]["lf"], 0.5)}
        for st in sim:
            write_scan(root, stack_name(sub, st["name"]), st["lf"] * 1000, st["affine"],
                       {"MagneticFieldStrength": 0.064, "EchoTime": 0.005, "RepetitionTime": 0.02})
            truth[stack_name(sub, st["name"])] = st
    (root / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\nsub-03\n")
    return truth


@pytest.fixture(scope="module")
def stacks_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e-stacks")
    raw = root / "raw"
    truth = build(raw)
    out, work = root / "out", root / "work"
    args = [raw, out, "participant", "-w", work, *FAST, "--participant-label", "01", "02", "--fmriprep-compat",
            "--synthseg", "--synthseg-model", SYNTHSEG_TINY, *prior_args()]
    return dict(raw=raw, out=out, work=work, truth=truth, args=args, proc=run_app(*args))


def test_the_plan_and_the_summary_name_each_group(stacks_run):
    proc = stacks_run["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Plan: 2 scan(s) to enhance (2 of them fused from 6 stacks)" in proc.stdout
    assert f"      {stack_name('01', 'axi')}  0.064 T  6x6x16 mm  30x36x12  reference (smallest in-plane voxel)" \
        in proc.stdout
    assert "-> enhance to 45x54x48: sub-01/anat/sub-01_desc-enhanced_T1w.nii.gz" in proc.stdout
    done = [line for line in proc.stdout.splitlines() if line.startswith("  done")]
    assert any(stack_name("01", "axi") in line and "(fused from 3 stacks)" in line for line in done)
    assert any(stack_name("02", "axi") in line and "NOT fused" in line for line in done)


def test_the_fused_image_covers_the_reference_and_lists_every_stack(stacks_run):
    out, truth = stacks_run["out"], stacks_run["truth"]
    img = nib.load(out / "sub-01/anat/sub-01_desc-enhanced_T1w.nii.gz")
    ref = truth[stack_name("01", "axi")]
    grid = output_grid(ref["lf"].shape, ref["affine"], 4.0)
    assert img.shape == tuple(grid.shape) and np.allclose(img.affine, grid.affine, atol=1e-4)
    meta = json.loads((out / "sub-01/anat/sub-01_desc-enhanced_T1w.json").read_text())
    assert meta["Sources"] == [f"bids:raw:{stack_name('01', s)}" for s in STACKS]
    assert meta["SpatialReference"] == f"bids:raw:{stack_name('01', 'axi')}"
    assert meta["EchoTime"] == 0.005 and meta["MagneticFieldStrength"] == 0.064
    stacks = meta["DiffDeuR"]["Stacks"]
    assert [s["Reference"] for s in stacks] == [True, False, False]
    for s in stacks:
        assert (out / s["Transform"].removeprefix("bids::")).is_file()
        assert s["NoiseSigma"] > 0
    # --fmriprep-compat: one desc-preproc_T1w per subject, the fused one
    assert sorted(p.name for p in (out / "sub-01/anat").glob("*desc-preproc_T1w.nii.gz")) == [
        "sub-01_desc-preproc_T1w.nii.gz"]
    # --synthseg segments the fused image, named as it is
    seg = nib.load(out / "sub-01/anat/sub-01_desc-synthseg_dseg.nii.gz")
    assert seg.shape == img.shape


def _itk_maps_like(xfm_path, motion: np.ndarray, corners_ras: np.ndarray) -> float:
    """The largest distance (mm) between where the ITK transform and ``motion`` take the reference's corners."""
    sitk = pytest.importorskip("SimpleITK")
    transform = sitk.ReadTransform(str(xfm_path))
    lps = np.diag([-1.0, -1.0, 1.0])
    worst = 0.0
    for p in corners_ras:
        q = lps @ np.asarray(transform.TransformPoint(tuple(float(v) for v in lps @ p)))
        worst = max(worst, float(np.linalg.norm(q - (motion[:3, :3] @ p + motion[:3, 3]))))
    return worst


def test_each_stack_has_an_itk_transform_that_recovers_its_motion(stacks_run):
    out, truth = stacks_run["out"], stacks_run["truth"]
    ref = truth[stack_name("01", "axi")]
    shape = np.asarray(ref["lf"].shape)
    corners = np.array([(ref["affine"] @ np.r_[np.asarray(c) * (shape - 1), 1.0])[:3] for c in np.ndindex(2, 2, 2)])
    for stack in STACKS:
        xfm = out / naming.xfm_relpath(stack_name("01", stack), stack_name("01", "axi"),
                                       [stack_name("01", s) for s in STACKS])
        assert xfm.name == f"sub-01_acq-{stack}_from-orig_to-axi_mode-image_xfm.txt"
        motion = truth[stack_name("01", stack)]["motion"]
        assert _itk_maps_like(xfm, motion, corners) < 1.5, stack  # a quarter of the 6 mm stack voxel
        if stack != "axi":  # a real motion, so a transform that ignored it would fail here
            assert _itk_maps_like(xfm, np.eye(4), corners) > 2.0


def test_a_stack_of_another_head_is_not_fused_and_each_stack_is_enhanced_alone(stacks_run):
    out = stacks_run["out"]
    assert not (out / "sub-02/anat/sub-02_desc-enhanced_T1w.nii.gz").exists()
    assert not list((out / "sub-02").rglob("*_xfm.txt"))
    for stack in STACKS:
        side = out / naming.sidecar_of(naming.enhanced_relpath(stack_name("02", stack)))
        meta = json.loads(side.read_text())
        fusion = meta["DiffDeuR"]["StackFusion"]
        assert fusion["Fused"] is False and "could not be aligned" in fusion["Reason"]
        assert meta["Sources"] == [f"bids:raw:{stack_name('02', stack)}"]
    # its T1w stacks each get a desc-preproc copy: fMRIPrep would see three T1w, as without --stacks
    assert len(list((out / "sub-02/anat").glob("*desc-preproc_T1w.nii.gz"))) == 3
    page = (out / "sub-02.html").read_text()
    assert "Not fused: stack(s)" in page and page.count("<h2>sub-02/anat/sub-02_acq-") == 3


def test_the_outputs_pass_the_validator_and_pybids_reads_the_transforms(stacks_run):
    out = stacks_run["out"]
    code, report = run_validator(out)
    assert not errors_of(report), errors_of(report)
    from bids import BIDSLayout

    layout = BIDSLayout(str(out), validate=False, config=["bids", "derivatives"])
    xfms = layout.get(subject="01", suffix="xfm", extension=".txt")
    assert sorted(f.get_entities()["acquisition"] for f in xfms) == list(STACKS)
    assert {(f.get_entities()["from"], f.get_entities()["to"], f.get_entities()["mode"]) for f in xfms} == {
        ("orig", "axi", "image")}


def test_the_report_and_the_group_table_say_how_the_stacks_were_fused(stacks_run):
    out = stacks_run["out"]
    page = (out / "sub-01.html").read_text()
    assert "stack sub-01_acq-cor_T1w.nii.gz" in page and "reference" in page
    proc = run_app(stacks_run["raw"], out, "group")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = (out / "group_T1w.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    fused = [dict(zip(header, r.split("\t"))) for r in rows[1:] if "sub-01_desc-enhanced_T1w" in r]
    assert len(fused) == 1 and fused[0]["stacks"] == "3"


def test_a_rerun_reuses_the_fused_work(stacks_run):
    proc = run_app(*stacks_run["args"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any("(fused from 3 stacks) (enhanced by an earlier run" in line for line in proc.stdout.splitlines())


def test_separate_enhances_each_stack_alone(stacks_run, tmp_path):
    out = tmp_path / "out"
    proc = run_app(stacks_run["raw"], out, "participant", "-w", tmp_path / "work", *FAST, "--stacks", "separate",
                   "--participant-label", "01", *prior_args())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Plan: 3 scan(s) to enhance, 0 skipped" in proc.stdout
    assert sorted(p.name for p in (out / "sub-01/anat").glob("*_desc-enhanced_T1w.nii.gz")) == [
        f"sub-01_acq-{s}_desc-enhanced_T1w.nii.gz" for s in STACKS]
    assert not list(out.rglob("*_xfm.txt"))


def test_a_stack_that_cannot_be_enhanced_fails_its_group_and_names_itself(stacks_run, tmp_path):
    proc = run_app(stacks_run["raw"], tmp_path / "out", "participant", "-w", tmp_path / "work", *FAST,
                   "--participant-label", "03", *prior_args())
    assert proc.returncode == 1
    failed = [line for line in proc.stdout.splitlines() if line.startswith("  FAILED")]
    assert len(failed) == 1 and stack_name("03", "axi") in failed[0]
    assert "sub-03_acq-cor_T1w.nii.gz, a stack of this group: the image is constant" in failed[0]
