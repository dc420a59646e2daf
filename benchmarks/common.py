"""What the benchmark scripts share: running one method in a fresh process, provenance, writing.

Why a fresh process per method run: peak resident memory is a high-water mark for the whole
process, so the only way to read one method's peak is to run that method alone in a new process
(spawned, not forked, so nothing of the parent's heap is shared).

Why ``VmHWM`` and not only ``ru_maxrss``: on Linux ``ru_maxrss`` survives ``exec``, so a spawned
child (fork + exec) reports at least the parent's resident size at spawn time (measured: a 28 MB
child of a 1 GB parent reads 981 MB). ``VmHWM`` in ``/proc/self/status`` belongs to the new address
space and is the child's own peak; ``ru_maxrss`` is still recorded beside it.
"""

from __future__ import annotations

import cProfile
import datetime as _dt
import io
import math
import multiprocessing as mp
import os
import platform
import pstats
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from diffdeur_bids.atomic import write_bytes, write_json, write_text  # noqa: E402,F401
from diffdeur_bids.checksums import file_sha256  # noqa: E402


# --------------------------------------------------------------------------- one method, own process


def parse_method(name: str) -> tuple[str, str]:
    """``diffdeur-fast`` -> (``diffdeur``, ``fast``); a bare method name runs the default preset."""
    method, _, preset = name.partition("-")
    return method, preset or "default"


def _child(job: dict, conn) -> None:
    """Spawned child: load what the method needs, time the method alone, report peaks, send back."""
    try:
        conn.send(_run_job(job))
    except BaseException as exc:  # report any failure to the parent instead of dying silently
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def _run_job(job: dict) -> dict:
    import torch

    from diffdeur_bids.enhance import METHODS, EnhanceSettings, enhance
    from diffdeur_bids.priors import load_prior, load_upsampler
    from diffdeur_bids.priors.checkpoint import read_upsampler

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    settings = EnhanceSettings.preset(job["preset"], **job["settings"])
    cuda = settings.device.startswith("cuda") or (settings.device == "auto" and torch.cuda.is_available())
    rss_before_mb = peak_rss_mb()
    t0 = time.perf_counter()
    prior = load_prior(device=settings.device) if METHODS[settings.method].needs_prior else None
    upsampler = None
    if settings.learned_upsampling:  # the shipped one, or a file under trial (--upsampler)
        upsampler = read_upsampler(job["upsampler"]) if job.get("upsampler") else load_upsampler(settings.device)
    load_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    ticks = []  # (done, total, elapsed s, estimated s left): what the progress lines said
    profiler = cProfile.Profile() if job.get("profile") else None
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    res = enhance(job["lf"], job["lf_affine"], settings, prior=prior, progress=lambda *tick: ticks.append(tick),
                  upsampler=upsampler)
    if profiler:
        profiler.disable()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {
        "image": res.image, "affine": res.affine, "info": res.info, "ticks": ticks,
        "seconds": seconds, "prior_load_seconds": load_s,
        "peak_rss_mb": peak_rss_mb(), "rss_before_method_mb": rss_before_mb, "ru_maxrss_mb": _maxrss_mb(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "threads": torch.get_num_threads(),
        "parts": part_times(profiler) if profiler else None,
    }


# The parts of a run the speed benchmarks report: (label, file in diffdeur_bids/enhance, function).
# Cumulative times, so they nest: the INR fit holds its renders, back-propagations and operators.
PARTS = [
    ("prepare (noise, acquired grid)", "api.py", "prepare_scan"),
    ("start, one scan (prior on LF slices + projection + upsampler)", "start.py", "single_scan_start"),
    ("learned upsampler", "upsampler.py", "upsample"),
    ("start, fused stacks (prior on LF slices + registration + projection)", "start.py", "aligned_fused_start"),
    ("registration", "alignment.py", "align_stacks"),
    ("the stacks' own upsampled starts (projection + upsampler + reading onto the output grid)", "start.py",
     "upsampled_stacks"),
    ("prior", "prior.py", "denoise"),
    ("INR fit", "inr.py", "fit_inr"),
    ("INR features (interpolation)", "inr.py", "features"),
    ("INR decode (MLP)", "inr.py", "decode"),
    ("INR back-propagation", "inr.py", "backprop"),
    ("operator A", "forward.py", "__call__"),
    ("operator A^T", "forward.py", "adjoint"),
    ("stack operator A", "stacks.py", "__call__"),
    ("stack operator A^T", "stacks.py", "adjoint"),
    ("resample", "grids.py", "resample"),
]


def part_times(profiler) -> list[dict]:
    """Cumulative seconds and calls of each of :data:`PARTS` that ran (recursion counted once, as cProfile does)."""
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (calls, primitive calls, tottime, cumtime, callers)}
    rows = []
    for label, filename, func in PARTS:
        matches = [v for (f, _, name), v in stats.items()
                   if name == func and f.replace(os.sep, "/").endswith(f"diffdeur_bids/enhance/{filename}")]
        if matches:
            rows.append({"part": label, "seconds": round(sum(v[3] for v in matches), 2), "calls": sum(v[1] for v in matches)})
    return rows


def _maxrss_mb() -> float:
    """``ru_maxrss`` (Linux reports kilobytes); inflated by the parent in a spawned child, see above."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_rss_mb() -> float:
    """This process's own peak resident memory (``VmHWM``); ``ru_maxrss`` where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return _maxrss_mb()


def run_in_fresh_process(job: dict) -> dict:
    """Run ``job`` (see :func:`_run_job`) in a spawned child and return its report.

    A child killed by the OS (out of memory, for example) comes back as an ``error`` entry.
    """
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(job, send))
    proc.start()
    send.close()  # so recv() sees EOF if the child dies without answering
    try:
        out = recv.recv()
    except EOFError:
        out = None
    proc.join()
    if out is None:
        out = {"error": f"the method's process died (exit code {proc.exitcode})"}
    return out


# --------------------------------------------------------------------------- provenance


def provenance(device: str, threads: int | None) -> dict:
    """Everything needed to compare a run with another: code, weights, versions, machine."""
    import nibabel
    import scipy
    import skimage
    import torch

    from diffdeur_bids.evaluation import metrics
    from diffdeur_bids._version import __version__
    from diffdeur_bids.enhance import resolve_device
    from diffdeur_bids.priors import shipped_path

    dev = resolve_device(device)
    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "diffdeur_version": __version__,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model(),
        "threads": int(threads) if threads else torch.get_num_threads(),
        "machine": {"platform": platform.platform(), "cpu_model": cpu_model(),
                    "cpus_usable": len(os.sched_getaffinity(0)), "memory_gb": _memory_gb()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "cuda": torch.version.cuda, "numpy": np.__version__, "scipy": scipy.__version__,
                     "scikit-image": skimage.__version__, "nibabel": nibabel.__version__},
        "weights_sha256": {"prior": sha256(shipped_path()), "lpips": sha256(metrics.LPIPS_WEIGHTS)},
    }
    return info


def _git(*args) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        return round(kb / 2**20, 1)
    except (OSError, IndexError, ValueError):
        return None


def sha256(path) -> str | None:
    return file_sha256(path) if Path(path).is_file() else None


# --------------------------------------------------------------------------- numbers and files


def finite_or_none(x):
    """JSON has no NaN/inf (and the atomic writer refuses them): a non-finite number becomes null."""
    if isinstance(x, dict):
        return {k: finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_or_none(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, np.ndarray):
        return finite_or_none(x.tolist())
    return x


def mean_std(values) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for a single volume) of the finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def save_figure(fig, path) -> Path:
    """Render a matplotlib figure to memory, then write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return write_bytes(path, buf.getvalue())


def default_out_dir() -> Path:
    return REPO / "benchmarks" / "results" / _dt.date.today().isoformat()
