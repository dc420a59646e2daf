"""One settings object for a run, saved beside the run's logs so the run can be explained later.

The command line fills a :class:`Config`; everything downstream (discovery, workflow, sidecars)
reads from it. ``save`` writes ``diffdeur.toml`` to ``<out>/sub-XX/log/<run_uuid>/``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from . import __version__, atomic


def new_run_uuid() -> str:
    """fMRIPrep's form: sortable by time, unique across concurrent runs."""
    return f"{datetime.now():%Y%m%d-%H%M%S}_{uuid.uuid4()}"


@dataclass
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
    random_seed: int = 0
    device: str = "auto"
    prior_file: Path | None = None     # None: the prior shipped with the package
    synthseg: bool = False
    synthseg_model: Path | None = None  # --synthseg-model or $DIFFDEUR_SYNTHSEG_MODEL
    synthseg_robust: bool = False
    synthseg_backend: str = "auto"     # auto | torch | freesurfer
    synthseg_parc: bool = False        # FreeSurfer backend only
    fmriprep_compat: bool = False
    # execution
    work_dir: Path = Path("work")
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    stop_on_first_crash: bool = False
    dry_run: bool = False
    verbose: int = 0
    # filled in by the app
    run_uuid: str = field(default_factory=new_run_uuid)
    version: str = __version__
    command_line: str = ""
    weights_sha256: str | None = None
    device_used: str | None = None     # what "auto" resolved to
    synthseg_backend_used: str | None = None   # what "auto" resolved to: torch or freesurfer
    synthseg_weights: Path | None = None       # the weights file the segmentation uses (torch; FreeSurfer's own)
    synthseg_weights_sha256: str | None = None
    synthseg_official_file: str | None = None  # the official file the weights are (size and sha256), if any

    def enhance_settings(self, threads: int | None = None):
        """The method's settings for this run (device and threads do not change the result)."""
        from .enhance import EnhanceSettings

        return EnhanceSettings.preset(
            self.quality, output_resolution=self.output_resolution, steps=self.steps,
            num_samples=self.num_samples, seed=self.random_seed, device=self.device,
            threads=threads or self.omp_nthreads,
        )

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        out["bids_filters"] = json.dumps(self.bids_filters)  # may hold nulls, which TOML lacks
        return out

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return atomic.write_text(folder / "diffdeur.toml", to_toml({"diffdeur": self.to_dict()}))


def to_toml(data: dict) -> str:
    """A small TOML writer for flat tables of scalars and lists (no dependency needed to write)."""
    lines = []
    for table, values in data.items():
        lines.append(f"[{table}]")
        for key, value in values.items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # JSON string escapes are valid TOML basic-string escapes


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


__all__ = ["Config", "new_run_uuid", "to_toml", "utc_now"]
