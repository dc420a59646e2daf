"""THE single place where derivative file names and output folders are built.

Names follow BIDS-Derivatives and were checked with bids-validator-deno 3.0.2: the source file's
entities in their original order, then ``desc-<label>``, then the suffix. ``desc-enhanced`` is
chosen so fMRIPrep's ``--derivatives`` never takes our images as its precomputed anatomy by
accident (it looks for ``desc-preproc``, written only with ``--fmriprep-compat``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MODALITIES = ("T1w", "T2w", "FLAIR")

DESC_ENHANCED = "enhanced"
DESC_STD = "enhancedstd"
DESC_PREPROC = "preproc"
DESC_SYNTHSEG = "synthseg"

# One row each in the top-level descriptions.tsv (BIDS 1.9), so every desc- label is documented.
DESCRIPTIONS = {
    DESC_ENHANCED: "Low-field scan reoriented to RAS+ and enhanced (denoised, super-resolved) by DiffDeuR",
    DESC_STD: "Voxel-wise standard deviation across the DiffDeuR posterior samples (uncertainty), "
    "in the units of the enhanced image",
    DESC_PREPROC: "Copy of the enhanced T1w under fMRIPrep's name, written with --fmriprep-compat",
    DESC_SYNTHSEG: "SynthSeg segmentation of the enhanced image (FreeSurfer labels)",
}

_EXTENSIONS = (".nii.gz", ".nii")
_LABEL = re.compile(r"^[A-Za-z0-9]+$")


def is_valid_label(label: str) -> bool:
    """BIDS labels are alphanumeric; anything else (``../x``, ``*``) must never reach a path."""
    return bool(_LABEL.match(label))


@dataclass(frozen=True)
class SourceName:
    """A raw BIDS file name split into its entities, suffix and extension."""

    entities: tuple[tuple[str, str], ...]
    suffix: str
    extension: str

    @classmethod
    def parse(cls, name: str | PurePosixPath | Path) -> "SourceName":
        name = PurePosixPath(name).name
        extension = next((e for e in _EXTENSIONS if name.endswith(e)), None)
        if extension is None:
            raise ValueError(f"{name}: not a NIfTI file name (.nii or .nii.gz)")
        *pairs, suffix = name[: -len(extension)].split("_")
        entities = []
        for pair in pairs:
            key, sep, value = pair.partition("-")
            if not sep or not key or not value:
                raise ValueError(f"{name}: '{pair}' is not a key-value entity")
            entities.append((key, value))
        if not entities or entities[0][0] != "sub":
            raise ValueError(f"{name}: a BIDS file name starts with sub-<label>")
        return cls(tuple(entities), suffix, extension)

    def get(self, key: str) -> str | None:
        return dict(self.entities).get(key)

    @property
    def subject(self) -> str:
        return self.get("sub")

    @property
    def session(self) -> str | None:
        return self.get("ses")

    def folder(self, datatype: str = "anat") -> PurePosixPath:
        """``sub-01/ses-01/anat``: where this file's derivatives go."""
        parts = [f"sub-{self.subject}"] + ([f"ses-{self.session}"] if self.session else [])
        return PurePosixPath(*parts, datatype)

    def stem(self) -> str:
        return "_".join(f"{k}-{v}" for k, v in self.entities) + f"_{self.suffix}"


def derivative_relpath(source: str | PurePosixPath | Path, desc: str, suffix: str | None = None,
                       extension: str = ".nii.gz") -> PurePosixPath:
    """Relative path of a derivative of ``source``, e.g. ``sub-01/anat/sub-01_desc-enhanced_T1w.nii.gz``.

    ``desc`` goes last among the entities, as BIDS 1.11 requires; ``suffix`` defaults to the source's.
    """
    src = SourceName.parse(source)
    if not is_valid_label(desc):
        raise ValueError(f"desc label must be alphanumeric, got {desc!r}")
    entities = "_".join(f"{k}-{v}" for k, v in src.entities if k != "desc")
    return src.folder() / f"{entities}_desc-{desc}_{suffix or src.suffix}{extension}"


def enhanced_relpath(source) -> PurePosixPath:
    return derivative_relpath(source, DESC_ENHANCED)


def std_relpath(source) -> PurePosixPath:
    return derivative_relpath(source, DESC_STD)


def preproc_relpath(source) -> PurePosixPath:
    return derivative_relpath(source, DESC_PREPROC)


def synthseg_relpath(source) -> PurePosixPath:
    return derivative_relpath(source, DESC_SYNTHSEG, suffix="dseg")


def synthseg_sources(sources) -> dict[PurePosixPath, str]:
    """Which scan is segmented for each segmentation name: ``{dseg relpath: source relpath}``.

    The segmentation's name keeps the source's entities but not its suffix (``_dseg`` replaces it), so
    a T1w and a T2w with the same entities would share one name: one of them is segmented, T1w first,
    then T2w, then FLAIR (``Sources`` in the sidecar says which).
    """
    rank = {m: i for i, m in enumerate(MODALITIES)}
    chosen: dict[PurePosixPath, str] = {}
    for src in sorted(map(str, sources), key=lambda s: rank.get(SourceName.parse(s).suffix, len(rank))):
        chosen.setdefault(synthseg_relpath(src), src)
    return chosen


# Entities that may differ between the stacks of one fused group (``bids/stacks.py``); the rest are shared.
STACK_ENTITIES = ("acq", "run", "rec")
XFM_SUFFIX = "xfm"
XFM_BIDSIGNORE = "*_xfm.txt"  # BIDS has no transform files yet: listed in .bidsignore, as fMRIPrep does


def differing_entities(sources) -> list[str]:
    """The :data:`STACK_ENTITIES` whose value (or absence) is not the same in every one of ``sources``."""
    names = [SourceName.parse(s) for s in sources]
    return [key for key in STACK_ENTITIES if len({n.get(key) for n in names}) > 1]


def group_relpath(sources) -> PurePosixPath:
    """The raw-like name a fused group's derivatives are made from: the first source's entities less the
    :data:`STACK_ENTITIES` that differ between the sources (``sub-01_acq-axi_T2w`` + ``sub-01_acq-cor_T2w``
    -> ``sub-01/anat/sub-01_T2w.nii.gz``). It names outputs only; no such raw file exists."""
    sources = list(sources)
    first, drop = SourceName.parse(sources[0]), set(differing_entities(sources))
    entities = "_".join(f"{k}-{v}" for k, v in first.entities if k not in drop)
    return first.folder() / f"{entities}_{first.suffix}{first.extension}"


def stack_label(source, sources) -> str:
    """A stack's name among ``sources``, from the entities that tell them apart: ``acq-axi`` -> ``axi``,
    ``run-2`` -> ``run2`` (alphanumeric, so it can be an entity's value)."""
    src = SourceName.parse(source)
    parts = [src.get(k) or "" if k == "acq" else f"{k}{src.get(k) or ''}" for k in differing_entities(sources)]
    return "".join(parts) or "ref"


def xfm_relpath(source, reference, sources) -> PurePosixPath:
    """The rigid transform of stack ``source`` to the group's ``reference``, ITK text (fMRIPrep's names):
    ``sub-01/anat/sub-01_acq-cor_from-orig_to-axi_mode-image_xfm.txt``."""
    src = SourceName.parse(source)
    entities = "_".join(f"{k}-{v}" for k, v in src.entities if k != "desc")
    return src.folder() / f"{entities}_from-orig_to-{stack_label(reference, sources)}_mode-image_{XFM_SUFFIX}.txt"


# Not a BIDS suffix: no BIDS-Derivatives file type holds per-structure volumes (a ``_dseg.tsv`` is a
# lookup table), so this table is listed in the derivative's .bidsignore (``VOLUMES_BIDSIGNORE``).
VOLUMES_SUFFIX = "volumes"
VOLUMES_BIDSIGNORE = f"*_{VOLUMES_SUFFIX}.tsv"


def produced_descs(config, scans) -> list[str]:
    """The ``desc-`` labels a run with ``config`` writes for ``scans``."""
    descs = [DESC_ENHANCED]
    if config.num_samples > 1:
        descs.append(DESC_STD)
    if config.fmriprep_compat and any(SourceName.parse(s.relpath).suffix == "T1w" for s in scans):
        descs.append(DESC_PREPROC)
    if config.synthseg:
        descs.append(DESC_SYNTHSEG)
    return descs


def figure_relpath(source, what: str) -> PurePosixPath:
    """A report figure of ``source``: ``sub-01/figures/sub-01_ses-01_desc-<what>_T1w.png`` (fMRIPrep's place)."""
    name = derivative_relpath(source, what, extension=".png").name
    return PurePosixPath(f"sub-{SourceName.parse(source).subject}", "figures", name)


def report_relpath(subject: str) -> PurePosixPath:
    """The subject's report page, at the top of the output folder as fMRIPrep's."""
    return PurePosixPath(f"sub-{subject}.html")


def synthseg_volumes_relpath(source) -> PurePosixPath:
    """Per-scan volumes table beside the segmentation: ``..._desc-synthseg_volumes.tsv``."""
    return derivative_relpath(source, DESC_SYNTHSEG, suffix=VOLUMES_SUFFIX, extension=".tsv")


# Top-level lookup table of every ``*_desc-synthseg_dseg.nii.gz`` (BIDS inheritance), and its sidecar.
SYNTHSEG_LUT = f"desc-{DESC_SYNTHSEG}_dseg.tsv"
SYNTHSEG_LUT_SIDECAR = f"desc-{DESC_SYNTHSEG}_dseg.json"


def sidecar_of(path):
    """The JSON sidecar beside a NIfTI path, as the same type of path (str, Path or PurePosixPath)."""
    name = str(path)
    extension = next((e for e in _EXTENSIONS if name.endswith(e)), None)
    if extension is None:
        raise ValueError(f"{path}: not a NIfTI path")
    sidecar = name[: -len(extension)] + ".json"
    return sidecar if isinstance(path, str) else type(path)(sidecar)


def bids_uri(relpath: str | PurePosixPath, dataset: str = "raw") -> str:
    """A BIDS URI (BIDS >= 1.8), e.g. ``bids:raw:sub-01/anat/sub-01_T1w.nii.gz``."""
    return f"bids:{dataset}:{PurePosixPath(relpath).as_posix()}"


def subject_log_dir(output_dir: str | Path, subject: str, run_uuid: str) -> Path:
    """``<out>/sub-XX/log/<run_uuid>``: the run's settings and crash files, as fMRIPrep does."""
    return Path(output_dir) / f"sub-{subject}" / "log" / run_uuid


def node_name(source) -> str:
    """A Nipype-safe identifier for one scan's branch (``sub_01_ses_01_T1w``)."""
    return re.sub(r"[^A-Za-z0-9]", "_", SourceName.parse(source).stem())
