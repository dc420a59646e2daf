"""Find the low-field anatomical scans to enhance, with pybids.

Selection, in order: anatomical images of the chosen suffixes (magnitude only), the participant
and session labels, the ``--bids-filter-file`` queries, then the field strength from the sidecar
(with BIDS inheritance): at most ``--max-field-strength`` tesla. A scan without
``MagneticFieldStrength`` is skipped, with a message naming the scan and ``--assume-lowfield``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import nibabel as nib

from ..errors import EmptySelectionError, InputMissingError, UsageError
from .naming import MODALITIES, SourceName, is_valid_label

# Folders and datatypes that never hold our input: not indexing them keeps big datasets fast.
_IGNORE = [
    re.compile(r"^/(code|models|sourcedata|stimuli|derivatives)(/|$)"),
    re.compile(r"/(func|fmap|dwi|perf|beh|eeg|ieeg|meg|pet|micr|nirs|motion|mrs)(/|$)"),
]


@dataclass(frozen=True)
class Scan:
    """One input scan and what the plan needs to know about it."""

    path: Path
    relpath: PurePosixPath           # relative to the BIDS root, for BIDS URIs and names
    suffix: str
    metadata: dict = field(hash=False, compare=False)
    field_strength: float | None     # tesla; None when the sidecar does not say
    shape: tuple[int, ...]
    zooms: tuple[float, ...]

    @property
    def subject(self) -> str:
        return SourceName.parse(self.relpath).subject

    @property
    def session(self) -> str | None:
        return SourceName.parse(self.relpath).session


@dataclass(frozen=True)
class Skipped:
    """A scan left alone, and why. ``error`` marks scans that should have been processed but cannot be read."""

    relpath: PurePosixPath
    reason: str
    error: bool = False


@dataclass
class Discovery:
    scans: list[Scan]
    skipped: list[Skipped]


def check_bids_dir(bids_dir: Path) -> None:
    if not bids_dir.exists():
        raise InputMissingError(f"bids_dir {bids_dir} does not exist (in a container: is it mounted, e.g. -v /data:/bids:ro?)")
    if not bids_dir.is_dir():
        raise InputMissingError(f"bids_dir {bids_dir} is not a folder")
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputMissingError(f"{bids_dir} is not a BIDS dataset: it has no dataset_description.json")


def clean_labels(labels, prefix: str, what: str) -> list[str]:
    """Strip ``sub-``/``ses-`` and refuse anything that is not a plain BIDS label."""
    out = []
    for label in labels or []:
        label = label.removeprefix(prefix)
        if not is_valid_label(label):
            raise UsageError(f"{what} {label!r} is not a valid BIDS label (letters and digits only)")
        out.append(label)
    return list(dict.fromkeys(out))


def load_bids_filters(path: Path | None) -> dict:
    """Read a ``--bids-filter-file`` in fMRIPrep's form: ``{"t1w": {"acquisition": "fast"}, "flair": {...}}``.

    JSON ``null`` means "entity absent" and ``"*"`` "any value", as in fMRIPrep.
    """
    if path is None:
        return {}
    try:
        filters = json.loads(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"cannot read --bids-filter-file {path}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise UsageError(f"--bids-filter-file {path} is not valid JSON: {e}") from e
    known = {m.lower(): m for m in MODALITIES}
    if not isinstance(filters, dict) or not all(isinstance(v, dict) for v in filters.values()):
        raise UsageError(f"--bids-filter-file {path} must map modalities to entity queries, e.g. "
                         '{"t1w": {"acquisition": "fast"}}')
    unknown = [k for k in filters if k.lower() not in known]
    if unknown:
        raise UsageError(f"--bids-filter-file {path}: unknown key(s) {', '.join(unknown)}; use {', '.join(known)}")
    return {known[k.lower()]: v for k, v in filters.items()}


def _query_value(value):
    from bids.layout import Query

    if value is None:
        return Query.NONE
    if value == "*":
        return Query.ANY
    return value


def parse_field_strength(value) -> float | None:
    """Tesla from a sidecar value (a number, or a string like ``"0.064"`` or ``"0.064 T"``)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(T|tesla)?\s*", str(value), flags=re.IGNORECASE)
    return float(match.group(1)) if match else None


def _layout(bids_dir: Path, subjects: list[str]):
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    ignore = list(_IGNORE)
    if subjects:  # do not index subjects nobody asked for
        ignore.append(re.compile(r"^/sub-(?!(%s)(/|$))" % "|".join(map(re.escape, subjects))))
    try:
        return BIDSLayout(str(bids_dir), validate=False, derivatives=False,
                          indexer=BIDSLayoutIndexer(validate=False, ignore=ignore))
    except Exception as e:  # pybids raises many kinds on broken datasets
        raise InputMissingError(f"pybids could not index {bids_dir}: {e}") from e


def discover(bids_dir: Path, *, modalities=MODALITIES, participant_label=(), session_label=(),
             bids_filters=None, max_field_strength: float = 1.0, assume_lowfield: bool = False) -> Discovery:
    """Return the scans to enhance and those skipped, or raise when nothing can be selected."""
    bids_dir = Path(bids_dir).resolve()
    check_bids_dir(bids_dir)
    subjects = clean_labels(participant_label, "sub-", "participant label")
    sessions = clean_labels(session_label, "ses-", "session label")
    _check_subjects_exist(bids_dir, subjects)
    layout = _layout(bids_dir, subjects)

    base = dict(datatype="anat", extension=[".nii", ".nii.gz"], return_type="object")
    if not layout.get(suffix=list(modalities), **base):
        raise InputMissingError(f"{bids_dir} holds no anatomical {'/'.join(modalities)} images "
                                f"{'for the selected participants ' if subjects else ''}"
                                "(looked for sub-*/[ses-*/]anat/*_<suffix>.nii[.gz])")
    _check_sessions_exist(layout, subjects, sessions)

    files = []
    for suffix in modalities:
        query = dict(base, suffix=suffix, part=["mag", _query_value(None)])
        if subjects:
            query["subject"] = subjects
        if sessions:
            query["session"] = sessions
        query.update({k: _query_value(v) for k, v in (bids_filters or {}).get(suffix, {}).items()})
        try:
            files += layout.get(**query)
        except (ValueError, KeyError) as e:
            raise UsageError(f"bad query for {suffix} (check --bids-filter-file): {e}") from e
    if not files:
        raise EmptySelectionError(
            "the participant/session labels and filters selected no files "
            f"(modalities {', '.join(modalities)}; labels {subjects or 'all'}; sessions {sessions or 'all'}; "
            f"filters {json.dumps(bids_filters or {})})")

    scans, skipped = [], []
    for f in sorted(files, key=lambda f: f.path):
        item = _examine(Path(f.path), bids_dir, layout, max_field_strength, assume_lowfield)
        (scans if isinstance(item, Scan) else skipped).append(item)
    return Discovery(scans, skipped)


def _check_subjects_exist(bids_dir: Path, subjects) -> None:
    """From the folder names, before indexing (the index leaves out subjects nobody asked for)."""
    have = sorted(p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir())
    missing = [s for s in subjects if s not in have]
    if missing:
        raise EmptySelectionError(
            f"participant label(s) {', '.join(missing)} not found; the dataset has: {', '.join(have) or 'none'} "
            "(in a container, check that the right folder is mounted)")


def _check_sessions_exist(layout, subjects, sessions) -> None:
    have_ses = sorted(layout.get_sessions(subject=subjects or None))
    missing = [s for s in sessions if s not in have_ses]
    if missing:
        raise EmptySelectionError(f"session label(s) {', '.join(missing)} not found; "
                                  f"the selected participants have: {', '.join(have_ses) or 'no sessions'}")


def _examine(path: Path, bids_dir: Path, layout, max_t: float, assume_lowfield: bool):
    relpath = PurePosixPath(path.relative_to(bids_dir).as_posix())
    try:
        src = SourceName.parse(relpath)
    except ValueError as e:
        return Skipped(relpath, f"not a BIDS name: {e}")
    try:
        metadata = layout.get_metadata(str(path))
    except Exception as e:  # a sidecar that is not valid JSON
        return Skipped(relpath, f"cannot read its JSON sidecar: {e}", error=True)
    try:
        header = nib.load(str(path)).header
        shape = tuple(int(n) for n in header.get_data_shape())
        zooms = tuple(float(z) for z in header.get_zooms()[:3])
    except Exception as e:
        return Skipped(relpath, f"cannot read the NIfTI header: {e}", error=True)

    raw_field = metadata.get("MagneticFieldStrength")
    tesla = parse_field_strength(raw_field)
    if tesla is None and not assume_lowfield:
        why = "no MagneticFieldStrength in its sidecar" if raw_field is None else \
            f"MagneticFieldStrength {raw_field!r} is not a number of tesla"
        return Skipped(relpath, f"{why}; pass --assume-lowfield to enhance it anyway")
    if tesla is not None and tesla > max_t:
        return Skipped(relpath, f"{tesla:g} T is above --max-field-strength {max_t:g} T (left alone)")
    return Scan(path=path, relpath=relpath, suffix=src.suffix, metadata=metadata,
                field_strength=tesla, shape=shape, zooms=zooms)
