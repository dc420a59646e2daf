"""fMRIPrep's execution flags, as a user of fMRIPrep types them: each one does what it says."""

from __future__ import annotations

import pytest

from test_faults import FAST, run_app, shown

ONE_SCAN = ["--participant-label", "02"]  # sub-02: one low-field T1w


def test_notrack_is_accepted_and_changes_nothing(raw_bids, tmp_path):
    proc = run_app(raw_bids, tmp_path / "out", "participant", "--notrack", "--dry-run", "-w", tmp_path / "w",
                   *ONE_SCAN, *FAST)
    assert proc.returncode == 0, shown(proc)
    assert "Dry run" in proc.stdout


def test_fs_license_file_must_exist(raw_bids, tmp_path):
    proc = run_app(raw_bids, tmp_path / "out", "participant", "--fs-license-file", tmp_path / "missing.txt",
                   "--dry-run", *ONE_SCAN, *FAST)
    assert proc.returncode == 64 and "fs-license-file" in (proc.stdout + proc.stderr), shown(proc)
    licence = tmp_path / "license.txt"
    licence.write_text("someone@example.org\n12345\n")
    proc = run_app(raw_bids, tmp_path / "out", "participant", "--fs-license-file", licence, "--dry-run",
                   "-w", tmp_path / "w", *ONE_SCAN, *FAST)
    assert proc.returncode == 0, shown(proc)


@pytest.mark.parametrize("text, message", [
    ("plugin: NoSuchPlugin\n", "unknown Nipype plugin 'NoSuchPlugin'"),
    ("plugin: [Linear\n", "cannot read it as YAML"),
    ("plugin_args: {n_procs: 2}\n", "expected 'plugin: NAME'"),
])
def test_a_bad_plugin_file_is_refused_before_any_work(raw_bids, tmp_path, text, message):
    plugin = tmp_path / "plugin.yml"
    plugin.write_text(text)
    proc = run_app(raw_bids, tmp_path / "out", "participant", "--use-plugin", plugin, *ONE_SCAN, *FAST)
    assert proc.returncode == 64 and message in proc.stderr, shown(proc)
    assert not (tmp_path / "out").exists()


def test_use_plugin_clean_workdir_write_graph_and_resource_monitor(raw_bids, tmp_path):
    """One run with all four: Nipype's Linear plugin runs it, a stale file in the work dir is gone, the graph
    names the enhancement node, and the resource monitor recorded the nodes' peak memory, leaving nothing in the
    directory the app was started from (Nipype writes its monitor's files into the process's cwd)."""
    from nipype.utils.filemanip import loadpkl

    work = tmp_path / "work"
    work.mkdir()
    (work / "stale.txt").write_text("from an old run")
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: Linear\nplugin_args: {}\n")
    out = tmp_path / "out"
    started_in = tmp_path / "cwd"
    started_in.mkdir()
    proc = run_app(raw_bids, out, "participant", "-w", work, "--use-plugin", plugin, "--clean-workdir",
                   "--write-graph", "--resource-monitor", "--skip-bids-validation", *ONE_SCAN, *FAST, cwd=started_in)
    assert proc.returncode == 0, shown(proc)
    assert list(started_in.iterdir()) == []
    assert not (work / "stale.txt").exists()
    assert (out / "sub-02" / "anat" / "sub-02_run-01_desc-enhanced_T1w.nii.gz").is_file()
    graph = (work / "graph.dot").read_text()
    assert graph.startswith("digraph") and "enhance" in graph and "->" in graph
    results = list(work.rglob("result_enhance.pklz"))
    assert len(results) == 1
    runtime = loadpkl(results[0]).runtime
    assert getattr(runtime, "mem_peak_gb", None) is not None and runtime.mem_peak_gb > 0


def test_clean_workdir_refuses_a_work_dir_that_holds_the_output(raw_bids, tmp_path):
    proc = run_app(raw_bids, tmp_path / "w" / "out", "participant", "-w", tmp_path / "w", "--clean-workdir",
                   "--skip-bids-validation", *ONE_SCAN, *FAST)
    assert proc.returncode == 64 and "--clean-workdir" in proc.stderr, shown(proc)
    assert not (tmp_path / "w" / "out").exists()


def test_boilerplate_only_writes_the_methods_text_with_the_versions_that_ran(raw_bids, tmp_path):
    from html.parser import HTMLParser
    from importlib.metadata import version

    from diffdeur_bids import __version__

    out = tmp_path / "out"
    proc = run_app(raw_bids, out, "participant", "--boilerplate-only", "--num-samples", "3", "-w", tmp_path / "w",
                   *ONE_SCAN, *FAST)
    assert proc.returncode == 0, shown(proc)
    text = (out / "logs" / "CITATION.md").read_text()
    for package in ("nipype", "pybids", "torch"):
        assert version(package) in text, package
    assert f"diffdeur* {__version__}" in text and "mean of 3 posterior samples" in text and "4 mm" in text
    assert "`2d-v2`" in text and "SynthSeg" not in text  # the prior that ran; no segmentation was asked for
    bib = (out / "logs" / "CITATION.bib").read_text()
    assert bib.count("@") == text.count("- [@") and "@article{nipype," in bib and "synthseg" not in bib
    parser = HTMLParser()
    parser.feed((out / "logs" / "CITATION.html").read_text())
    assert "<h1>Methods</h1>" in (out / "logs" / "CITATION.html").read_text()
    assert not list(out.rglob("*.nii.gz")) and not (tmp_path / "w").exists()  # nothing enhanced, no work dir
