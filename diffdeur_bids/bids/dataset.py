"""The derivative dataset's top-level files: dataset_description.json, .bidsignore, descriptions.tsv,
and, with ``--synthseg``, the lookup table ``desc-synthseg_dseg.tsv`` (+ ``.json``).

Several participant runs (a SLURM array) may share one output folder, so these files are written
under a file lock and atomically; an existing description is kept (first run wins) and only a
version mismatch is reported, as fMRIPrep's ``check_pipeline_version`` does.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from filelock import FileLock

from .. import __version__, atomic
from . import naming
from .naming import DESCRIPTIONS
from .sidecars import SYNTHSEG_DESCRIPTION
from .tables import read_tsv, to_tsv

log = logging.getLogger("diffdeur")

BIDS_VERSION = "1.10.1"
NAME = "diffdeur"
CODE_URL = "https://github.com/diffdeur/diffdeur"  # as the container images' org.opencontainers.image.source
# Not BIDS: the per-run logs, reports and figures, the group tables, and the SynthSeg volumes tables (no BIDS file type
# fits them). Bare names (no trailing slash) match at any depth; checked with bids-validator-deno
# 3.0.2, which does not honour "figures/".
BIDSIGNORE = ["logs", "log", "figures", "*.html", naming.VOLUMES_BIDSIGNORE, naming.XFM_BIDSIGNORE, "group_*.tsv",
              "group_*.json"]
LOCK_NAME = "logs/.diffdeur.lock"  # under logs/ (BIDS-ignored): the lock file outlives the runs that share it
README = """# diffdeur derivatives

Low-field anatomical scans enhanced by diffdeur (DiffDeuR: a diffusion prior and an implicit neural
representation). Each `*_desc-enhanced_<suffix>.nii.gz` has a JSON sidecar whose `Sources` names
the raw scan (`bids:raw:...`, see `DatasetLinks` in dataset_description.json) and whose `DiffDeuR`
object records how it was made (version, settings, seed, device, weights sha256, timings).
`descriptions.tsv` explains each `desc-` label; `sub-*/log/<run>/` holds each run's settings and
crash reports. With `--synthseg`, each `*_desc-synthseg_dseg.nii.gz` is a SynthSeg segmentation of the
enhanced image (labels in the top-level `desc-synthseg_dseg.tsv`) and `*_desc-synthseg_volumes.tsv`
lists its structure volumes in mm3 (not a BIDS file type, hence listed in `.bidsignore`).
Thick-slice stacks fused into one image are all listed in its `Sources` (the first is the reference,
`SpatialReference`); `*_from-orig_to-<reference>_mode-image_xfm.txt` is each stack's rigid transform
to the reference (ITK text, as fMRIPrep's; listed in `.bidsignore`).
"""

LUT_COLUMNS = ("index", "name", "abbreviation", "color", "mapping")
# The top-level sidecar applies by inheritance to every *_desc-synthseg_dseg.* file, so its Description
# is the one the per-scan sidecars carry too (same value: no SIDECAR_FIELD_OVERRIDE warning). The LUT's
# columns are BIDS-defined (redefining them is a validator warning).
LUT_SIDECAR = {"Description": SYNTHSEG_DESCRIPTION}


def container() -> dict | None:
    """The container we run in, when the image or the runtime tells us (for GeneratedBy)."""
    if os.environ.get("DIFFDEUR_DOCKER_TAG"):
        return {"Type": "docker", "Tag": os.environ["DIFFDEUR_DOCKER_TAG"]}
    for var, kind in (("DIFFDEUR_SINGULARITY_URL", "singularity"), ("APPTAINER_CONTAINER", "apptainer"),
                      ("SINGULARITY_CONTAINER", "singularity")):
        if os.environ.get(var):
            return {"Type": kind, "URI": os.environ[var]}
    return None


def dataset_description(bids_dir: Path, output_dir: Path) -> dict:
    """The derivative's dataset_description.json; ``Sources`` URIs resolve through ``DatasetLinks.raw``."""
    raw_link = os.path.relpath(Path(bids_dir).resolve(), Path(output_dir).resolve())
    generated_by = {"Name": NAME, "Version": __version__, "CodeURL": CODE_URL,
                    "Description": "Low-field MRI enhancement with a diffusion prior and an implicit neural representation"}
    if (c := container()):
        generated_by["Container"] = c
    source = {"URL": raw_link}
    raw = _read_json(Path(bids_dir) / "dataset_description.json")
    if raw.get("DatasetDOI"):
        source["DOI"] = raw["DatasetDOI"]
    if raw.get("Version") or raw.get("DatasetVersion"):
        source["Version"] = str(raw.get("Version") or raw.get("DatasetVersion"))
    desc = {
        "Name": f"diffdeur: enhanced low-field scans of {raw.get('Name', Path(bids_dir).name)}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        "SourceDatasets": [source],
        "DatasetLinks": {"raw": raw_link},
        "HowToAcknowledge": "Please cite the DiffDeuR method and give the diffdeur version listed in GeneratedBy.",
        # the derivative's authors are the raw dataset's, whose data it is; the tool is credited in GeneratedBy
        "Authors": raw.get("Authors") or ["The authors of the raw dataset (not listed there)"],
    }
    if raw.get("License"):
        desc["License"] = raw["License"]
    return desc


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _lock(output_dir: Path) -> FileLock:
    (output_dir / LOCK_NAME).parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(output_dir / LOCK_NAME), timeout=120)


def write_dataset_files(bids_dir: Path, output_dir: Path, descs=tuple(DESCRIPTIONS)) -> None:
    """Create or complete the top-level files; safe when several runs do it at once.

    ``descs``: the ``desc-`` labels this run writes, which ``descriptions.tsv`` gains (labels
    an earlier run described stay).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with _lock(output_dir):
        desc_path = output_dir / "dataset_description.json"
        existing = _read_json(desc_path)
        if not existing.get("GeneratedBy"):
            atomic.write_json(desc_path, dataset_description(bids_dir, output_dir))
        else:
            versions = {g.get("Version") for g in existing["GeneratedBy"] if g.get("Name") == NAME}
            if versions and __version__ not in versions:
                log.warning("%s was made by diffdeur %s; this is %s: outputs of both versions will mix",
                            output_dir, ", ".join(sorted(v for v in versions if v)), __version__)

        ignore_path = output_dir / ".bidsignore"
        lines = ignore_path.read_text().splitlines() if ignore_path.exists() else []
        if missing := [p for p in BIDSIGNORE if p not in lines]:
            atomic.write_text(ignore_path, "\n".join(lines + missing) + "\n")

        tsv = output_dir / "descriptions.tsv"
        rows = dict(line.split("\t", 1) for line in tsv.read_text().splitlines()[1:] if "\t" in line) \
            if tsv.exists() else {}
        ours = {f"desc-{k}": DESCRIPTIONS[k] for k in descs}
        if set(ours) - set(rows):
            rows = {**ours, **rows}
            atomic.write_text(tsv, "desc_id\tdescription\n" + "".join(f"{k}\t{v}\n" for k, v in rows.items()))

        readme = output_dir / "README.md"
        if not readme.exists():
            atomic.write_text(readme, README)


def write_synthseg_lut(output_dir: Path, rows) -> Path:
    """Create or complete the top-level ``desc-synthseg_dseg.tsv`` (and its ``.json``).

    Safe when several runs do it at once (file lock, atomic rename). Rows already there are kept in
    their order; labels not yet listed (``--synthseg-parc`` parcels) are appended, sorted. The files
    are rewritten only when something is missing, so concurrent runs write them once.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / naming.SYNTHSEG_LUT
    with _lock(output_dir):
        existing = read_tsv(path) if path.exists() else []
        known = set()
        for row in existing:
            try:
                known.add(int(row.get("index", "")))
            except ValueError:
                pass
        new = sorted((r for r in rows if int(r["index"]) not in known), key=lambda r: int(r["index"]))
        if new or not path.exists():
            atomic.write_text(path, to_tsv(existing + list(new), LUT_COLUMNS))
        sidecar = output_dir / naming.SYNTHSEG_LUT_SIDECAR
        if not sidecar.exists():
            atomic.write_json(sidecar, LUT_SIDECAR)
    return path
