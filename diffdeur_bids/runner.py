"""One participant-level run, start to finish: checks, plan, workflow, summary.

Order matters for users: everything that can fail in seconds (paths, device, weights, labels,
filters, validation) is checked before any enhancement starts, and the plan is printed before
work begins. Returns the process exit status; errors are raised as typed exceptions for the CLI.
"""

from __future__ import annotations

import logging
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
from .resources import format_gb

log = logging.getLogger("diffdeur")


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _writable(path: Path) -> bool:
    """Whether ``path`` exists and is writable, or could be created in its nearest existing parent."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


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


def check_synthseg(config: Config) -> None:
    """SynthSeg is wired here once ``diffdeur_bids.segment`` offers it to the app; until then, say so."""
    if config.synthseg:
        raise FeatureUnavailableError("SynthSeg support is not available yet in this version of diffdeur; "
                                      "run without --synthseg")


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


def output_shapes(scans, resolution: float) -> dict:
    """Output grid shape of each scan, computed on its RAS+ grid exactly as the method will."""
    import nibabel as nib

    from .enhance import output_grid

    shapes = {}
    for scan in scans:
        shape, affine = ras_grid(scan.shape[:3], nib.load(str(scan.path)).affine)
        shapes[str(scan.relpath)] = tuple(output_grid(shape, affine, resolution).shape)
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


def collect_outcome(config: Config, discovery, started: float) -> Outcome:
    """A scan is done when its derivative was (re)written by this run: the sink writes the image last."""
    out = Outcome(skipped=[f"{s.relpath}: {s.reason}" for s in discovery.skipped if not s.error])
    out.failed = [f"{s.relpath}: {s.reason}" for s in discovery.skipped if s.error]
    for subject in sorted({s.subject for s in discovery.scans}):
        folder = naming.subject_log_dir(config.output_dir, subject, config.run_uuid)
        out.crash_files += sorted(str(p) for p in folder.glob("crash-*.txt"))
    reasons = _crash_reasons(out.crash_files)
    for scan in discovery.scans:
        dest = config.output_dir / naming.enhanced_relpath(scan.relpath)
        if dest.exists() and dest.stat().st_mtime >= started - 1:
            out.done.append(str(scan.relpath))
        else:
            why = reasons.get(f"{naming.node_name(scan.relpath)}_wf", "not run (stopped early, see the log)")
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
    shapes = output_shapes(found.scans, config.output_resolution)
    click.echo(format_plan(found, shapes, config))
    if not found.scans:
        if any(s.error for s in found.skipped):  # unreadable scans are failures, not an empty selection
            click.echo(format_summary(collect_outcome(config, found, started), time.time() - started, config.output_dir))
            return 1
        raise EmptySelectionError("no low-field scan left to enhance (see 'Skipped' above)")
    config.weights_sha256 = load_weights(config)
    if config.dry_run:
        click.echo("Dry run: nothing was enhanced or written.")
        return 0

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
    try:
        wf.run(plugin="MultiProc", plugin_args=plugin_args(config))
    except RuntimeError as e:  # Nipype: "Workflow did not execute cleanly"; the summary says which scans
        log.debug("Nipype: %s", e)
    except KeyboardInterrupt:
        click.echo("Interrupted; finished scans are kept, a rerun with the same work dir resumes.", err=True)
        return 130

    outcome = collect_outcome(config, found, started)
    click.echo(format_summary(outcome, time.time() - started, config.output_dir))
    sys.stdout.flush()
    return 0 if outcome.ok else 1
