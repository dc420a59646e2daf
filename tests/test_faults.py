"""Hostile inputs, faults and resume: the real app (``python -m diffdeur_bids`` in a subprocess) on broken
datasets, killed mid-scan, run twice at once, cut off from the network and from HOME.

Every run uses ``--quality fast --output-resolution 4`` on tiny volumes, so each scan takes a second or less.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import LF_SCANS, LF_SHAPE, LF_ZOOMS, build_raw_dataset, phantom, prior_args

from diffdeur_bids.bids import naming
from diffdeur_bids.cli import run_cli
from diffdeur_bids.demo import write_raw_description, write_scan

REPO = Path(__file__).resolve().parents[1]
FAST = ["--quality", "fast", "--steps", "2", "--output-resolution", "4", "--device", "cpu", "--omp-nthreads", "1"]


def app(*args) -> list[str]:
    return [sys.executable, "-m", "diffdeur_bids", *map(str, args)]


def app_env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)


def run_app(*args, prefix=(), env=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *app(*args)], capture_output=True, text=True, timeout=timeout,
                          env=env or app_env(), cwd=cwd)


def works(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def shown(proc) -> str:
    return (proc.stdout[-4000:] + "\n--- stderr ---\n" + proc.stderr[-4000:])


RAS = np.diag([*LF_ZOOMS, 1.0])
RAS[:3, 3] = [-40, -48, -32]


def save(root: Path, relpath: str, data: np.ndarray, affine=RAS, dtype=None, sidecar=None) -> Path:
    """A NIfTI stored as ``dtype`` (no scaling), with an optional sidecar."""
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data).astype(dtype or np.float32), affine)
    img.set_data_dtype(dtype or np.float32)
    img.header.set_slope_inter(1, 0)
    img.set_sform(affine, 1)
    img.set_qform(affine, 1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    if sidecar is not None:
        path.with_name(path.name.split(".")[0] + ".json").write_text(json.dumps(sidecar))
    return path


def write_huge_header(path: Path, shape=(4000, 4000, 4000)) -> None:
    """A complete uint8 NIfTI of 64 G voxels that takes no disk: the header, then a sparse hole for the data."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header.set_zooms((1.0, 1.0, 1.0))
    header.set_sform(np.eye(4), 1)
    header.set_qform(np.eye(4), 1)
    header.set_data_offset(352)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        header.write_to(handle)
        handle.write(b"\0" * (352 - handle.tell()))
        handle.truncate(352 + int(np.prod(shape)))


def oblique_affine(degrees: float = 20) -> np.ndarray:
    t = np.deg2rad(degrees)
    rotation = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    affine = RAS.copy()
    affine[:3, :3] = rotation @ RAS[:3, :3]
    return affine


# What each subject of the hostile dataset holds, and what must happen to it.
ENHANCED = {
    "01": "uint16 data up to 65535",
    "02": "int8 data with negative values",
    "03": "a handful of slices (4)",
    "04": "a few NaN and infinite voxels",
    "05": "an oblique affine",
    "06": "MagneticFieldStrength 640 (gauss)",
    "07": 'MagneticFieldStrength "64 mT" (a string)',
}
REFUSED = {  # at the plan, from the headers: "Cannot be enhanced"
    "08": "the image is 4D with 3 volumes (20x24x8x3)",
    "09": "the image has 1 voxel(s) along one axis (20x24x1)",
    "10": "the image is 2D (20x24)",
    "11": "its sidecar sub-11/anat/sub-11_T1w.json is not valid JSON",
    "12": "cannot read the NIfTI header (File",  # a plain .nii named .nii.gz
    "13": "too large: it needs about",
    "14": "the file is truncated",  # a .nii cut short
}
FAIL_WHEN_READ = {  # pass the plan, fail in their own step
    "15": "UnreadableScanError: cannot read the image data of sub-15_T1w.nii.gz",  # a .nii.gz cut short
    "16": "InvalidInputError: the image is constant",  # all zeros
}
SKIPPED = {"17": "MagneticFieldStrength 'low' cannot be read as a field strength"}


def build_hostile_dataset(root: Path) -> Path:
    write_raw_description(root, "hostile", "Every kind of broken scan, one per subject.")
    (root / "T1w.json").write_text(json.dumps({"MagneticFieldStrength": 0.064}))
    img = phantom(LF_SHAPE, 1)
    t1 = lambda sub: f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz"  # noqa: E731
    uint16 = np.clip(img * 100, 0, 65535)
    uint16[10, 12, 4] = 65535
    save(root, t1("01"), uint16, dtype=np.uint16)
    save(root, t1("02"), img / 5 - 60, dtype=np.int8)
    save(root, t1("03"), phantom((20, 24, 4), 3))
    nonfinite = img.copy()
    nonfinite[0, 0, 0], nonfinite[1, 0, 0], nonfinite[2, 0, 0] = np.nan, np.inf, -np.inf
    save(root, t1("04"), nonfinite)
    save(root, t1("05"), img, affine=oblique_affine())
    save(root, t1("06"), img, sidecar={"MagneticFieldStrength": 640})
    save(root, t1("07"), img, sidecar={"MagneticFieldStrength": "64 mT"})
    save(root, t1("08"), np.stack([img] * 3, axis=-1))
    save(root, t1("09"), img[..., :1])
    save(root, t1("10"), img[..., 4])
    save(root, t1("11"), img)
    (root / "sub-11/anat/sub-11_T1w.json").write_text('{"MagneticFieldStrength": 0.064,')
    plain = save(root, "sub-12/anat/plain.nii", img)
    plain.rename(root / t1("12"))
    write_huge_header(root / "sub-13/anat/sub-13_T1w.nii")
    cut = save(root, "sub-14/anat/sub-14_T1w.nii", img)
    cut.write_bytes(cut.read_bytes()[:2000])
    whole = save(root, t1("15"), img).read_bytes()
    (root / t1("15")).write_bytes(whole[: len(whole) // 2])
    save(root, t1("16"), np.zeros(LF_SHAPE))
    save(root, t1("17"), img, sidecar={"MagneticFieldStrength": "low"})
    (root / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{i:02d}\n" for i in range(1, 18)))
    return root


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    return SimpleNamespace(raw=build_hostile_dataset(root / "raw"), root=root)


def _scan(sub: str) -> str:
    return f"sub-{sub}/anat/sub-{sub}_T1w.nii" + ("" if sub in ("13", "14") else ".gz")


def test_dry_run_finds_every_problem_in_seconds(hostile, capsys):
    out, work = hostile.root / "dry-out", hostile.root / "dry-work"
    started = time.time()
    code = run_cli([str(a) for a in (hostile.raw, out, "participant", "-w", work, "--dry-run", "--skip-bids-validation",
                                     *FAST, *prior_args())])
    text = "".join(capsys.readouterr())
    assert code == 1, text  # some scans cannot be enhanced: the real run would exit 1
    assert time.time() - started < 30
    assert "Plan: 9 scan(s) to enhance, 1 skipped, 7 cannot be enhanced" in text
    for sub, reason in REFUSED.items():
        assert f"  {_scan(sub)}: {reason}" in text, (sub, text)
    assert "Dry run: nothing was enhanced or written; 7 scan(s) cannot be enhanced (see above)." in text
    assert "more than this machine has" in text and "input 4000x4000x4000, output grid 1000x1000x1000 at 4 mm" in text
    assert not out.exists() and not work.exists()


@pytest.fixture(scope="module")
def hostile_run(hostile):
    out, work = hostile.root / "out", hostile.root / "work"
    proc = run_app(hostile.raw, out, "participant", "-w", work, "--skip-bids-validation", "--nprocs", "2", *FAST,
                   *prior_args())
    return SimpleNamespace(proc=proc, out=out, raw=hostile.raw)


def test_bad_scans_do_not_stop_the_others(hostile_run):
    proc, out = hostile_run.proc, hostile_run.out
    assert proc.returncode == 1, shown(proc)
    summary = proc.stdout[proc.stdout.index("Summary:"):]
    assert summary.startswith(f"Summary: {len(ENHANCED)} done, {len(SKIPPED)} skipped, "
                              f"{len(REFUSED) + len(FAIL_WHEN_READ)} failed"), summary
    for sub in ENHANCED:
        assert f"  done     {_scan(sub)}" in summary, sub
        assert (out / naming.enhanced_relpath(_scan(sub))).is_file()
    for sub, reason in {**REFUSED, **FAIL_WHEN_READ}.items():
        assert f"  FAILED   {_scan(sub)}: {reason}" in summary, (sub, summary)
    assert f"  skipped  {_scan('17')}: {SKIPPED['17']}" in summary
    crashes = sorted(out.glob("sub-*/log/*/crash-*.txt"))
    assert {c.parts[-4] for c in crashes} == {"sub-15", "sub-16"}  # text crash reports of the scans that failed
    assert "MagneticFieldStrength 640 read as 0.064 T (a bare number above 30 is taken as gauss)" in proc.stderr
    assert not list(out.rglob("*.tmp"))


def test_odd_but_valid_scans_are_enhanced_faithfully(hostile_run):
    out, raw = hostile_run.out, hostile_run.raw

    def result(sub):
        img = nib.load(str(out / naming.enhanced_relpath(_scan(sub))))
        meta = json.loads((out / naming.sidecar_of(naming.enhanced_relpath(_scan(sub)))).read_text())
        return img, np.asarray(img.dataobj), meta

    for sub in ENHANCED:
        img, data, meta = result(sub)
        assert img.get_data_dtype() == np.float32 and np.isfinite(data).all() and data.std() > 0, sub
        assert meta["MagneticFieldStrength"] == 0.064, sub  # gauss and "64 mT" are written in tesla
    _, data, _ = result("01")
    assert 30000 < data.max() < 80000  # uint16 up to 65535: no wrap-around, input units kept
    _, _, meta = result("02")
    assert meta["DiffDeuR"]["NegativeVoxelsClipped"] > 0
    img, _, _ = result("03")
    assert img.shape == (20, 24, 8)  # 4 slices of 8 mm -> 8 slices of 4 mm
    _, _, meta = result("04")
    assert meta["DiffDeuR"]["NonfiniteVoxelsSetToZero"] == 3
    img, _, _ = result("05")
    source = nib.load(str(raw / _scan("05")))
    centre = lambda i: (i.affine @ np.r_[(np.array(i.shape[:3]) - 1) / 2, 1])[:3]  # noqa: E731
    np.testing.assert_allclose(centre(img), centre(source), atol=1e-3)  # same place in the world


def test_stop_on_first_crash_stops_at_the_first_failed_scan(hostile):
    proc = run_app(hostile.raw, hostile.root / "out-stop", "participant", "--participant-label", "16", "17",
                   "--assume-lowfield", "--stop-on-first-crash", "-w", hostile.root / "work-stop", "--nprocs", "1",
                   "--skip-bids-validation", *FAST, *prior_args())
    assert proc.returncode == 1, shown(proc)
    assert "Summary: 0 done, 0 skipped, 2 failed" in proc.stdout
    assert f"  FAILED   {_scan('16')}: {FAIL_WHEN_READ['16']}" in proc.stdout
    assert f"  FAILED   {_scan('17')}: not run (stopped early, see the log)" in proc.stdout


# --- interruption and resume -------------------------------------------------------------------------------

SLOW = ["--quality", "fast", "--steps", "300", "--output-resolution", "4", "--device", "cpu", "--nprocs", "1",
        "--omp-nthreads", "1", "--skip-bids-validation", "--participant-label", "01", "--session-label", "01",
        *prior_args()]


def start_and_interrupt(raw, out, work, signum):
    """Start a run of two scans; once the first is written and the second is being enhanced, send ``signum``."""
    # as a foreground command in a terminal: SIGINT not ignored, even when the test runner runs as a background job
    # (whose shell ignores SIGINT, a disposition children would inherit and Python would respect)
    proc = subprocess.Popen(app(raw, out, "participant", "-w", work, *SLOW), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=app_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    stderr = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    reader.start()
    stdout, first_done, sent = [], None, False
    deadline = time.time() + 240
    for line in proc.stdout:  # Nipype's messages, each scan's step progress among them
        stdout.append(line)
        if first_done is None:
            written = sorted(out.rglob("*desc-enhanced_*.nii.gz"))
            first_done = written[0].name.replace("_desc-enhanced", "") if written else None  # the source's name
        elif re.search(r"\.nii\.gz: step \d+/", line) and first_done not in line:
            proc.send_signal(signum)
            sent = True
            break
        assert time.time() < deadline, "the run never reached the second scan"
    stdout.append(proc.stdout.read())
    proc.wait(timeout=120)
    reader.join(timeout=10)
    assert sent, "".join(stdout) + "".join(stderr)
    return proc.returncode, "".join(stdout), "".join(stderr), first_done


def assert_nothing_partial(out: Path) -> None:
    assert not [p for p in out.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
    for image in out.rglob("*.nii.gz"):
        assert np.isfinite(np.asarray(nib.load(str(image)).dataobj)).all()  # complete: the whole stream reads
        json.loads(naming.sidecar_of(image).read_text())  # its sidecar exists and is whole


def test_sigterm_mid_scan_stops_cleanly_and_a_rerun_resumes(tmp_path):
    raw = build_raw_dataset(tmp_path / "raw")
    out, work = tmp_path / "out", tmp_path / "work"
    code, stdout, stderr, first = start_and_interrupt(raw, out, work, signal.SIGTERM)
    assert code == 143, stdout + stderr
    assert ("diffdeur: interrupted by SIGTERM. Finished scans are kept and no partial file is left; rerun the same "
            "command with the same work dir (-w) to resume.") in stderr
    assert "Summary: 1 done, 0 skipped, 1 failed" in stdout
    assert "interrupted before it finished; a rerun with the same work dir does it" in stdout
    assert len(list(out.rglob("*desc-enhanced_*.nii.gz"))) == 1
    assert_nothing_partial(out)
    results = {p.parts[-3]: p for p in work.rglob("enhance/result_enhance.pklz")}
    assert len(results) == 1  # the interrupted scan has no result: the rerun redoes it
    stamp = next(iter(results.values())).stat().st_mtime_ns

    proc = run_app(raw, out, "participant", "-w", work, *SLOW)
    assert proc.returncode == 0, shown(proc)
    assert "Summary: 2 done, 0 skipped, 0 failed" in proc.stdout
    reused = [ln for ln in proc.stdout.splitlines() if "(enhanced by an earlier run, reused from the work dir)" in ln]
    assert len(reused) == 1 and first in reused[0], proc.stdout
    assert next(iter(results.values())).stat().st_mtime_ns == stamp  # the finished scan was not redone
    assert len(list(work.rglob("enhance/result_enhance.pklz"))) == 2
    assert len(list(out.rglob("*desc-enhanced_*.nii.gz"))) == 2
    assert_nothing_partial(out)


def test_ctrl_c_mid_scan_exits_130_and_leaves_nothing_partial(tmp_path):
    raw = build_raw_dataset(tmp_path / "raw")
    code, stdout, stderr, _ = start_and_interrupt(raw, tmp_path / "out", tmp_path / "work", signal.SIGINT)
    assert code == 130 and "diffdeur: interrupted by Ctrl-C (SIGINT)." in stderr, stdout + stderr
    assert_nothing_partial(tmp_path / "out")


# --- concurrency ---------------------------------------------------------------------------------------------

def test_two_participant_runs_share_one_output_folder(tmp_path):
    from diffdeur_bids.bids.validation import errors_of, run_validator

    raw = build_raw_dataset(tmp_path / "raw")
    out = tmp_path / "derivatives" / "diffdeur"
    procs = [subprocess.Popen(app(raw, out, "participant", "--participant-label", sub, "-w", tmp_path / f"work-{sub}",
                                  "--skip-bids-validation", "--nprocs", "1", *FAST, *prior_args()),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=app_env())
             for sub in ("01", "02")]  # as a SLURM array does: same output folder, one work dir each
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (stdout, stderr) in zip(procs, results):
        assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and len(description["GeneratedBy"]) == 1
    assert (out / ".bidsignore").read_text().splitlines().count("log") == 1
    assert {str(p.relative_to(out)) for p in out.rglob("*desc-enhanced_*.nii.gz")} == \
        {str(naming.enhanced_relpath(s)) for s in LF_SCANS}
    assert not list(out.rglob("*.tmp"))
    code, report = run_validator(out)
    assert errors_of(report) == [], report


# --- run-time isolation: no network, nothing written outside the output, work and temporary folders -----------

RECORD_CONNECTS = '''
import os, socket
_LOG = os.environ["DIFFDEUR_TEST_NETWORK_LOG"]
def _record(what):
    with open(_LOG, "a") as handle:
        handle.write(f"{os.getpid()} {what}\\n")
    raise OSError("network access blocked by the test")
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _record(f"connect {address}")
    return _connect(self, address)
def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _record(f"connect_ex {address}")
    return _connect_ex(self, address)
socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
socket.getaddrinfo = lambda *args, **kwargs: _record(f"getaddrinfo {args[:2]}")
'''


def tree_state(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()
                                       if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def isolated_run(tmp_path_factory):
    """One run (validation included) with no network, in an empty HOME and current folder.

    Networking is cut for real with a new network namespace (``unshare -rn``) where the kernel allows it;
    in every case a sitecustomize in all its Python processes records (and refuses) any IP connection or
    name lookup.
    """
    root = tmp_path_factory.mktemp("isolated")
    raw = build_raw_dataset(root / "raw")
    home, tmp, cwd, site = (root / name for name in ("home", "tmp", "cwd", "site"))
    for folder in (home, tmp, cwd, site):
        folder.mkdir()
    (site / "sitecustomize.py").write_text(RECORD_CONNECTS)
    log = root / "network.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_") and k not in ("DENO_DIR",)}
    env.update(HOME=str(home), TMPDIR=str(tmp), PYTHONPATH=f"{site}{os.pathsep}{REPO}", OMP_NUM_THREADS="1",
               DIFFDEUR_TEST_NETWORK_LOG=str(log))
    namespace = ["unshare", "-rn"] if works(["unshare", "-rn", "true"]) else []
    probe = subprocess.run([*namespace, sys.executable, "-c", "import socket; socket.getaddrinfo('example.org', 443)"],
                           env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "getaddrinfo ('example.org', 443)" in log.read_text()  # the recorder works
    log.unlink()
    before = tree_state(raw)
    out, work = root / "out", root / "work"
    proc = run_app(raw, out, "participant", "--participant-label", "02", "-w", work, "--nprocs", "1", *FAST,
                   *prior_args(), prefix=namespace, env=env, cwd=cwd)
    return SimpleNamespace(proc=proc, log=log, raw=raw, before=before, home=home, cwd=cwd, out=out, work=work,
                           namespace=namespace)


def test_no_network_access_is_attempted(isolated_run):
    proc = isolated_run.proc
    assert proc.returncode == 0, shown(proc)
    assert "BIDS validation passed" in proc.stderr  # the validator ran too, offline
    assert "Summary: 1 done" in proc.stdout
    attempts = isolated_run.log.read_text() if isolated_run.log.exists() else ""
    assert attempts == "", attempts


def test_nothing_is_written_outside_the_output_work_and_temporary_folders(isolated_run):
    assert isolated_run.proc.returncode == 0, shown(isolated_run.proc)
    assert tree_state(isolated_run.raw) == isolated_run.before  # the input: not a byte, not a timestamp
    assert list(isolated_run.home.rglob("*")) == []  # no cache or config in HOME (deno, nipype, matplotlib...)
    assert list(isolated_run.cwd.rglob("*")) == []  # nor in the current folder
    assert (isolated_run.out / "dataset_description.json").is_file() and isolated_run.work.is_dir()


# --- permissions and read-only file systems --------------------------------------------------------------------

def unprivileged() -> list[str]:
    """A prefix that runs a command without root's power to ignore permissions (nothing when not root)."""
    if os.geteuid() != 0:
        return []
    if not works(["unshare", "-U", "true"]):
        pytest.skip("running as root and user namespaces are not available: permissions cannot be tested")
    return ["unshare", "-U"]


def test_unreadable_input_exits_66(fresh_bids, tmp_path):
    prefix = unprivileged()
    fresh_bids.chmod(0)
    try:
        proc = run_app(fresh_bids, tmp_path / "out", "participant", "-w", tmp_path / "w", "--device", "cpu",
                       prefix=prefix)
    finally:
        fresh_bids.chmod(0o755)
    assert proc.returncode == 66, shown(proc)
    assert f"diffdeur: error: bids_dir {fresh_bids} cannot be read (permission denied" in proc.stderr


def test_output_on_a_read_only_file_system_exits_73(raw_bids, tmp_path):
    if not works(["unshare", "-rm", "true"]):
        pytest.skip("mount namespaces are not available here")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    mount = ["unshare", "-rm", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(read_only)]
    proc = run_app(raw_bids, read_only / "derivatives", "participant", "-w", tmp_path / "w", "--device", "cpu",
                   "--skip-bids-validation", prefix=mount)
    assert proc.returncode == 73, shown(proc)
    assert (f"diffdeur: error: output_dir {read_only / 'derivatives'} cannot be created or written (check "
            "permissions; in a container, mount it writable)") in proc.stderr
    assert list(read_only.iterdir()) == [] and not (tmp_path / "w").exists()


# --- memory: GPU out of memory --------------------------------------------------------------------------------

class GpuThatFits:
    """Stands in for the prior network on a GPU that holds at most ``fits`` slices at once (no GPU here)."""

    config = SimpleNamespace(size_multiple=4)

    def __init__(self, fits: int):
        self.fits, self.batches = fits, []

    def __call__(self, x, sigma):
        self.batches.append(len(x))
        if len(x) > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x * 0.5


def test_gpu_out_of_memory_retries_with_smaller_batches():
    from diffdeur_bids.enhance.prior import denoise_slices

    slices = torch.rand(16, 8, 8)
    gpu = GpuThatFits(3)
    out = denoise_slices(gpu, slices, 0.1, max_pixels=16 * 64)  # first try: all 16 slices in one batch
    torch.testing.assert_close(out, slices * 0.5)
    assert gpu.batches[0] == 16 and gpu.batches[-1] <= 3  # 16 -> 8 -> 4 -> 2: then it fits
    with pytest.raises(torch.cuda.OutOfMemoryError):
        denoise_slices(GpuThatFits(0), slices, 0.1)  # not even one slice fits: the error goes up


def test_out_of_memory_in_a_scan_gets_a_clear_message(tmp_path, monkeypatch):
    from diffdeur_bids.enhance import EnhanceSettings
    from diffdeur_bids.enhance.prior import Prior
    from diffdeur_bids.errors import NotEnoughMemoryError
    from diffdeur_bids.interfaces import EnhanceImage

    def no_memory(self, x, sigma):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Prior, "forward", no_memory)
    scan = write_scan(tmp_path, "scan.nii.gz", phantom(LF_SHAPE, 1), RAS)
    settings = EnhanceSettings.preset("fast", steps=2, output_resolution=4.0).as_dict()
    node = EnhanceImage(in_file=str(scan), settings={k: v for k, v in settings.items() if k not in ("device", "threads")},
                        device="cpu", label="sub-01_T1w.nii.gz")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotEnoughMemoryError) as error:
        node.run(cwd=str(tmp_path))
    assert str(error.value) == (
        "sub-01_T1w.nii.gz: the GPU ran out of memory even with the smallest batches (CUDA out of memory. Tried to "
        "allocate 2.00 GiB); use a coarser --output-resolution, run fewer scans at once (--nprocs, --mem), "
        "or use --device cpu")


def test_truncated_gzip_scan_fails_with_a_clear_message(tmp_path):
    from diffdeur_bids.errors import UnreadableScanError
    from diffdeur_bids.imageio import reorient_to_ras

    scan = write_scan(tmp_path, "scan.nii.gz", phantom(LF_SHAPE, 1), RAS)
    scan.write_bytes(gzip.compress(gzip.decompress(scan.read_bytes()))[:-200])
    with pytest.raises(UnreadableScanError, match="the file is truncated or corrupt; copy or convert it again"):
        reorient_to_ras(scan, tmp_path / "ras.nii.gz")
    assert not (tmp_path / "ras.nii.gz").exists()
