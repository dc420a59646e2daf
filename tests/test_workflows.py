"""Workflow plumbing without running it: one branch per scan, crash dirs, GPU accounting, stable hashes."""

from pathlib import Path

from diffdeur_bids.bids.discovery import discover
from diffdeur_bids.config import Config, Resolved
from diffdeur_bids.interfaces import EnhanceImage
from diffdeur_bids.plan import scan_plan
from diffdeur_bids.workflows import init_diffdeur_wf


def _memory_plan(scans, config):
    return {str(s.relpath): scan_plan(s, config) for s in scans}


def _workflow(raw_bids, tmp_path, device="cpu"):
    config = Config(bids_dir=raw_bids, output_dir=tmp_path / "out", work_dir=tmp_path / "work",
                    quality="fast", output_resolution=2.0, omp_nthreads=2)
    scans = discover(raw_bids).scans
    resolved = Resolved(device=device, weights_sha256="ab" * 32, memory_plan=_memory_plan(scans, config))
    return config, init_diffdeur_wf(config, resolved, scans)


def test_one_branch_per_scan_with_crash_dir_per_subject(raw_bids, tmp_path):
    config, wf = _workflow(raw_bids, tmp_path)
    nodes = wf._get_all_nodes()
    assert wf.name == "diffdeur_0_1_wf" and sorted(w.name for w in wf._graph.nodes()) == ["sub_01_wf", "sub_02_wf"]
    enhance = sorted(n.fullname for n in nodes if n.name == "enhance")
    assert enhance == ["sub_01_ses_01_T1w_wf.enhance", "sub_01_ses_01_T2w_wf.enhance",
                       "sub_01_ses_02_T1w_wf.enhance", "sub_02_run_01_T1w_wf.enhance"]
    assert len(nodes) == 3 * len(enhance)  # reorient -> enhance -> ds_enhanced
    for node in nodes:
        subject = "02" if node.fullname.startswith("sub_02") else "01"
        assert node.config["execution"]["crashdump_dir"] == str(Path(config.output_dir) / f"sub-{subject}" / "log" / config.run_uuid)
    node = next(n for n in nodes if n.name == "enhance")
    assert node.n_procs == 2 and 0.5 < node.mem_gb < 2  # 40x48x32 output voxels
    assert not node.is_gpu_node()


def test_gpu_nodes_are_visible_to_multiproc(raw_bids, tmp_path):
    _, wf = _workflow(raw_bids, tmp_path, device="cuda:0")
    assert all(n.is_gpu_node() for n in wf._get_all_nodes() if n.name == "enhance")


def test_device_and_threads_do_not_change_the_hash():
    common = dict(settings={"steps": 2}, weights_sha256="x")
    cpu = EnhanceImage(device="cpu", threads=1, use_gpu=False, label="a", **common)
    gpu = EnhanceImage(device="cuda:0", threads=8, use_gpu=True, label="b", **common)
    assert cpu.inputs.get_hashval()[1] == gpu.inputs.get_hashval()[1]
    other = EnhanceImage(device="cpu", settings={"steps": 3}, weights_sha256="x")
    assert other.inputs.get_hashval()[1] != cpu.inputs.get_hashval()[1]


SYNTHSEG_TINY = Path(__file__).parent / "data" / "synthseg" / "synthseg2_tiny.h5"


def _synthseg_workflow(raw_bids, tmp_path, device="cpu"):
    config = Config(bids_dir=raw_bids, output_dir=tmp_path / "out", work_dir=tmp_path / "work", quality="fast",
                    output_resolution=2.0, omp_nthreads=2, synthseg=True)
    scans = discover(raw_bids).scans
    resolved = Resolved(device=device, weights_sha256="ab" * 32, synthseg_backend="torch",
                        synthseg_weights=SYNTHSEG_TINY, synthseg_weights_sha256="cd" * 32,
                        memory_plan=_memory_plan(scans, config))
    return init_diffdeur_wf(config, resolved, scans)


def test_synthseg_nodes_follow_enhance(raw_bids, tmp_path):
    wf = _synthseg_workflow(raw_bids, tmp_path)
    nodes = wf._get_all_nodes()
    seg = [n for n in nodes if n.name == "synthseg"]
    # reorient -> enhance -> ds_enhanced, + synthseg -> ds_synthseg for one scan per segmentation name:
    # sub-01_ses-01 has a T1w and a T2w, and only the T1w is segmented
    assert sorted(n.fullname for n in seg) == ["sub_01_ses_01_T1w_wf.synthseg", "sub_01_ses_02_T1w_wf.synthseg",
                                               "sub_02_run_01_T1w_wf.synthseg"]
    assert len(nodes) == 3 * 4 + 2 * 3
    assert {n.name for n in nodes if n.name.startswith("ds_")} == {"ds_enhanced", "ds_synthseg"}
    node = seg[0]
    assert node.inputs.backend == "torch" and node.inputs.model_file == str(SYNTHSEG_TINY)
    assert node.inputs.model_sha256 == "cd" * 32 and node.n_procs == 2 and 2 < node.mem_gb < 3
    assert not node.is_gpu_node()
    sub = next(w for w in wf._graph.nodes() if w.name == "sub_01_wf")
    branch = next(w for w in sub._graph.nodes() if w.name == "sub_01_ses_01_T1w_wf")
    edges = {(u.name, v.name) for u, v in branch._graph.edges()}
    assert ("enhance", "synthseg") in edges and ("synthseg", "ds_synthseg") in edges
    assert all(n.is_gpu_node() for n in _synthseg_workflow(raw_bids, tmp_path, "cuda:0")._get_all_nodes()
               if n.name == "synthseg")


def test_synthseg_device_threads_and_weights_path_do_not_change_the_hash():
    from diffdeur_bids.interfaces import SynthSeg

    cpu = SynthSeg(backend="torch", model_file="/a/w.h5", model_sha256="x", device="cpu", threads=1, use_gpu=False)
    gpu = SynthSeg(backend="torch", model_file="/b/w.h5", model_sha256="x", device="cuda:0", threads=8, use_gpu=True)
    assert cpu.inputs.get_hashval()[1] == gpu.inputs.get_hashval()[1]
    for changed in (dict(model_sha256="y"), dict(robust=True)):
        other = SynthSeg(**{**dict(backend="torch", model_file="/a/w.h5", model_sha256="x"), **changed})
        assert other.inputs.get_hashval()[1] != cpu.inputs.get_hashval()[1]
