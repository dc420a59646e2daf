"""The sim-lf benchmark harness runs end to end on a tiny crop of the MNI template (< 60 s).

Why: the full benchmark takes hours on a CPU and is run rarely; this catches a broken harness
(spawned method processes, scoring, JSON/Markdown/PNG writing) in the ordinary test run.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")  # the `benchmark` extra
pytest.importorskip("nilearn")
pytest.importorskip("skimage")

REPO = Path(__file__).resolve().parents[1]
METHODS = ["linear", "diffdeur-fast"]


def test_sim_lf_smoke(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "sim_lf.py"), "--mni", "--crop", "48",
           "--methods", *METHODS, "--steps", "2", "--threads", "1", "--device", "cpu", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MNI fallback" in proc.stdout

    for name in ("sim_lf.json", "sim_lf.md", "sim_lf_slices.png", "sim_lf_quality_time.png"):
        assert (tmp_path / name).stat().st_size > 0, name

    doc = json.loads((tmp_path / "sim_lf.json").read_text())
    assert doc["protocol"] == "sim-lf-v1"
    assert doc["provenance"]["weights_sha256"]["prior"]
    for track in ("2mm", "1mm"):
        for method in METHODS:
            [entry] = doc["per_volume"][track][method]
            assert "error" not in entry, entry
            assert math.isfinite(entry["psnr"]) and math.isfinite(entry["ssim"]), entry
            assert entry["peak_rss_mb"] > 0 and entry["seconds"] >= 0
            assert math.isfinite(doc["summary"][track][method]["psnr"]["mean"])
    md = (tmp_path / "sim_lf.md").read_text()
    assert "| method | PSNR (dB) | SSIM | LPIPS | s/volume | peak MB |" in md
