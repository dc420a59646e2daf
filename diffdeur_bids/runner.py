"""One participant-level run, start to finish: checks, plan, workflow, summary.

Order matters for users: everything that can fail in seconds (paths, device, weights, labels,
filters, validation) is checked before any enhancement starts, and the plan is printed before
work begins. Returns the process exit status; errors are raised as typed exceptions for the CLI.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
from pathlib import Path

import click

from .bids import discovery as disc
from .bids import naming
from .bids.dataset import write_dataset_files
from .bids.validation import validate_input
from .config import Config
from .errors import EmptySelectionError, FeatureUnavailableError, OutputError, UsageError
from .imageio import ras_grid
from .plan import Outcome, format_plan, format_summary
from .resources import estimate_enhance_mem_gb, format_gb, memory_limit_gb

log = logging.getLogger("diffdeur")


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _writable(path: Path) -> bool:
    """Whether ``path`` exists and is usable (read, write), or could be created in its nearest existing parent."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.R_OK | os.W_OK | os.X_OK)


def check_paths(config: Config) -> None:
    """Never write into the input dataset; fail before work when outputs cannot be written."""
    bids = config.bids_dir.resolve()
    disc.check_bids_dir(bids)
    out = config.output_dir.resolve()
    work = config.work_dir.resolve()
    in_raw_tree = _inside(out, bids) and not _inside(out, bids / "derivatives")
    if in_raw_tree or out == bids / "derivatives":
        raise OutputError(f"output_dir {out} is inside the input dataset {bids}; use a folder outside it "
                          f"or {bids / 'derivatives' / 'diffdeur'}")
    if _inside(bids, out):
        raise OutputError(f"output_dir {out} contains the input dataset {bids}; choose a separate folder")
    if _inside(work, bids):
        raise OutputError(f"work dir {work} is inside the input dataset {bids}; pass -w with a folder outside it")
    for what, path in (("output_dir", out), ("work dir", work)):
        if not _writable(path):
            raise OutputError(f"{what} {path} cannot be created or written (check permissions; "
                              "in a container, mount it writable)")


def check_device(config: Config) -> str:
    from .enhance import resolve_device

    device = str(resolve_device(config.device))
    if device.startswith("cuda"):
        import torch

        name = torch.cuda.get_device_name(torch.device(device))
        log.info("Device: %s (%s)", device, name)
    else:
        log.info("Device: cpu (%d thread(s) per scan); GPU and CPU results are not bit-identical", config.omp_nthreads)
    return device


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


PARC_HELP = ("--synthseg-parc needs FreeSurfer's mri_synthseg (FreeSurfer >= 7.3 on the PATH, FREESURFER_HOME "
             "and a licence): the PyTorch port does not implement SynthSeg's cortical parcellation")


def check_synthseg(config: Config) -> None:
    """Choose the SynthSeg backend and check its weights now, before any enhancement runs.

    Fills ``config.synthseg_backend_used``, ``synthseg_weights`` (the port's weights, or the ones
    FreeSurfer ships, for the record) and their sha256. No backend, a missing, corrupt or wrong
    weights file, or ``--synthseg-parc`` without FreeSurfer: :class:`FeatureUnavailableError` (exit 1)
    whose message says where to get the weights.
    """
    if not config.synthseg:
        return
    from .segment import (OFFICIAL_WEIGHTS, SegmentationError, SegmentationUnavailable, choose_backend,
                          default_weights, freesurfer_status)

    if config.synthseg_parc:
        ok, reason = freesurfer_status()
        if not ok or config.synthseg_backend == "torch" or config.synthseg_model is not None:
            raise FeatureUnavailableError(f"{PARC_HELP}; here: {reason if not ok else 'the torch port was asked for'}. "
                                          "Run without --synthseg-parc to use the port.")
    try:
        backend, weights = choose_backend(config.synthseg_model, config.synthseg_robust, config.synthseg_backend)
    except SegmentationError as e:
        env = (" The environment variable DIFFDEUR_SYNTHSEG_MODEL may also name the weights file "
               "(the container images set it).") if isinstance(e, SegmentationUnavailable) else ""
        raise FeatureUnavailableError(f"--synthseg: {e}{env}") from e
    if backend == "freesurfer":
        weights = default_weights(config.synthseg_robust)  # what mri_synthseg will load, for the record only
    config.synthseg_backend_used = backend
    config.synthseg_weights = Path(weights).absolute() if weights else None
    if weights:
        config.synthseg_weights_sha256 = _sha256(Path(weights))
        size = Path(weights).stat().st_size
        config.synthseg_official_file = next((name for name, (n, sha) in OFFICIAL_WEIGHTS.items()
                                              if n == size and sha == config.synthseg_weights_sha256), None)
    kind = "robust 2.0" if config.synthseg_robust else "2.0"
    if backend == "torch":
        official = config.synthseg_official_file or "not an official SynthSeg file"
        log.info("SynthSeg %s: PyTorch port, weights %s (sha256 %s, %s)", kind, config.synthseg_weights,
                 config.synthseg_weights_sha256, official)
    else:
        log.info("SynthSeg %s: FreeSurfer mri_synthseg%s", kind, " --parc" if config.synthseg_parc else "")


def check_settings(config: Config) -> None:
    try:
        config.enhance_settings().validate()
    except ValueError as e:
        raise UsageError(f"invalid method settings: {e}") from e


def load_weights(config: Config) -> str:
    """Load the prior once before any work, so a missing or corrupt file fails in seconds."""
    from .enhance import load_default_prior, load_prior

    prior = load_prior(config.prior_file, device="cpu") if config.prior_file else load_default_prior("cpu")
    log.info("Prior weights: %s (sha256 %s)", config.prior_file or "shipped with diffdeur", prior.sha256)
    return prior.sha256


def output_shape(scan, resolution: float) -> tuple[int, ...]:
    """Output grid shape of a scan, computed from its header on its RAS+ grid exactly as the method will."""
    from .enhance import output_grid

    shape, affine = ras_grid(scan.shape[:3], scan.affine)
    return tuple(output_grid(shape, affine, resolution).shape)


def plan_grids(found, config: Config) -> dict:
    """Output grid of each scan, and the memory it needs, before anything is read or enhanced.

    A scan whose grid cannot be computed, whose output grid is larger than the method handles, or
    that needs more memory than ``--mem`` (or this machine, or its cgroup) allows is refused: it
    moves to ``found.skipped`` with the reason, and the other scans go on.
    """
    from .enhance.solver import MAX_OUTPUT_VOXELS

    if config.mem_gb:
        limit, allowed = config.mem_gb, f"--mem {format_gb(config.mem_gb)} allows"
    else:
        limit = memory_limit_gb()
        allowed = f"this machine has ({format_gb(limit)})" if limit else ""
    shapes, keep = {}, []
    for scan in found.scans:
        try:
            shape = output_shape(scan, config.output_resolution)
        except Exception as e:  # a singular or non-finite affine
            found.skipped.append(disc.Skipped(scan.relpath, f"its output grid cannot be computed from the header "
                                                            f"affine ({e}); fix the header", error=True))
            continue
        need = estimate_enhance_mem_gb(shape, config.num_samples, scan.shape[:3])
        size = (f"input {'x'.join(map(str, scan.shape[:3]))}, output grid {'x'.join(map(str, shape))} "
                f"at {config.output_resolution:g} mm")
        too_much_memory = limit is not None and need > limit
        if too_much_memory or math.prod(shape) > MAX_OUTPUT_VOXELS:
            why = f"more than {allowed}" if too_much_memory else \
                f"more than the {MAX_OUTPUT_VOXELS / 1e6:.0f} M output voxels diffdeur handles"
            found.skipped.append(disc.Skipped(
                scan.relpath, f"too large: it needs about {format_gb(need)} of memory ({size}), {why}; use a coarser "
                              "--output-resolution, crop the image, or run it where more memory is available",
                error=True))
            continue
        shapes[str(scan.relpath)] = shape
        keep.append(scan)
    found.scans = keep
    return shapes


def configure_nipype(config: Config) -> None:
    from nipype import config as ncfg
    from nipype import logging as nlogging

    level = "DEBUG" if config.verbose >= 2 else "INFO"  # INFO: node start/finish and the scheduler's resources
    ncfg.update_config({
        "execution": {"crashfile_format": "txt", "stop_on_first_crash": config.stop_on_first_crash,
                      "check_version": False, "poll_sleep_duration": 0.5, "hash_method": "timestamp"},
        "logging": {"workflow_level": level, "utils_level": "WARNING",
                    "interface_level": "INFO", "log_to_file": False},
        "monitoring": {"enabled": False},
    })
    nlogging.update_logging(ncfg)


def plugin_args(config: Config) -> dict:
    args = {"n_procs": config.nprocs, "raise_insufficient": False, "mp_context": "forkserver",
            "n_gpu_procs": 1 if (config.device_used or "").startswith("cuda") else 0}
    if config.mem_gb:
        args["memory_gb"] = config.mem_gb
    return args


def _stop_workers(plugin) -> None:
    """After Ctrl-C or SIGTERM: end the scans still running, so nothing goes on writing after we exit."""
    import multiprocessing

    # the pool reports each ended worker through Nipype's callback as a BrokenProcessPool traceback: expected here
    logging.getLogger("concurrent.futures").setLevel(logging.CRITICAL)
    workers = multiprocessing.active_children()
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.join(timeout=10)
    pool = getattr(plugin, "pool", None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


def _reused(config: Config, scan, started: float) -> bool:
    """Whether the scan's enhancement comes from an earlier run (its result in the work dir is older than this run)."""
    from .workflows import workflow_name

    result = (config.work_dir / workflow_name() / f"sub_{scan.subject}_wf" / f"{naming.node_name(scan.relpath)}_wf"
              / "enhance" / "result_enhance.pklz")
    return result.exists() and result.stat().st_mtime < started


def _crash_reasons(crash_files) -> dict:
    """Map each crashed branch (``<scan>_wf``) to the last line of its traceback: the error itself."""
    reasons = {}
    for path in crash_files:
        lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
        node = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Node:")), "")
        branch = node.split(".")[-2] if node.count(".") >= 1 else node  # top.sub_wf.<scan>_wf.node
        last = lines[-1] if lines else "see the crash file"
        reasons[branch] = re.sub(r"^(?:\w+\.)+(\w+:)", r"\1", last)  # drop the module path of the exception
    return reasons


def collect_outcome(config: Config, discovery, started: float, interrupted: bool = False) -> Outcome:
    """A scan is done when its derivatives (enhanced image, and segmentation with ``--synthseg``) were
    (re)written by this run: the sinks write the image last."""
    out = Outcome(skipped=[f"{s.relpath}: {s.reason}" for s in discovery.skipped if not s.error])
    out.failed = [f"{s.relpath}: {s.reason}" for s in discovery.skipped if s.error]
    for subject in sorted({s.subject for s in discovery.scans}):
        folder = naming.subject_log_dir(config.output_dir, subject, config.run_uuid)
        out.crash_files += sorted(str(p) for p in folder.glob("crash-*.txt"))
    reasons = _crash_reasons(out.crash_files)
    segmented = set(naming.synthseg_sources(s.relpath for s in discovery.scans).values()) if config.synthseg else set()
    for scan in discovery.scans:
        dests = [config.output_dir / naming.enhanced_relpath(scan.relpath)]
        if str(scan.relpath) in segmented:
            dests.append(config.output_dir / naming.synthseg_relpath(scan.relpath))
        if all(dest.exists() and dest.stat().st_mtime >= started - 1 for dest in dests):
            reused = " (enhanced by an earlier run, reused from the work dir)" if _reused(config, scan, started) else ""
            out.done.append(f"{scan.relpath}{reused}")
        else:
            stopped = "interrupted before it finished; a rerun with the same work dir does it" if interrupted \
                else "not run (stopped early, see the log)"
            why = reasons.get(f"{naming.node_name(scan.relpath)}_wf", stopped)
            out.failed.append(f"{scan.relpath}: {why}")
    return out


def run(config: Config) -> int:
    started = time.time()
    click.echo(f"diffdeur v{config.version}  run {config.run_uuid}")
    click.echo(f"  bids_dir {config.bids_dir}\n  output_dir {config.output_dir}\n  work_dir {config.work_dir}")
    check_paths(config)
    check_settings(config)
    config.device_used = check_device(config)
    check_synthseg(config)
    if config.skip_bids_validation:
        log.info("BIDS validation skipped (--skip-bids-validation)")
    elif validate_input(config.bids_dir):
        log.info("BIDS validation passed (bids-validator-deno)")

    found = disc.discover(
        config.bids_dir, modalities=config.modalities, participant_label=config.participant_label,
        session_label=config.session_label, bids_filters=config.bids_filters,
        max_field_strength=config.max_field_strength, assume_lowfield=config.assume_lowfield)
    shapes = plan_grids(found, config)
    click.echo(format_plan(found, shapes, config))
    refused = sum(s.error for s in found.skipped)
    if not found.scans:
        if refused:  # scans that cannot be enhanced are failures, not an empty selection
            click.echo(format_summary(collect_outcome(config, found, started), time.time() - started, config.output_dir))
            return 1
        raise EmptySelectionError("no low-field scan left to enhance (see 'Skipped' above)")
    config.weights_sha256 = load_weights(config)
    if config.dry_run:
        cannot = f"; {refused} scan(s) cannot be enhanced (see above)" if refused else ""
        click.echo(f"Dry run: nothing was enhanced or written{cannot}.")
        return 1 if refused else 0

    try:
        write_dataset_files(config.bids_dir, config.output_dir)
        for subject in sorted({s.subject for s in found.scans}):
            config.save(naming.subject_log_dir(config.output_dir, subject, config.run_uuid))
        config.work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write to {e.filename}: {e.strerror}") from e

    configure_nipype(config)
    from .workflows import init_diffdeur_wf

    wf = init_diffdeur_wf(config, found.scans, shapes)
    mem = f", memory {format_gb(config.mem_gb)}" if config.mem_gb else ""
    log.info("Running %d scan(s) with %d process(es)%s", len(found.scans), config.nprocs, mem)
    from nipype.pipeline.plugins import MultiProcPlugin

    plugin = MultiProcPlugin(plugin_args=plugin_args(config))
    try:
        wf.run(plugin=plugin)
    except RuntimeError as e:  # Nipype: "Workflow did not execute cleanly"; the summary says which scans
        log.debug("Nipype: %s", e)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (errors.Terminated): stop cleanly, the CLI says how to resume
        _stop_workers(plugin)
        outcome = collect_outcome(config, found, started, interrupted=True)
        click.echo(format_summary(outcome, time.time() - started, config.output_dir))
        raise

    outcome = collect_outcome(config, found, started)
    click.echo(format_summary(outcome, time.time() - started, config.output_dir))
    sys.stdout.flush()
    return 0 if outcome.ok else 1
