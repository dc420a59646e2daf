"""End to end: the real app (run.py in a subprocess) on the tiny dataset, with the real method.

``--quality fast --steps 2 --output-resolution 4`` keeps each scan to seconds on two CPU cores.
The first run uses ``--num-samples 2 --fmriprep-compat`` so every kind of output is written once.
"""

import hashlib
import json
import os
import subprocess
import sys
tomllib = __import__("pytest").importorskip("tomllib")  # Python >= 3.11
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import HF_SCAN, LF_SCANS, NO_FIELD_SCAN, build_raw_dataset, prior_args

from diffdeur_bids.bids import naming
from diffdeur_bids.bids.validation import errors_of, run_validator
from diffdeur_bids.enhance import EnhanceSettings, output_grid
from diffdeur_bids.imageio import ras_grid

REPO = Path(__file__).resolve().parents[1]
FAST = ["--quality", "fast", "--steps", "2", "--output-resolution", "4", "--device", "cpu",
        "--nprocs", "2", "--omp-nthreads", "1"]


def run_app(*args, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "run.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    raw = build_raw_dataset(root / "raw")
    before = tree_digest(raw)
    out, work = root / "derivatives" / "diffdeur", root / "work"
    proc = run_app(raw, out, "participant", "-w", work, *FAST, "--num-samples", "2", "--fmriprep-compat", *prior_args())
    return dict(raw=raw, out=out, work=work, proc=proc, raw_digest=before)


def test_run_succeeds_with_plan_and_summary(first_run):
    proc = first_run["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Plan: 4 scan(s) to enhance, 2 skipped" in proc.stdout
    assert "Summary: 4 done, 2 skipped, 0 failed" in proc.stdout
    assert f"{NO_FIELD_SCAN}: no MagneticFieldStrength" in proc.stdout and "--assume-lowfield" in proc.stdout


def test_outputs_have_the_right_names_and_grids(first_run):
    out, raw = first_run["out"], first_run["raw"]
    expected = set()
    for src in LF_SCANS:
        expected |= {naming.enhanced_relpath(src), naming.std_relpath(src)}
        if src.endswith("_T1w.nii.gz"):
            expected.add(naming.preproc_relpath(src))
    written = {p.relative_to(out) for p in out.rglob("*.nii.gz")}
    assert {str(p) for p in written} == {str(p) for p in expected}
    for src in LF_SCANS:
        img = nib.load(str(out / naming.enhanced_relpath(src)))
        raw_img = nib.load(str(raw / src))
        shape, affine = ras_grid(raw_img.shape, raw_img.affine)
        grid = output_grid(shape, affine, 4.0)
        assert img.shape == tuple(grid.shape) == (20, 24, 16)
        np.testing.assert_allclose(img.affine, grid.affine, atol=1e-5)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        # the output covers the input field of view: same world-space centre
        centre = lambda i: (i.affine @ np.r_[(np.array(i.shape[:3]) - 1) / 2, 1])[:3]  # noqa: E731
        np.testing.assert_allclose(centre(img), centre(raw_img), atol=1e-4)
        assert img.get_fdata().std() > 0 and np.isfinite(img.get_fdata()).all()
        assert img.get_fdata().min() >= 0  # a magnitude image, like the input: no negative background


def test_input_dataset_untouched(first_run):
    assert tree_digest(first_run["raw"]) == first_run["raw_digest"]
    for skipped in (HF_SCAN, NO_FIELD_SCAN):
        assert not (first_run["out"] / naming.enhanced_relpath(skipped)).exists()


def test_bids_validator_passes(first_run):
    code, report = run_validator(first_run["out"])
    assert errors_of(report) == [] and code == 0


def test_pybids_finds_outputs_with_metadata(first_run):
    from bids import BIDSLayout

    out = BIDSLayout(str(first_run["out"]), validate=False)
    files = out.get(desc="enhanced", extension=".nii.gz")
    assert len(files) == 4
    # the README's query: by suffix alone the std map and the fMRIPrep copy come too; desc= selects
    assert len(out.get(suffix="T1w", extension=".nii.gz")) > len(out.get(suffix="T1w", desc="enhanced", extension=".nii.gz"))
    assert {f.entities["desc"] for f in out.get(suffix="T1w", desc="enhanced", extension=".nii.gz")} == {"enhanced"}
    assert files[0].get_metadata()["SkullStripped"] is False
    combined = BIDSLayout(str(first_run["raw"]), derivatives=str(first_run["out"]))
    found = combined.get(scope="diffdeur", desc="enhanced", subject="01", session="02", extension=".nii.gz")
    assert [f.filename for f in found] == ["sub-01_ses-02_desc-enhanced_T1w.nii.gz"]
    assert found[0].get_metadata()["Sources"] == ["bids:raw:sub-01/ses-02/anat/sub-01_ses-02_T1w.nii.gz"]
    assert len(combined.get(scope="diffdeur", desc="enhancedstd", extension=".nii.gz")) == 4


def test_sidecars_and_provenance_complete(first_run):
    out = first_run["out"]
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "diffdeur"
    assert desc["Authors"] and desc["GeneratedBy"][0]["CodeURL"].startswith("https://")
    described = [line.split("\t")[0] for line in (out / "descriptions.tsv").read_text().splitlines()[1:]]
    assert described == ["desc-enhanced", "desc-enhancedstd", "desc-preproc"]  # what this run wrote, no synthseg
    assert not list(out.glob(".*.lock")) and (out / "logs" / ".diffdeur.lock").exists()  # the lock is out of the root
    assert "Nipype" in (out / "logs" / "CITATION.md").read_text() and (out / "logs" / "CITATION.bib").is_file()
    raw_root = (out / desc["DatasetLinks"]["raw"]).resolve()
    assert raw_root == first_run["raw"].resolve()
    for src in LF_SCANS:
        meta = json.loads((out / naming.sidecar_of(naming.enhanced_relpath(src))).read_text())
        assert meta["SkullStripped"] is False and meta["Description"]
        assert meta["Resolution"] == "4x4x4 mm (input 4x4x8 mm)"
        uri = meta["Sources"][0]
        assert uri.startswith("bids:raw:") and (raw_root / uri.removeprefix("bids:raw:")).is_file()
        assert meta["MagneticFieldStrength"] == 0.064 and meta["Manufacturer"] == "Hyperfine"  # propagated
        prov = meta["DiffDeuR"]
        for key in ("Version", "RunUUID", "CommandLine", "Seed", "Settings", "WeightsSHA256", "Device",
                    "DeviceName", "TorchVersion", "CUDAVersion", "NoiseSigma", "EnhanceSeconds"):
            assert key in prov, key
        assert len(prov["WeightsSHA256"]) == 64 and prov["Seed"] == 0 and prov["Device"] == "cpu"
        assert set(EnhanceSettings().as_dict()) <= set(prov["Settings"])
        assert prov["Settings"]["steps"] == 2 and prov["Settings"]["num_samples"] == 2
        assert prov["NoiseSigma"] > 0 and prov["NegativeOutputVoxelsClipped"] >= 0
        std_meta = json.loads((out / naming.sidecar_of(naming.std_relpath(src))).read_text())
        assert "MagneticFieldStrength" not in std_meta and "EchoTime" not in std_meta  # they describe the scan, not the std
    log_dirs = list((out / "sub-01" / "log").iterdir())
    assert len(log_dirs) == 1
    record = tomllib.loads((log_dirs[0] / "diffdeur.toml").read_text())
    settings, resolved = record["diffdeur"], record["resolved"]
    assert settings["run_uuid"] == log_dirs[0].name == prov["RunUUID"]
    assert settings["quality"] == "fast" and resolved["weights_sha256"] == prov["WeightsSHA256"]
    assert resolved["device"] == prov["Device"] == "cpu" and resolved["prior"] == prov["Prior"]
    planned = record["plan"]["sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz"]
    assert planned["output_shape"] == [20, 24, 16] and planned["mem_gb"] > 0


def test_rerun_reuses_the_work_dir(first_run):
    results = sorted(first_run["work"].rglob("enhance/result_enhance.pklz"))
    assert len(results) == 4
    stamps = [p.stat().st_mtime_ns for p in results]
    proc = run_app(first_run["raw"], first_run["out"], "participant", "-w", first_run["work"], *FAST,
                   "--num-samples", "2", "--fmriprep-compat", "--skip-bids-validation", *prior_args())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Summary: 4 done" in proc.stdout
    assert [p.stat().st_mtime_ns for p in results] == stamps  # enhancement not redone
    assert len(list((first_run["out"] / "sub-01" / "log").iterdir())) == 2  # one log folder per run


def test_a_failing_scan_does_not_stop_the_others(tmp_path):
    raw = build_raw_dataset(tmp_path / "raw")
    bad = raw / LF_SCANS[3]
    img = nib.load(str(bad))
    nib.save(nib.Nifti1Image(np.ones(img.shape, np.float32), img.affine), str(bad))  # constant: refused
    out = tmp_path / "out"
    proc = run_app(raw, out, "participant", "-w", tmp_path / "work", "--participant-label", "02",
                   "--assume-lowfield", "--skip-bids-validation", *FAST, *prior_args())
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Summary: 1 done, 0 skipped, 1 failed" in proc.stdout
    assert f"FAILED   {LF_SCANS[3]}: InvalidInputError: the image is constant" in proc.stdout
    assert (out / naming.enhanced_relpath(NO_FIELD_SCAN)).exists()  # --assume-lowfield took it
    crash = list((out / "sub-02" / "log").glob("*/crash-*.txt"))
    assert len(crash) == 1 and "InvalidInputError" in crash[0].read_text()
    assert not list(out.rglob("*.tmp"))
    page = (out / "sub-02.html").read_text()  # the report is written, the failed scan's section says why
    assert "Failed: InvalidInputError: the image is constant" in page and str(crash[0].relative_to(out)) in page
    assert page.count("<figure>") == 1  # the scan that was enhanced has its figure, the failed one none


# --- SynthSeg (--synthseg with the tiny test weights): one session of sub-01, a LAS T1w and a T2w with
# the same entities, so one segmentation name: the T1w is segmented, the T2w only enhanced.

SYNTHSEG_TINY = REPO / "tests" / "data" / "synthseg" / "synthseg2_tiny.h5"
SEG_SCANS = LF_SCANS[:1]


@pytest.fixture(scope="module")
def synthseg_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e-synthseg")
    raw = build_raw_dataset(root / "raw")
    out, work = root / "derivatives" / "diffdeur", root / "work"
    args = [raw, out, "participant", "-w", work, *FAST, "--participant-label", "01", "--session-label", "01",
            "--synthseg", "--synthseg-model", SYNTHSEG_TINY, *prior_args()]
    return dict(raw=raw, out=out, work=work, args=args, proc=run_app(*args))


def test_synthseg_run_writes_segmentations(synthseg_run):
    proc, out = synthseg_run["proc"], synthseg_run["out"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Summary: 2 done, 0 skipped, 0 failed" in proc.stdout
    assert "Then segment with SynthSeg 2.0 (PyTorch port, weights synthseg2_tiny.h5)" in proc.stdout
    assert f"+ segment: {naming.synthseg_relpath(LF_SCANS[0])}" in proc.stdout
    assert proc.stdout.count("+ segment:") == 1
    expected = {str(naming.enhanced_relpath(s)) for s in LF_SCANS[:2]}
    expected |= {str(naming.synthseg_relpath(s)) for s in SEG_SCANS}
    assert {str(p.relative_to(out)) for p in out.rglob("*.nii.gz")} == expected
    assert {str(p.relative_to(out)) for p in out.rglob("*.tsv")} == {
        "descriptions.tsv", "desc-synthseg_dseg.tsv", *(str(naming.synthseg_volumes_relpath(s)) for s in SEG_SCANS)}
    assert (out / "desc-synthseg_dseg.json").is_file()
    assert "*_volumes.tsv" in (out / ".bidsignore").read_text().splitlines()
    page = (out / "sub-01.html").read_text()
    assert "SynthSeg labels over the enhanced image" in page and "SynthSeg volumes" in page
    assert (out / naming.figure_relpath(SEG_SCANS[0], "synthseg")).is_file()


def test_synthseg_labels_on_the_enhanced_grid(synthseg_run):
    out = synthseg_run["out"]
    lut = [ln.split("\t") for ln in (out / "desc-synthseg_dseg.tsv").read_text().splitlines()]
    assert lut[0] == ["index", "name", "abbreviation", "color", "mapping"] and len(lut) == 34
    indices = {int(row[0]) for row in lut[1:]}
    for src in SEG_SCANS:
        seg = nib.load(str(out / naming.synthseg_relpath(src)))
        enhanced = nib.load(str(out / naming.enhanced_relpath(src)))
        assert seg.get_data_dtype() == np.int16 and seg.shape == enhanced.shape
        np.testing.assert_array_equal(seg.affine, enhanced.affine)
        assert seg.header.get_xyzt_units()[0] == "mm"
        values = set(np.unique(np.asarray(seg.dataobj)).tolist())
        assert values <= indices and len(values) > 1

        table = [ln.split("\t") for ln in (out / naming.synthseg_volumes_relpath(src)).read_text().splitlines()]
        assert table[0] == ["label", "name", "volume_mm3"] and len(table) == 1 + 33
        assert table[1][:2] == ["n/a", "total intracranial"] and float(table[1][2]) > 0
        assert {int(r[0]) for r in table[2:]} == indices - {0}
        assert all(float(r[2]) >= 0 for r in table[1:])


def test_synthseg_sidecar_provenance(synthseg_run):
    out = synthseg_run["out"]
    sha = hashlib.sha256(SYNTHSEG_TINY.read_bytes()).hexdigest()
    for src in SEG_SCANS:
        meta = json.loads((out / naming.sidecar_of(naming.synthseg_relpath(src))).read_text())
        enhanced = naming.enhanced_relpath(src)
        assert meta["Sources"] == [f"bids::{enhanced}"] and meta["SpatialReference"] == f"bids::{enhanced}"
        assert (out / meta["Sources"][0].removeprefix("bids::")).is_file() and meta["Description"]
        seg = meta["SynthSeg"]
        assert seg["Backend"] == "torch" and seg["Model"] == "SynthSeg 2.0" and seg["Robust"] is False
        assert seg["ModelFile"] == "synthseg2_tiny.h5" and seg["ModelSHA256"] == sha
        assert seg["OfficialModelFile"] is None and seg["TorchVersion"] and seg["TotalIntracranialVolume"] > 0
        assert meta["DiffDeuR"]["Version"] and meta["DiffDeuR"]["RunUUID"]


def test_synthseg_outputs_pass_the_validator(synthseg_run):
    code, report = run_validator(synthseg_run["out"])
    assert errors_of(report) == [] and code == 0


def test_synthseg_found_by_pybids(synthseg_run):
    from bids import BIDSLayout

    combined = BIDSLayout(str(synthseg_run["raw"]), derivatives=str(synthseg_run["out"]))
    found = combined.get(scope="diffdeur", desc="synthseg", suffix="dseg", extension=".nii.gz")
    assert sorted(f.filename for f in found) == sorted(naming.synthseg_relpath(s).name for s in SEG_SCANS)
    assert found[0].get_metadata()["SynthSeg"]["Backend"] == "torch"


def test_synthseg_rerun_reuses_the_work_dir(synthseg_run):
    results = sorted(synthseg_run["work"].rglob("synthseg/result_synthseg.pklz"))
    lut = synthseg_run["out"] / "desc-synthseg_dseg.tsv"
    assert len(results) == 1
    stamps = [p.stat().st_mtime_ns for p in results + [lut]]
    proc = run_app(*synthseg_run["args"], "--skip-bids-validation")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Summary: 2 done" in proc.stdout
    outdated = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "Outdated cache" in ln or "Old/new" in ln]
    assert [p.stat().st_mtime_ns for p in results + [lut]] == stamps, outdated  # not redone; LUT written once


# --- the subject reports (sub-XX.html): built from the first run's outputs, opened in a real browser


def test_reports_have_every_figure_and_say_what_to_check(first_run):
    from html.parser import HTMLParser

    out = first_run["out"]
    for subject, scans in (("01", LF_SCANS[:3]), ("02", LF_SCANS[3:])):
        page = (out / f"sub-{subject}.html").read_text()
        srcs = []

        class Images(HTMLParser):
            def handle_starttag(self, tag, attrs):
                if tag == "img":
                    srcs.append(dict(attrs)["src"])

        Images().feed(page)
        assert len(srcs) == 2 * len(scans)  # before/after and uncertainty (--num-samples 2) per scan
        for src in srcs:
            assert src.startswith(f"sub-{subject}/figures/") and (out / src).stat().st_size > 5000
        assert page.count("What to check.") == len(scans) and "http" not in page.replace("http-equiv", "")
        for scan in scans:
            assert scan in page


def test_the_report_renders_in_headless_chromium(first_run, tmp_path):
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    page = first_run["out"] / "sub-01.html"
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('data-loaded="1"') == dom.stdout.count("<img") == 6
    assert "data-broken" not in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    from matplotlib.image import imread

    pixels = np.asarray(imread(str(shot)))
    assert pixels.std() > 0.05  # not a blank page


def test_reports_only_rebuilds_the_pages_without_enhancing(first_run):
    out = first_run["out"]
    page = out / "sub-01.html"
    before = {p: p.stat().st_mtime for p in out.rglob("*_desc-enhanced_*.nii.gz")}
    page.unlink()
    proc = run_app(first_run["raw"], out, "participant", "-w", first_run["work"], "--reports-only",
                   "--skip-bids-validation", *FAST, *prior_args())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Reports only" in proc.stdout and page.is_file() and "What to check." in page.read_text()
    assert before == {p: p.stat().st_mtime for p in out.rglob("*_desc-enhanced_*.nii.gz")}  # nothing rewritten


def test_config_file_reruns_with_the_options_a_run_wrote(first_run):
    toml = next((first_run["out"] / "sub-01" / "log").glob("*/diffdeur.toml"))
    proc = run_app(first_run["raw"], first_run["out"], "participant", "--config-file", toml, "--dry-run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "(quality fast, output 4 mm, device cpu)" in proc.stdout  # from the file, not the defaults
    proc = run_app(first_run["raw"], first_run["out"], "participant", "--config-file", toml, "--dry-run",
                   "--output-resolution", "2")
    assert "(quality fast, output 2 mm, device cpu)" in proc.stdout  # the command line wins
    bad = first_run["work"].parent / "bad.toml"
    bad.write_text("[other]\nx = 1\n")
    proc = run_app(first_run["raw"], first_run["out"], "participant", "--config-file", bad, "--dry-run")
    assert proc.returncode == 64 and "not a diffdeur.toml" in proc.stderr
