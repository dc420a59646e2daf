"""One participant-level run, start to finish: checks, plan, workflow, summary.

Order matters for users: everything that can fail in seconds (paths, device, weights, labels,
filters, validation) is checked before any enhancement starts (``preflight``), and the plan is
printed before work begins (``plan``). Returns the process exit status; errors are raised as
typed exceptions for the CLI.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import click

from . import plan, preflight
from .bids import discovery as disc
from .bids import naming
from .bids.dataset import write_dataset_files
from .bids.stacks import group_stacks
from .boilerplate import write_boilerplate
from .config import Config, Resolved
from .errors import EmptySelectionError, OutputError, UsageError
from .resources import format_gb
from .summary import collect_outcome, format_summary

log = logging.getLogger("diffdeur")


def configure_nipype(config: Config) -> None:
    from nipype import config as ncfg
    from nipype import logging as nlogging

    level = "DEBUG" if config.verbose >= 2 else "INFO"  # INFO: node start/finish and the scheduler's resources
    ncfg.update_config({
        "execution": {"crashfile_format": "txt", "stop_on_first_crash": config.stop_on_first_crash,
                      "check_version": False, "poll_sleep_duration": 0.5, "hash_method": "timestamp"},
        "logging": {"workflow_level": level, "utils_level": "WARNING",
                    "interface_level": "INFO", "log_to_file": False},
        "monitoring": {"enabled": config.resource_monitor, "sample_frequency": "0.5", "summary_append": True},
    })
    if config.resource_monitor:
        ncfg.enable_resource_monitor()
    nlogging.update_logging(ncfg)


def plugin_args(config: Config, resolved: Resolved) -> dict:
    args = {"n_procs": config.nprocs, "raise_insufficient": False, "mp_context": "forkserver",
            "n_gpu_procs": 1 if resolved.device.startswith("cuda") else 0}
    if config.mem_gb:
        args["memory_gb"] = config.mem_gb
    return args


def make_plugin(config: Config, resolved: Resolved):
    """MultiProc on this machine, or the plugin of ``--use-plugin`` (SLURM, SGE, ... through Nipype)."""
    from nipype.pipeline import plugins

    if config.plugin is None:
        return plugins.MultiProcPlugin(plugin_args=plugin_args(config, resolved))
    name, args = config.plugin["plugin"], dict(config.plugin["plugin_args"])
    if name == "MultiProc":
        args = {**plugin_args(config, resolved), **args}
    return getattr(plugins, f"{name}Plugin")(plugin_args=args)


def clean_work_dir(config: Config) -> None:
    """``--clean-workdir``: empty the work dir, never a folder that holds the input or the output."""
    work = config.work_dir.resolve()
    for other in (config.bids_dir.resolve(), config.output_dir.resolve()):
        if work == other or work in other.parents:
            raise UsageError(f"--clean-workdir: the work dir {work} holds {other}; choose another -w")
    if work.exists():
        log.info("--clean-workdir: emptying %s", work)
        shutil.rmtree(work)


def write_graph(wf, config: Config) -> None:
    """``--write-graph``: graph.dot in the work dir, and graph.svg when Graphviz's ``dot`` is installed."""
    graph = wf._create_flat_graph()  # Nipype's own write_graph needs pydot, which is not a dependency
    lines = [f'  "{u.fullname}" -> "{v.fullname}";' for u, v in graph.edges()]
    lines += [f'  "{n.fullname}";' for n in graph.nodes() if graph.degree(n) == 0]
    dot = config.work_dir / "graph.dot"
    dot.write_text("digraph diffdeur {\n" + "\n".join(lines) + "\n}\n")
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tsvg", str(dot), "-o", str(dot.with_suffix(".svg"))], check=False)
    else:
        log.info("--write-graph: Graphviz's dot is not installed, so only %s is written", dot)


@contextmanager
def working_in(folder: Path):
    """Run inside ``folder``, then go back: Nipype's resource monitor writes its files into the process's
    current directory, which must be the work dir, not wherever the user started the app."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


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


def run(config: Config) -> int:
    started = time.time()
    click.echo(f"diffdeur v{config.version}  run {config.run_uuid}")
    click.echo(f"  bids_dir {config.bids_dir}\n  output_dir {config.output_dir}\n  work_dir {config.work_dir}")
    resolved = preflight.check_start(config)

    found = disc.discover(
        config.bids_dir, modalities=config.modalities, participant_label=config.participant_label,
        session_label=config.session_label, bids_filters=config.bids_filters,
        max_field_strength=config.max_field_strength, assume_lowfield=config.assume_lowfield)
    grouping = group_stacks(found.scans, found.skipped, config.stacks)
    found.scans, found.notes = grouping.units, grouping.notes
    found.skipped += grouping.refused
    resolved = replace(resolved, memory_plan=plan.plan_scans(found, config),
                       memory_limit_gb=plan.memory_limit(config)[0])
    click.echo(plan.format_plan(found, config, resolved))
    refused = sum(s.error for s in found.skipped)
    if not found.scans:
        if refused:  # scans that cannot be enhanced are failures, not an empty selection
            click.echo(format_summary(collect_outcome(config, found, started), time.time() - started, config.output_dir))
            return 1
        raise EmptySelectionError("no low-field scan left to enhance (see 'Skipped' above)")
    resolved = replace(resolved, weights_sha256=preflight.load_weights(config))
    if config.dry_run:
        cannot = f"; {refused} scan(s) cannot be enhanced (see above)" if refused else ""
        click.echo(f"Dry run: nothing was enhanced or written{cannot}.")
        return 1 if refused else 0

    try:
        if config.clean_workdir and not config.boilerplate_only:
            clean_work_dir(config)  # first: a refusal must come before anything is written
        citation = write_boilerplate(config, resolved)
        if config.boilerplate_only:
            click.echo(f"Boilerplate only: the methods text is in {citation} (.html, .bib beside it); nothing was enhanced.")
            return 0
        if config.reports_only:
            write_subject_reports(config, found, collect_outcome(config, found, 0.0))
            click.echo(f"Reports only: the subject pages are in {config.output_dir}; nothing was enhanced.")
            return 0
        write_dataset_files(config.bids_dir, config.output_dir, naming.produced_descs(config, found.scans))
        for subject in sorted({s.subject for s in found.scans}):
            config.save(naming.subject_log_dir(config.output_dir, subject, config.run_uuid), resolved)
        config.work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write to {e.filename}: {e.strerror}") from e

    configure_nipype(config)
    from .workflows import init_diffdeur_wf

    wf = init_diffdeur_wf(config, resolved, found.scans)
    mem = f", memory {format_gb(config.mem_gb)}" if config.mem_gb else ""
    log.info("Running %d scan(s) with %d process(es)%s", len(found.scans), config.nprocs, mem)
    if config.write_graph:
        write_graph(wf, config)
    if config.fs_license_file:
        os.environ["FS_LICENSE"] = str(config.fs_license_file)  # FreeSurfer's mri_synthseg reads it there
    plugin = make_plugin(config, resolved)
    try:
        with working_in(config.work_dir):  # the paths in the workflow are absolute (the CLI makes them so)
            wf.run(plugin=plugin)
    except RuntimeError as e:  # Nipype: "Workflow did not execute cleanly"; the summary says which scans
        log.debug("Nipype: %s", e)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (errors.Terminated): stop cleanly, the CLI says how to resume
        _stop_workers(plugin)
        outcome = collect_outcome(config, found, started, interrupted=True)
        click.echo(format_summary(outcome, time.time() - started, config.output_dir))
        raise

    outcome = collect_outcome(config, found, started)
    write_subject_reports(config, found, outcome)
    click.echo(format_summary(outcome, time.time() - started, config.output_dir))
    sys.stdout.flush()
    return 0 if outcome.ok else 1


def write_subject_reports(config: Config, found, outcome) -> None:
    """The sub-XX.html pages; a report that cannot be made is said, and the run's outcome stands."""
    from .reports import write_reports

    try:
        pages = write_reports(config, found, outcome)
        log.info("Reports: %s", ", ".join(str(p) for p in pages))
    except Exception as e:  # noqa: BLE001  (the enhanced images are written; only their report is missing)
        log.error("the subject reports could not be written (%s: %s); the outputs are complete", type(e).__name__, e)
