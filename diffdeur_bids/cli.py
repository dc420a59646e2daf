"""The ``diffdeur`` command: the BIDS Apps contract with fMRIPrep's option spellings.

Thin on purpose: parse, check what can be checked from the arguments alone, build a
:class:`~diffdeur_bids.config.Config` and hand it to :func:`diffdeur_bids.runner.run`. This is
the one place that turns errors into exit codes (BEP027 / fMRIPrep):

    0 ok · 1 failure (also a missing component: no SynthSeg backend or weights) · 16 input failed
    BIDS validation · 17 unknown analysis level · 18 labels/filters/selection left nothing · 64 usage
    66 no input · 73 cannot create output · 130 Ctrl-C (SIGINT) · 143 SIGTERM

SIGTERM (a scheduler's time limit, ``docker stop``) is turned into the same clean stop as Ctrl-C:
running scans are ended, files being written are removed, and a rerun with the same work dir resumes.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import sys
import tempfile
import threading
from pathlib import Path

import click

from . import __version__
from .errors import (EmptySelectionError, FeatureUnavailableError, InputMissingError, OutputError, Terminated,
                     UnknownLevelError, UsageError, ValidationFailedError)
from .priors.registry import DEFAULT_PRIOR, SHIPPED, is_shipped
from .resources import available_cpus, format_gb, parse_memory

EXIT_OK, EXIT_FAILURE = 0, 1
EXIT_CODES = {
    ValidationFailedError: 16,
    UnknownLevelError: 17,
    EmptySelectionError: 18,
    UsageError: 64,
    InputMissingError: 66,
    OutputError: 73,
    FeatureUnavailableError: 1,
}
EXIT_USAGE = 64
EXIT_SIGINT, EXIT_SIGTERM = 130, 143  # 128 + the signal number, as a shell reports a process the signal killed
SYNTHSEG_MODEL_ENV = "DIFFDEUR_SYNTHSEG_MODEL"  # the container images bake the weights there

log = logging.getLogger("diffdeur")


class ManyValues(click.Option):
    """An option taking one or more values like argparse's ``nargs='+'``: ``--participant-label 01 02``.

    Values are taken up to the next token that starts with ``-``; repeating the option also works.
    Put such options after the three positional arguments, as with fMRIPrep.
    """

    def __init__(self, *args, **kwargs):
        kwargs["multiple"] = True
        super().__init__(*args, **kwargs)

    def add_to_parser(self, parser, ctx):
        super().add_to_parser(parser, ctx)
        for name in self.opts:
            option = parser._long_opt.get(name) or parser._short_opt.get(name)
            take_one = option.process

            def take_many(value, state, take_one=take_one):
                take_one(value, state)
                while state.rargs and not state.rargs[0].startswith("-"):
                    take_one(state.rargs.pop(0), state)

            option.process = take_many


def _device(ctx, param, value: str) -> str:
    value = value.strip().lower()
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise click.BadParameter("use auto, cpu, cuda or cuda:N")
    return value


def _memory(ctx, param, value):
    """Keep what was typed beside the value, so the log can say how it was understood."""
    if value is None:
        return None
    try:
        return value, parse_memory(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e


# The [diffdeur] keys of a diffdeur.toml that a rerun takes as its defaults (the paths and the level are
# given again on the command line; run_uuid, dates and the command line are the new run's own).
_RERUN_KEYS = ("participant_label", "session_label", "bids_filter_file", "modalities", "max_field_strength",
               "assume_lowfield", "skip_bids_validation", "quality", "output_resolution", "steps", "num_samples",
               "learned_upsampling", "random_seed", "device", "prior", "synthseg", "synthseg_model",
               "synthseg_robust", "synthseg_backend", "synthseg_parc", "fmriprep_compat", "stacks", "work_dir",
               "nprocs", "omp_nthreads", "stop_on_first_crash")


def _config_file(ctx, param, path: Path | None):
    """``--config-file``: a ``diffdeur.toml`` that a run wrote; its options become this run's defaults."""
    if path is None:
        return None
    import tomllib

    try:
        options = tomllib.loads(path.read_text())["diffdeur"]
    except (OSError, ValueError, KeyError) as e:
        raise click.BadParameter(f"{path} is not a diffdeur.toml that a run wrote ({type(e).__name__}: {e})")
    defaults = {k: options[k] for k in _RERUN_KEYS if k in options and options[k] not in (None, "")}
    if options.get("mem_gb"):
        defaults["mem"] = f"{options['mem_gb']}G"
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return path


def _default_work_dir() -> Path:
    """``./work`` as fMRIPrep, or a temporary folder when the current one is read-only (containers)."""
    if os.access(Path.cwd(), os.W_OK):
        return Path.cwd() / "work"
    return Path(tempfile.gettempdir()) / "diffdeur-work"


def _prior(ctx, param, value: str) -> str:
    """A shipped prior's name as it is; a file as its absolute path (checked for being a file here)."""
    if is_shipped(value):
        return value
    path = Path(value)
    if path.is_dir():
        raise click.BadParameter(f"'{value}' is a directory; give a weights file or one of {', '.join(SHIPPED)}")
    if not path.is_file():
        raise click.BadParameter(f"'{value}' is not a shipped prior ({', '.join(SHIPPED)}) and the file does not exist")
    return str(path.absolute())


_POSITIVE_MM = click.FloatRange(min=0, min_open=True, max=20)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("bids_dir", type=click.Path(readable=False, path_type=Path))  # checked by the runner: exit 66/73
@click.argument("output_dir", type=click.Path(readable=False, path_type=Path))
@click.argument("analysis_level")
# -- what to process (fMRIPrep spellings)
@click.option("--config-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), is_eager=True,
              expose_value=False, callback=_config_file, metavar="FILE",
              help="A diffdeur.toml that a run wrote (sub-XX/log/<run>/): rerun with its options; options given "
                   "here override them.")
@click.option("--participant-label", "--participant_label", "participant_label", cls=ManyValues,
              metavar="LABEL [LABEL ...]", help="Subjects to process (with or without 'sub-'); default: all.")
@click.option("--session-label", "--session_label", "--session-id", "session_label", cls=ManyValues,
              metavar="LABEL [LABEL ...]", help="Sessions to process (with or without 'ses-'); default: all.")
@click.option("--bids-filter-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              metavar="FILE", help='JSON queries per modality, fMRIPrep style: {"t1w": {"acquisition": "fast"}}.')
@click.option("--modalities", cls=ManyValues, type=click.Choice(["T1w", "T2w", "FLAIR"], case_sensitive=False),
              metavar="{T1w,T2w,FLAIR} [...]", help="Anatomical suffixes to enhance; default: all three.")
@click.option("--max-field-strength", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              metavar="TESLA", help="Enhance scans whose MagneticFieldStrength is at most this; others are left alone.")
@click.option("--assume-lowfield", is_flag=True,
              help="Also enhance scans whose sidecar has no MagneticFieldStrength (otherwise skipped).")
@click.option("--skip-bids-validation", "--skip_bids_validation", "skip_bids_validation", is_flag=True,
              help="Do not run bids-validator-deno on the input first.")
# -- the method
@click.option("--quality", type=click.Choice(["fast", "default", "best"]), default="default", show_default=True,
              help="Preset trading time for quality; 'fast' is for previews and tests.")
@click.option("--output-resolution", type=_POSITIVE_MM, default=1.0, show_default=True, metavar="MM",
              help="Isotropic output voxel size. The output covers the input field of view; when the input voxel "
                   "is a whole multiple of it, each input voxel is split into whole sub-voxels.")
@click.option("--steps", type=click.IntRange(min=1), metavar="N", help="Diffusion steps (overrides the preset).")
@click.option("--num-samples", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="Posterior samples averaged; with N > 1 an uncertainty (std) map is also written.")
@click.option("--learned-upsampling/--no-learned-upsampling", default=True, show_default=True,
              help="Restore what lies between thick slices with the shipped learned upsampler before the "
                   "diffusion schedule (single scans; fused stacks do not need it).")
@click.option("--random-seed", type=int, default=0, show_default=True, metavar="INT",
              help="Seed of every random draw; recorded in the sidecars.")
@click.option("--device", default="auto", show_default=True, callback=_device, metavar="auto|cpu|cuda[:N]",
              help="Compute device. A GPU asked for but not visible is an error at start (never a silent CPU fallback).")
@click.option("--prior", default=DEFAULT_PRIOR, show_default=True, callback=_prior, metavar="NAME|FILE",
              help=f"Diffusion prior: a shipped one by name ({', '.join(SHIPPED)}) or a weights file "
                   "(.safetensors from diffdeur-train-prior).")
@click.option("--synthseg/--no-synthseg", default=False, show_default=True,
              help="Segment the enhanced images with SynthSeg (needs FreeSurfer >= 7.3 or the SynthSeg weights).")
@click.option("--synthseg-model", type=click.Path(dir_okay=False, path_type=Path), envvar=SYNTHSEG_MODEL_ENV,
              show_envvar=True, metavar="PATH",
              help="SynthSeg weights for the built-in PyTorch port: synthseg_2.0.h5 (synthseg_robust_2.0.h5 with "
                   "--synthseg-robust) or a converted .safetensors. Never downloaded.")
@click.option("--synthseg-robust", is_flag=True, help="SynthSeg-robust 2.0 (for low-quality or thick-slice scans).")
@click.option("--synthseg-backend", type=click.Choice(["auto", "torch", "freesurfer"]), default="auto",
              show_default=True, help="auto: the port when weights are given, else FreeSurfer's mri_synthseg if "
                                      "installed, else the port with FreeSurfer's weights.")
@click.option("--synthseg-parc", is_flag=True,
              help="Add the cortical parcellation (FreeSurfer backend only; the port does not implement it).")
@click.option("--fmriprep-compat", is_flag=True,
              help="Also write desc-preproc_T1w so 'fmriprep ... -d diffdeur=<output_dir>' uses the enhanced T1w.")
@click.option("--stacks", type=click.Choice(["auto", "separate"]), default="auto", show_default=True,
              help="auto: fuse the thick-slice stacks of one contrast (same subject, session and suffix; names that "
                   "differ only in acq-, run- or rec-; different grids) into one enhanced image; separate: enhance "
                   "every scan on its own.")
# -- performance and execution
@click.option("-w", "--work-dir", type=click.Path(readable=False, path_type=Path), metavar="DIR",
              help="Nipype work folder; rerunning with the same one skips finished steps.  [default: ./work]")
@click.option("--nprocs", "--nthreads", "--n_cpus", "--n-cpus", "nprocs", type=click.IntRange(min=1), metavar="N",
              help="Most CPUs used at once.  [default: all available]")
@click.option("--omp-nthreads", type=click.IntRange(min=1), metavar="N",
              help="Threads per scan.  [default: nprocs, at most 8]")
@click.option("--mem", "--mem-mb", "--mem_mb", "mem", callback=_memory, metavar="AMOUNT",
              help="Most memory used at once, with units (16G, 16000M); a bare number is MB, as in fMRIPrep.")
@click.option("--use-plugin", "--use_plugin", "use_plugin", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              metavar="FILE", help="A Nipype plugin file (YAML: plugin: SLURM, plugin_args: {...}) to run the "
                                   "workflow with, e.g. on a cluster; the default is MultiProc on this machine.")
@click.option("--clean-workdir", is_flag=True, help="Empty the work dir before the run (no cached work is reused).")
@click.option("--write-graph", is_flag=True, help="Write the workflow's graph (graph.dot, and .svg when Graphviz is "
                                                  "installed) into the work dir.")
@click.option("--resource-monitor", is_flag=True, help="Nipype's resource monitor: record each node's peak memory and CPU.")
@click.option("--notrack", is_flag=True, help="Accepted for fMRIPrep compatibility: diffdeur never sends anything anywhere.")
@click.option("--fs-license-file", "--fs_license_file", "fs_license_file",
              type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FILE", envvar="FS_LICENSE",
              help="FreeSurfer licence file, for --synthseg-backend freesurfer (default: $FS_LICENSE).")
@click.option("--reports-only", "--reports_only", "reports_only", is_flag=True,
              help="Rebuild the subject reports (OUTPUT_DIR/sub-XX.html) from what earlier runs wrote, and stop.")
@click.option("--boilerplate-only", "--boilerplate_only", "boilerplate_only", is_flag=True,
              help="Write the methods text (OUTPUT_DIR/logs/CITATION.md, .html, .bib) and stop.")
@click.option("--stop-on-first-crash", is_flag=True, help="Stop at the first failed scan instead of finishing the others.")
@click.option("--dry-run", is_flag=True, help="Check everything and print the plan, then stop without enhancing.")
@click.option("-v", "--verbose", count=True, help="More messages (-v: diffdeur's debug messages, -vv: Nipype's too).")
@click.version_option(__version__, "--version", prog_name="diffdeur", message="diffdeur v%(version)s")
@click.pass_context
def cli(ctx, **opts) -> int:
    """Enhance low-field anatomical MRI (T1w, T2w, FLAIR) of a BIDS dataset with DiffDeuR.

    BIDS_DIR is the input dataset (never written to), OUTPUT_DIR the derivative dataset,
    ANALYSIS_LEVEL 'participant' (enhance) or 'group' (aggregate what the participant runs wrote).
    """
    from .config import Config

    level = opts["analysis_level"]
    if level == "group":
        return _group(opts)
    if level != "participant":
        raise UnknownLevelError(f"unknown analysis level {level!r}; use 'participant' or 'group'")

    from .bids.discovery import load_bids_filters

    nprocs = opts["nprocs"] or available_cpus()
    omp = opts["omp_nthreads"] or min(nprocs, 8)
    _setup_logging(opts["verbose"])
    synthseg_model = _synthseg_options(ctx, opts)
    if omp > nprocs:
        log.warning("--omp-nthreads %d is more than --nprocs %d: scans will compete for CPUs", omp, nprocs)
    mem_text, mem_gb = opts["mem"] or (None, None)
    if mem_text is not None:
        log.info("--mem %s understood as %s", mem_text, format_gb(mem_gb))
    os.environ["OMP_NUM_THREADS"] = str(omp)  # the method's threads; inherited by the workers

    config = Config(
        bids_dir=opts["bids_dir"].absolute(), output_dir=opts["output_dir"].absolute(), analysis_level=level,
        participant_label=list(opts["participant_label"]), session_label=list(opts["session_label"]),
        bids_filter_file=opts["bids_filter_file"], bids_filters=load_bids_filters(opts["bids_filter_file"]),
        modalities=_canonical_modalities(opts["modalities"]), max_field_strength=opts["max_field_strength"],
        assume_lowfield=opts["assume_lowfield"], skip_bids_validation=opts["skip_bids_validation"],
        quality=opts["quality"], output_resolution=opts["output_resolution"], steps=opts["steps"],
        num_samples=opts["num_samples"], learned_upsampling=opts["learned_upsampling"],
        random_seed=opts["random_seed"], device=opts["device"],
        prior=opts["prior"],
        synthseg=opts["synthseg"], synthseg_model=synthseg_model, synthseg_robust=opts["synthseg_robust"],
        synthseg_backend=opts["synthseg_backend"], synthseg_parc=opts["synthseg_parc"],
        fmriprep_compat=opts["fmriprep_compat"], stacks=opts["stacks"],
        work_dir=(opts["work_dir"] or _default_work_dir()).absolute(), nprocs=nprocs, omp_nthreads=omp,
        mem_gb=mem_gb, stop_on_first_crash=opts["stop_on_first_crash"], dry_run=opts["dry_run"],
        verbose=opts["verbose"], command_line=ctx.obj or "diffdeur",
        clean_workdir=opts["clean_workdir"], write_graph=opts["write_graph"], resource_monitor=opts["resource_monitor"],
        plugin=_plugin_file(opts["use_plugin"]), boilerplate_only=opts["boilerplate_only"],
        reports_only=opts["reports_only"],
        fs_license_file=opts["fs_license_file"].absolute() if opts["fs_license_file"] else None,
    )
    from .runner import run

    return run(config)


def _synthseg_options(ctx, opts) -> Path | None:
    """Check the --synthseg-* options against each other; return the weights file to use, if any.

    A weights file from ``$DIFFDEUR_SYNTHSEG_MODEL`` is only a default: it is set aside (with a message)
    when the FreeSurfer backend is asked for (``--synthseg-backend freesurfer`` or ``--synthseg-parc``)
    or when the file does not exist (an image built without the weights), whereas ``--synthseg-model``
    given together with those options is a usage error, and a missing file given there fails at start.
    """
    from click.core import ParameterSource

    model = opts["synthseg_model"]
    from_env = ctx.get_parameter_source("synthseg_model") == ParameterSource.ENVIRONMENT
    wants_freesurfer = opts["synthseg_backend"] == "freesurfer" or opts["synthseg_parc"]
    if model is not None and not from_env and wants_freesurfer:
        other = "--synthseg-parc" if opts["synthseg_parc"] else "--synthseg-backend freesurfer"
        raise UsageError(f"--synthseg-model is for the PyTorch port; it cannot be used with {other}")
    if opts["synthseg_parc"] and opts["synthseg_backend"] == "torch":
        raise UsageError("--synthseg-parc is available with FreeSurfer's mri_synthseg only: the PyTorch port "
                         "does not implement the cortical parcellation; use --synthseg-backend freesurfer or auto")
    if not opts["synthseg"]:
        given = [f"--synthseg-{name}" for name in ("robust", "parc") if opts[f"synthseg_{name}"]]
        given += ["--synthseg-model"] if model is not None and not from_env else []
        given += ["--synthseg-backend"] if opts["synthseg_backend"] != "auto" else []
        if given:
            log.warning("%s has no effect without --synthseg", ", ".join(given))
        return None
    if model is not None and from_env and wants_freesurfer:
        log.info("Ignoring %s=%s: the FreeSurfer backend was asked for", SYNTHSEG_MODEL_ENV, model)
        return None
    if model is not None and from_env and not model.exists():  # e.g. an image built without the weights
        log.warning("Ignoring %s=%s: no such file", SYNTHSEG_MODEL_ENV, model)
        return None
    return model.absolute() if model is not None else None


def _group(opts) -> int:
    """``group``: aggregate what the participant runs wrote in OUTPUT_DIR (the input is not read)."""
    from .bids.discovery import clean_labels
    from .group import run_group

    from .bids.discovery import check_bids_dir

    _setup_logging(opts["verbose"])
    check_bids_dir(opts["bids_dir"])  # 66, as for a participant run, though the group level reads only the outputs
    out = opts["output_dir"].absolute()
    if not out.is_dir():
        raise EmptySelectionError(f"{out} does not exist: run the 'participant' level first")
    try:
        written = run_group(out, clean_labels(opts["participant_label"], "sub-", "participant label"),
                            clean_labels(opts["session_label"], "ses-", "session label"))
    except OSError as e:
        raise OutputError(f"cannot write to {e.filename}: {e.strerror}") from e
    click.echo("Group level: wrote " + ", ".join(p.name for p in written) + f" in {out}")
    return 0


def _plugin_file(path: Path | None) -> dict | None:
    """``--use-plugin``: the file's ``plugin`` (a Nipype plugin's name) and ``plugin_args``, checked now."""
    if path is None:
        return None
    import yaml
    from nipype.pipeline import plugins

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"--use-plugin {path}: cannot read it as YAML ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("plugin"), str):
        raise UsageError(f"--use-plugin {path}: expected 'plugin: NAME' (and optionally 'plugin_args:'), as fMRIPrep's")
    name, args = data["plugin"], data.get("plugin_args") or {}
    if not hasattr(plugins, f"{name}Plugin"):
        known = sorted(n.removesuffix("Plugin") for n in dir(plugins) if n.endswith("Plugin") and n != "Plugin")
        raise UsageError(f"--use-plugin {path}: unknown Nipype plugin {name!r}; one of {', '.join(known)}")
    if not isinstance(args, dict):
        raise UsageError(f"--use-plugin {path}: plugin_args must be a mapping")
    return {"plugin": name, "plugin_args": args}


def _canonical_modalities(values) -> list[str]:
    canonical = {"t1w": "T1w", "t2w": "T2w", "flair": "FLAIR"}
    chosen = [canonical[v.lower()] for v in values] or ["T1w", "T2w", "FLAIR"]
    return list(dict.fromkeys(chosen))


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose >= 1 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [diffdeur] %(levelname)s: %(message)s", "%y%m%d-%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def _terminate(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one clean stop; a second SIGTERM must not interrupt it
    raise Terminated()


def run_cli(argv: list[str] | None = None) -> int:
    """Parse and run; return the exit status instead of exiting (tests call this)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return _run(argv)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _run(argv: list[str]) -> int:
    try:
        code = cli.main(args=argv, prog_name="diffdeur", standalone_mode=False,
                        obj=shlex.join(["diffdeur", *argv]))
    except (click.exceptions.Abort, KeyboardInterrupt) as e:  # click turns KeyboardInterrupt into Abort
        terminated = isinstance(e, Terminated) or isinstance(e.__cause__, Terminated)
        how, code = ("SIGTERM", EXIT_SIGTERM) if terminated else ("Ctrl-C (SIGINT)", EXIT_SIGINT)
        click.echo(f"diffdeur: interrupted by {how}. Finished scans are kept and no partial file is left; "
                   "rerun the same command with the same work dir (-w) to resume.", err=True)
        return code
    except click.ClickException as e:  # usage errors: exit 64 (EX_USAGE), not click's 2
        e.show()
        return EXIT_USAGE
    except tuple(EXIT_CODES) as e:
        click.echo(f"diffdeur: error: {e}", err=True)
        return EXIT_CODES[type(e)]
    except Exception as e:
        from .enhance.errors import EnhanceError

        if not isinstance(e, EnhanceError):
            raise
        click.echo(f"diffdeur: error: {e}", err=True)
        return EXIT_FAILURE
    return EXIT_OK if code is None else int(code)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_cli(argv))


if __name__ == "__main__":
    main()
