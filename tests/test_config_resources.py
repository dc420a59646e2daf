"""Settings file, memory parsing, atomic writes and the shared top-level files."""

import json
import multiprocessing as mp
tomllib = __import__("pytest").importorskip("tomllib")  # Python >= 3.11
from pathlib import Path

import pytest

from diffdeur_bids import atomic
from diffdeur_bids.bids.dataset import write_dataset_files
from diffdeur_bids.config import Config
from diffdeur_bids.resources import estimate_enhance_mem_gb, parse_memory


@pytest.mark.parametrize("text, gb", [("16G", 16), ("16GB", 16), ("16 GiB", 16), ("2048M", 2), ("2048", 2),
                                      ("0.5T", 512), ("1.5g", 1.5)])
def test_parse_memory(text, gb):
    assert parse_memory(text) == pytest.approx(gb)


@pytest.mark.parametrize("bad", ["", "lots", "16X", "-1G", "0"])
def test_parse_memory_refuses(bad):
    with pytest.raises(ValueError):
        parse_memory(bad)


def test_memory_estimate_grows_with_size():
    small, big = estimate_enhance_mem_gb((64, 64, 64)), estimate_enhance_mem_gb((256, 256, 256))
    assert 0.5 < small < big
    assert estimate_enhance_mem_gb((256, 256, 256), num_samples=4) > big


def test_config_saves_readable_toml(tmp_path):
    cfg = Config(bids_dir=Path("/b"), output_dir=Path("/o"), participant_label=["01"],
                 bids_filters={"T1w": {"acquisition": None}}, mem_gb=None)
    path = cfg.save(tmp_path / "log")
    data = tomllib.loads(path.read_text())["diffdeur"]
    assert data["bids_dir"] == "/b" and data["participant_label"] == ["01"] and "mem_gb" not in data
    assert json.loads(data["bids_filters"]) == {"T1w": {"acquisition": None}}
    assert data["run_uuid"] == cfg.run_uuid


def test_atomic_write_leaves_no_temporary(tmp_path):
    atomic.write_json(tmp_path / "a" / "x.json", {"k": 1})
    atomic.copy_file(tmp_path / "a" / "x.json", tmp_path / "a" / "y.json")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.json", "y.json"]
    assert (tmp_path / "a" / "x.json").stat().st_mode & 0o044  # readable by others as with open()


def _write(args):
    write_dataset_files(Path(args[0]), Path(args[1]))


def test_concurrent_runs_share_the_output_folder(raw_bids, tmp_path):
    out = tmp_path / "out"
    with mp.get_context("spawn").Pool(4) as pool:
        pool.map(_write, [(str(raw_bids), str(out))] * 8)
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "diffdeur"
    assert (out / ".bidsignore").read_text().splitlines().count("log") == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
