"""Exit codes and messages of the command line (in-process, nothing enhanced)."""

import json
import os
import re
import sys
from pathlib import Path

import pytest
from conftest import prior_args

from diffdeur_bids.cli import run_cli


def _run(capsys, *args):
    code = run_cli([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out + err


def test_help_and_version(capsys):
    assert _run(capsys, "--help")[0] == 0
    code, text = _run(capsys, "--version")
    assert code == 0 and text.startswith("diffdeur v")


@pytest.mark.parametrize("args", [[], ["only_one"], ["a", "b", "participant", "--no-such-option"],
                                  ["a", "b", "participant", "--quality", "ultra"],
                                  ["a", "b", "participant", "--device", "gpu"],
                                  ["a", "b", "participant", "--mem", "lots"],
                                  ["a", "b", "participant", "--output-resolution", "0"]])
def test_usage_errors_exit_64(capsys, args):
    assert _run(capsys, *args)[0] == 64


@pytest.mark.parametrize("level", ["session", "Participant", "Group"])
def test_unknown_level_exits_17(capsys, tmp_path, level):
    code, text = _run(capsys, tmp_path, tmp_path / "out", level)
    assert code == 17 and "participant" in text


def test_group_level_with_nothing_to_aggregate_exits_18(capsys, tmp_path):
    code, text = _run(capsys, tmp_path / "nope", tmp_path / "out", "group")
    assert code == 66 and "does not exist" in text  # the input is checked as for a participant run
    (tmp_path / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.1"}')
    code, text = _run(capsys, tmp_path, tmp_path / "out", "group")
    assert code == 18 and "run the 'participant' level first" in text
    (tmp_path / "out").mkdir()
    code, text = _run(capsys, tmp_path, tmp_path / "out", "group")
    assert code == 18 and "no enhanced image" in text


def test_missing_or_non_bids_input_exits_66(capsys, tmp_path):
    code, text = _run(capsys, tmp_path / "nope", tmp_path / "out", "participant")
    assert code == 66 and "does not exist" in text
    code, text = _run(capsys, tmp_path, tmp_path / "out", "participant")
    assert code == 66 and "has no dataset_description.json" in text
    (tmp_path / "a_file").write_text("")
    code, text = _run(capsys, tmp_path / "a_file", tmp_path / "out", "participant")
    assert code == 66 and "is not a folder" in text
    (tmp_path / "dataset_description.json").write_text('{"Name": "x",')
    code, text = _run(capsys, tmp_path, tmp_path / "out", "participant")
    assert code == 66 and "dataset_description.json is not valid JSON" in text, text


def test_output_or_work_inside_input_exits_73(capsys, raw_bids, tmp_path):
    base = [raw_bids]
    assert _run(capsys, *base, raw_bids, "participant", "--dry-run")[0] == 73
    assert _run(capsys, *base, raw_bids / "sub-01" / "out", "participant", "--dry-run")[0] == 73
    assert _run(capsys, *base, tmp_path / "out", "participant", "-w", raw_bids / "work", "--dry-run")[0] == 73
    code, text = _run(capsys, *base, tmp_path / "out", "participant", "-w", tmp_path / "w", "--dry-run",
                      "--skip-bids-validation", "--device", "cpu", *prior_args())
    assert code == 0, text
    code, _ = _run(capsys, *base, raw_bids / "derivatives" / "diffdeur", "participant", "-w", tmp_path / "w",
                   "--dry-run", "--skip-bids-validation", "--device", "cpu", *prior_args())
    assert code == 0  # <bids>/derivatives/<name> is the recommended place
    assert not (raw_bids / "derivatives").exists() and not (tmp_path / "out").exists()  # a dry run writes nothing


def test_unwritable_output_exits_73(capsys, raw_bids, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # nothing can be created below a file, even by root
    code, text = _run(capsys, raw_bids, blocker / "out", "participant", "-w", tmp_path / "w")
    assert code == 73 and "cannot be created" in text


@pytest.mark.parametrize("extra, needle", [
    (["--participant-label", "03"], "participant label(s) 03 not found; the dataset has: 01, 02"),
    (["--participant-label", "01", "--session-label", "07"],
     "session label(s) 07 not found; the selected participants have: 01, 02"),
    (["--max-field-strength", "0.01"], "no low-field scan"),
    (["--modalities", "FLAIR"], "FLAIR"),
])
def test_empty_selection_exits_18(capsys, raw_bids, tmp_path, extra, needle):
    code, text = _run(capsys, raw_bids, tmp_path / "out", "participant", "-w", tmp_path / "w",
                      "--skip-bids-validation", "--device", "cpu", "--dry-run", *prior_args(), *extra)
    assert code == (66 if extra == ["--modalities", "FLAIR"] else 18), text
    assert needle in text


def test_filter_file_selecting_nothing_exits_18(capsys, raw_bids, tmp_path):
    f = tmp_path / "filters.json"
    f.write_text(json.dumps({"t1w": {"acquisition": "none"}}))
    code, _ = _run(capsys, raw_bids, tmp_path / "out", "participant", "--modalities", "T1w", "--bids-filter-file", f,
                   "-w", tmp_path / "w", "--skip-bids-validation", "--device", "cpu", "--dry-run")
    assert code == 18
    f.write_text("{broken")
    assert _run(capsys, raw_bids, tmp_path / "out", "participant", "--bids-filter-file", f,
                "-w", tmp_path / "w", "--skip-bids-validation", "--device", "cpu", "--dry-run")[0] == 64


@pytest.mark.parametrize("option, label", [("--participant-label", "../x"), ("--participant-label", "*"),
                                           ("--participant-label", "01/../02"), ("--session-label", "../x"),
                                           ("--session-label", "0?")])
def test_label_with_path_characters_exits_64(capsys, raw_bids, tmp_path, option, label):
    code, text = _run(capsys, raw_bids, tmp_path / "out", "participant", option, label,
                      "-w", tmp_path / "w", "--skip-bids-validation", "--device", "cpu")
    assert code == 64 and "is not a valid BIDS label" in text, text


def test_invalid_dataset_exits_16(capsys, fresh_bids, tmp_path):
    (fresh_bids / "dataset_description.json").write_text('{"Name": "no BIDSVersion"}')
    args = [fresh_bids, tmp_path / "out", "participant", "-w", tmp_path / "w", "--dry-run", "--device", "cpu",
            *prior_args()]
    code, text = _run(capsys, *args)
    assert code == 16 and "BIDSVersion" in text and "--skip-bids-validation" in text
    code, text = _run(capsys, *args, "--skip-bids-validation")
    assert code == 0 and "BIDS validation skipped" in text, text


def test_sidecar_that_is_not_json_fails_validation_or_its_scan(capsys, fresh_bids, tmp_path):
    sidecar = fresh_bids / "sub-01/ses-01/anat/sub-01_ses-01_T2w.json"
    sidecar.write_text('{"MagneticFieldStrength": 0.064,')
    args = [fresh_bids, tmp_path / "out", "participant", "-w", tmp_path / "w", "--dry-run", "--device", "cpu",
            *prior_args()]
    code, text = _run(capsys, *args)
    assert code == 16 and "JSON_INVALID" in text and "sub-01_ses-01_T2w.json" in text, text
    code, text = _run(capsys, *args, "--skip-bids-validation")  # that scan only is refused; the others go on
    assert code == 1, text
    assert "Plan: 3 scan(s) to enhance, 2 skipped, 1 cannot be enhanced" in text
    assert ("sub-01/ses-01/anat/sub-01_ses-01_T2w.nii.gz: its sidecar sub-01/ses-01/anat/sub-01_ses-01_T2w.json "
            "is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 33") in text
    assert "Dry run: nothing was enhanced or written; 1 scan(s) cannot be enhanced (see above)." in text
    (fresh_bids / "T1w.json").write_text("{")  # inherited by every T1w, the 3 T one included: all refused
    code, text = _run(capsys, *args, "--skip-bids-validation")
    assert code == 1 and "Plan: 0 scan(s) to enhance, 1 skipped, 5 cannot be enhanced" in text, text
    assert "sub-02/anat/sub-02_run-01_T1w.nii.gz: its sidecar T1w.json is not valid JSON" in text
    assert "Summary: 0 done, 1 skipped, 5 failed" in text


def test_scan_needing_more_memory_than_allowed_is_refused(capsys, raw_bids, tmp_path):
    code, text = _run(capsys, raw_bids, tmp_path / "out", "participant", "-w", tmp_path / "w", "--dry-run",
                      "--device", "cpu", "--skip-bids-validation", "--participant-label", "02", "--mem", "100M",
                      *prior_args())
    assert code == 1, text
    assert re.search(r"sub-02/anat/sub-02_run-01_T1w.nii.gz: too large: it needs about [0-9.]+ [MG]B of memory \(input "
                     r"20x24x8, output grid 80x96x64 at 1 mm\), more than --mem 100 MB allows; use a coarser "
                     r"--output-resolution, crop the image, or run it where more memory is available", text), text
    assert "Summary: 0 done, 1 skipped, 1 failed" in text and not (tmp_path / "out").exists()


def test_shipped_prior_not_matching_its_checksum_fails_before_any_work(capsys, raw_bids, tmp_path, monkeypatch):
    from diffdeur_bids.priors import registry

    monkeypatch.setattr(registry.ShippedPrior, "expected_sha256", lambda self: "0" * 64)  # as if the file had been altered
    registry._load_shipped.cache_clear()
    try:
        code, text = _run(capsys, raw_bids, tmp_path / "out", "participant", "-w", tmp_path / "w", "--device", "cpu",
                          "--skip-bids-validation")
    finally:
        registry._load_shipped.cache_clear()
    assert code == 1 and f"expected {'0' * 64}: the file is corrupt or not the shipped one" in text, text
    assert not (tmp_path / "out").exists() and not (tmp_path / "w").exists()


def test_shipped_upsampler_not_matching_its_checksum_fails_before_any_work_unless_turned_off(capsys, raw_bids, tmp_path,
                                                                                              monkeypatch):
    from diffdeur_bids.priors import registry

    real = registry.ShippedPrior.expected_sha256
    monkeypatch.setattr(registry.ShippedPrior, "expected_sha256",  # as if the upsampler's file had been altered
                        lambda self: "0" * 64 if self is registry.UPSAMPLER else real(self))
    registry._load_upsampler.cache_clear()
    try:
        args = (raw_bids, tmp_path / "out", "participant", "-w", tmp_path / "w", "--device", "cpu", "--dry-run",
                "--skip-bids-validation")
        code, text = _run(capsys, *args)
        assert code == 1 and "upsampler.safetensors" in text and "the file is corrupt or not the shipped one" in text, text
        code, text = _run(capsys, *args, "--no-learned-upsampling")
        assert code == 0, text
    finally:
        registry._load_upsampler.cache_clear()


def _shipped_prior_without_a_tensor(path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from diffdeur_bids.priors import shipped_path

    with safe_open(str(shipped_path()), "pt") as fh:
        metadata = fh.metadata()
    state = load_file(str(shipped_path()))
    state.pop(sorted(state)[0])
    save_file(state, str(path), metadata=metadata)


@pytest.mark.parametrize("kind, needle", [
    ("truncated", "truncated or not a safetensors file"),
    ("pickle", "truncated or not a safetensors file"),
    ("architecture", "does not match the prior architecture it declares"),
    ("missing", "does not exist"),
])
def test_bad_prior_weights_fail_before_any_work(capsys, raw_bids, tmp_path, kind, needle):
    from diffdeur_bids.priors import shipped_path

    weights = tmp_path / "prior.safetensors"
    if kind == "truncated":
        weights.write_bytes(shipped_path().read_bytes()[:100_000])
    elif kind == "pickle":  # a torch.save file whose loading would run code: it must be refused, not loaded
        import torch

        class Payload:
            def __reduce__(self):
                return os.mkdir, (str(tmp_path / "code_was_run"),)

        torch.save({"weights": Payload()}, weights)
    elif kind == "architecture":
        _shipped_prior_without_a_tensor(weights)
    code, text = _run(capsys, raw_bids, tmp_path / "out", "participant", "-w", tmp_path / "w", "--device", "cpu",
                      "--skip-bids-validation", "--prior", weights)
    assert code == (64 if kind == "missing" else 1) and needle in text, text
    assert not (tmp_path / "out").exists() and not (tmp_path / "w").exists()  # nothing enhanced or written
    assert not (tmp_path / "code_was_run").exists()


def test_dry_run_prints_plan(capsys, raw_bids, tmp_path):
    code, text = _run(capsys, raw_bids, tmp_path / "out", "participant", "-w", tmp_path / "w", "--dry-run",
                      "--device", "cpu", "--participant_label", "sub-01", "02", "--mem", "2G", *prior_args())
    assert code == 0, text
    assert "Plan: 4 scan(s) to enhance, 2 skipped" in text
    assert "0.064 T  4x4x8 mm  20x24x8  -> enhance to 80x96x64" in text  # 1 mm default: 4x4x8 split whole
    assert "--mem 2G understood as 2.0 GB" in text
    assert "BIDS validation passed" in text


def test_cuda_without_gpu_fails_at_start(capsys, raw_bids, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    code, text = _run(capsys, raw_bids, tmp_path / "out", "participant", "--device", "cuda", "--dry-run")
    assert code == 1 and "--gpus all" in text


SYNTHSEG_DATA = Path(__file__).parent / "data" / "synthseg"


@pytest.fixture()
def no_synthseg(monkeypatch, tmp_path):
    """No FreeSurfer (hence no mri_synthseg and no FreeSurfer weights) and no baked-in weights."""
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + "/usr/bin" + os.pathsep + "/bin")
    monkeypatch.delenv("FREESURFER_HOME", raising=False)
    monkeypatch.delenv("DIFFDEUR_SYNTHSEG_MODEL", raising=False)


def test_synthseg_without_backend_fails_before_any_work(capsys, raw_bids, tmp_path, no_synthseg):
    out, work = tmp_path / "out", tmp_path / "w"
    code, text = _run(capsys, raw_bids, out, "participant", "--synthseg", "--device", "cpu", "-w", work,
                      "--skip-bids-validation", *prior_args())
    assert code == 1, text
    for needle in ("no SynthSeg backend", "synthseg_2.0.h5", "--synthseg-model", "FREESURFER_HOME",
                   "not downloaded", "DIFFDEUR_SYNTHSEG_MODEL"):
        assert needle in text, needle
    assert "Plan:" not in text and not out.exists() and not work.exists()  # nothing planned, enhanced or written


@pytest.mark.parametrize("content, needle", [
    (b"\x00" * 4096, "not an HDF5 file"),
    ("half", "truncated or corrupt"),
    ("robust", "is a non-robust SynthSeg network"),
    ("missing", "weights file not found"),
])
def test_synthseg_bad_weights_fail_at_start(capsys, raw_bids, tmp_path, no_synthseg, content, needle):
    weights = tmp_path / "synthseg_2.0.h5"
    tiny = (SYNTHSEG_DATA / "synthseg2_tiny.h5").read_bytes()
    extra = []
    if content == "half":
        weights.write_bytes(tiny[: len(tiny) // 2])
    elif content == "robust":
        weights.write_bytes(tiny)
        extra = ["--synthseg-robust"]
    elif content != "missing":
        weights.write_bytes(content)
    code, text = _run(capsys, raw_bids, tmp_path / "out", "participant", "--synthseg", "--synthseg-model", weights,
                      *extra, "--device", "cpu", "-w", tmp_path / "w", "--skip-bids-validation", *prior_args())
    assert code == 1 and needle in text, text
    assert "Plan:" not in text and not (tmp_path / "out").exists()


def test_synthseg_weights_from_the_environment(capsys, raw_bids, tmp_path, no_synthseg, monkeypatch):
    monkeypatch.setenv("DIFFDEUR_SYNTHSEG_MODEL", str(SYNTHSEG_DATA / "synthseg2_tiny.h5"))
    code, text = _run(capsys, raw_bids, tmp_path / "out", "participant", "--synthseg", "--device", "cpu",
                      "--dry-run", "--skip-bids-validation", "-w", tmp_path / "w", *prior_args())
    assert code == 0, text
    assert "SynthSeg 2.0 (PyTorch port, weights synthseg2_tiny.h5)" in text and "34feba2f51d6" in text
    # the FreeSurfer backend sets the baked-in default aside (and says it has no FreeSurfer here)
    code, text = _run(capsys, raw_bids, tmp_path / "out", "participant", "--synthseg", "--synthseg-backend",
                      "freesurfer", "--device", "cpu", "--dry-run", "--skip-bids-validation", *prior_args())
    assert code == 1 and "FreeSurfer backend unavailable" in text, text
    # an image built without the weights: the variable names no file, so it is ignored, with a message
    monkeypatch.setenv("DIFFDEUR_SYNTHSEG_MODEL", str(tmp_path / "synthseg_2.0.h5"))
    code, text = _run(capsys, raw_bids, tmp_path / "out", "participant", "--synthseg", "--device", "cpu",
                      "--dry-run", "--skip-bids-validation", *prior_args())
    assert code == 1 and "Ignoring DIFFDEUR_SYNTHSEG_MODEL" in text and "no SynthSeg backend" in text, text


@pytest.mark.parametrize("args, code, needle", [
    (["--synthseg-parc", "--synthseg-backend", "torch"], 64, "does not implement the cortical parcellation"),
    (["--synthseg-parc", "--synthseg-model", "w.h5"], 64, "--synthseg-model is for the PyTorch port"),
    (["--synthseg-backend", "freesurfer", "--synthseg-model", "w.h5"], 64, "--synthseg-model is for the PyTorch port"),
    (["--synthseg-backend", "onnx"], 64, "onnx"),
    (["--synthseg-parc"], 1, "the PyTorch port does not implement SynthSeg's cortical parcellation"),
])
def test_synthseg_option_combinations(capsys, raw_bids, tmp_path, no_synthseg, args, code, needle):
    got, text = _run(capsys, raw_bids, tmp_path / "out", "participant", "--synthseg", *args, "--device", "cpu",
                     "--dry-run", "--skip-bids-validation", "-w", tmp_path / "w", *prior_args())
    assert got == code and needle in text, text


def test_synthseg_options_without_synthseg_only_warn(capsys, raw_bids, tmp_path, no_synthseg):
    code, text = _run(capsys, raw_bids, tmp_path / "out", "participant", "--synthseg-robust", "--device", "cpu",
                      "--dry-run", "--skip-bids-validation", "-w", tmp_path / "w", *prior_args())
    assert code == 0 and "--synthseg-robust has no effect without --synthseg" in text


def test_prior_by_shipped_name_and_refused_names(capsys, raw_bids, tmp_path):
    code, text = _run(capsys, raw_bids, tmp_path / "out", "participant", "-w", tmp_path / "w", "--dry-run",
                      "--device", "cpu", "--skip-bids-validation", "--prior", "2d-v2")
    assert code == 0 and "Prior: 2d-v2 (shipped) (sha256 " in text, text
    code, text = _run(capsys, raw_bids, tmp_path / "out", "participant", "--prior", "3d-v9")
    assert code == 64 and "'3d-v9' is not a shipped prior (2d-v2) and the file does not exist" in text, text
    code, text = _run(capsys, raw_bids, tmp_path / "out", "participant", "--prior", tmp_path)
    assert code == 64 and "is a directory" in text, text
