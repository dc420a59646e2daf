"""What a run was asked to do, and what its start-up resolved, saved beside the run's logs.

The command line fills a :class:`Config` (the options, frozen). The start-up checks and the
plan add a :class:`Resolved` record (device, weights and their sha256, SynthSeg backend,
memory plan). Everything downstream (workflow, sidecars, plan text) reads the two;
:func:`save_run_record` writes both to ``<out>/sub-XX/log/<run_uuid>/diffdeur.toml``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from . import __version__, atomic
from .priors.registry import DEFAULT_PRIOR


def new_run_uuid() -> str:
    """fMRIPrep's form: sortable by time, unique across concurrent runs."""
    return f"{datetime.now():%Y%m%d-%H%M%S}_{uuid.uuid4()}"


@dataclass(frozen=True)
class Config:
    """Every option of a run, after parsing and defaults."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str = "participant"
    # what to process
    participant_label: list[str] = field(default_factory=list)
    session_label: list[str] = field(default_factory=list)
    bids_filter_file: Path | None = None
    bids_filters: dict = field(default_factory=dict)
    modalities: list[str] = field(default_factory=lambda: ["T1w", "T2w", "FLAIR"])
    max_field_strength: float = 1.0
    assume_lowfield: bool = False
    skip_bids_validation: bool = False
    # the method
    quality: str = "default"
    output_resolution: float = 1.0
    steps: int | None = None
    num_samples: int = 1
    learned_upsampling: bool = True    # the start's learned upsampler
    random_seed: int = 0
    device: str = "auto"
    prior: str = DEFAULT_PRIOR         # a shipped prior's name or a weights file
    synthseg: bool = False
    synthseg_model: Path | None = None  # --synthseg-model or $DIFFDEUR_SYNTHSEG_MODEL
    synthseg_robust: bool = False
    synthseg_backend: str = "auto"     # auto | torch | freesurfer
    synthseg_parc: bool = False        # FreeSurfer backend only
    fmriprep_compat: bool = False
    stacks: str = "auto"               # auto: fuse the stacks of one contrast; separate: enhance each scan alone
    # execution
    work_dir: Path = Path("work")
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    stop_on_first_crash: bool = False
    dry_run: bool = False
    verbose: int = 0
    clean_workdir: bool = False        # empty the work dir before the run (fMRIPrep's --clean-workdir)
    write_graph: bool = False          # the workflow's graph into the work dir
    resource_monitor: bool = False     # Nipype's resource monitor: each node's peak memory and CPU
    plugin: dict | None = None         # --use-plugin: {"plugin": NAME, "plugin_args": {...}} for Nipype
    fs_license_file: Path | None = None  # FreeSurfer's licence, for the freesurfer SynthSeg backend
    boilerplate_only: bool = False     # write logs/CITATION.* and stop
    reports_only: bool = False         # rebuild the sub-XX.html reports from the outputs and stop
    # the run itself
    run_uuid: str = field(default_factory=new_run_uuid)
    version: str = __version__
    command_line: str = ""

    def enhance_settings(self, threads: int | None = None):
        """The method's settings for this run (device and threads do not change the result)."""
        from .enhance import EnhanceSettings

        return EnhanceSettings.preset(
            self.quality, output_resolution=self.output_resolution, steps=self.steps,
            num_samples=self.num_samples, learned_upsampling=self.learned_upsampling, seed=self.random_seed,
            device=self.device,
            threads=threads or self.omp_nthreads,
        )

    def to_dict(self) -> dict:
        out = _as_dict(self)
        out["bids_filters"] = json.dumps(self.bids_filters)  # may hold nulls, which TOML lacks
        return out

    def save(self, folder: str | Path, resolved: "Resolved | None" = None) -> Path:
        """Write ``diffdeur.toml``: the options in ``[diffdeur]``, what was resolved in ``[resolved]``
        and the memory plan, one entry per scan, in ``[plan]``."""
        tables = {"diffdeur": self.to_dict()}
        if resolved is not None:
            tables["resolved"] = {k: v for k, v in _as_dict(resolved).items() if k != "memory_plan"}
            tables["plan"] = dict(resolved.memory_plan)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return atomic.write_text(folder / "diffdeur.toml", to_toml(tables))


@dataclass(frozen=True)
class Resolved:
    """What the start-up checks and the plan decided, from the options and this machine."""

    device: str                                 # what --device (e.g. "auto") resolved to
    prior: str = DEFAULT_PRIOR                  # the prior loaded: a shipped name or a file
    weights_sha256: str | None = None           # of the prior
    synthseg_backend: str | None = None         # torch or freesurfer; None without --synthseg
    synthseg_weights: Path | None = None        # the weights the segmentation uses (torch; FreeSurfer's own)
    synthseg_weights_sha256: str | None = None
    synthseg_official_file: str | None = None   # the official file the weights are (size and sha256), if any
    memory_limit_gb: float | None = None        # --mem, else this machine's (or its cgroup's) memory
    memory_plan: dict = field(default_factory=dict)  # scan relpath -> {"output_shape": [...], "mem_gb": ...}

    def output_shape(self, relpath) -> tuple[int, ...] | None:
        entry = self.memory_plan.get(str(relpath))
        return tuple(entry["output_shape"]) if entry else None


def _as_dict(record) -> dict:
    return {f.name: str(v) if isinstance(v := getattr(record, f.name), Path) else v for f in fields(record)}


def to_toml(data: dict) -> str:
    """A small TOML writer for tables of scalars, lists and inline tables (no dependency needed to write)."""
    lines = []
    for table, values in data.items():
        lines.append(f"[{table}]")
        for key, value in values.items():
            if value is not None:
                lines.append(f"{json.dumps(key) if '/' in key or '.' in key else key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value) -> str:
    if isinstance(value, dict):  # an inline table; keys quoted (they may be paths)
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items() if v is not None) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # JSON string escapes are valid TOML basic-string escapes


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


__all__ = ["Config", "Resolved", "new_run_uuid", "to_toml", "utc_now"]
