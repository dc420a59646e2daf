"""Find the low-field anatomical scans to enhance, with pybids.

Selection, in order: anatomical images of the chosen suffixes (magnitude only), the participant
and session labels, the ``--bids-filter-file`` queries, then the field strength from the sidecar
(with BIDS inheritance): at most ``--max-field-strength`` tesla. A scan without
``MagneticFieldStrength`` is skipped, with a message naming the scan and ``--assume-lowfield``.

Scans that were selected but cannot be enhanced (a sidecar that is not valid JSON, a header that
cannot be read, a 2D, 4D or single-slice image, a truncated ``.nii``) are refused here, from the
headers alone, so the plan and ``--dry-run`` show them: ``Skipped(error=True)``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np

from ..errors import EmptySelectionError, InputMissingError, UsageError
from .naming import MODALITIES, SourceName, is_valid_label

log = logging.getLogger("diffdeur")

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
    affine: np.ndarray = field(compare=False)  # from the header, read once here
    field_note: str = ""             # how a MagneticFieldStrength that is not a number of tesla was read

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
    scans: list              # Scan, and after grouping (``bids/stacks.py``) StackGroup too
    skipped: list[Skipped]
    notes: list[str] = field(default_factory=list)  # the plan's remarks: why a scan was kept out of a group


def check_bids_dir(bids_dir: Path) -> None:
    if not bids_dir.exists():
        raise InputMissingError(f"bids_dir {bids_dir} does not exist (in a container: is it mounted, e.g. -v /data:/bids:ro?)")
    if not bids_dir.is_dir():
        raise InputMissingError(f"bids_dir {bids_dir} is not a folder")
    if not os.access(bids_dir, os.R_OK | os.X_OK):
        raise InputMissingError(f"bids_dir {bids_dir} cannot be read (permission denied for user id {os.getuid()}): "
                                "make it readable (in a container, check the mount and --user)")
    description = bids_dir / "dataset_description.json"
    if not description.is_file():
        raise InputMissingError(f"{bids_dir} is not a BIDS dataset: it has no dataset_description.json")
    try:
        json.loads(description.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputMissingError(f"cannot read {description}: {e.strerror}") from e
    except ValueError as e:
        raise InputMissingError(f"{description} is not valid JSON ({e}): fix it") from e


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


# Divisors to tesla of the units a MagneticFieldStrength string may carry (case-insensitive).
_FIELD_UNITS = {"": 1, "t": 1, "tesla": 1, "mt": 1e3, "millitesla": 1e3, "g": 1e4, "gauss": 1e4}
GAUSS_ABOVE = 30  # no MRI magnet reaches 30 T: a bare number above this is in gauss (15000 -> 1.5 T)


def read_field_strength(value) -> tuple[float | None, str]:
    """Tesla from a sidecar's ``MagneticFieldStrength`` (None when it cannot be read), and how a value
    that is not a plain number of tesla was read ("" if it is).

    BIDS asks for a number in tesla. Also read: strings with or without a unit (``"0.064"``,
    ``"0.064 T"``, ``"64 mT"``, ``"640 G"``, ``"640 gauss"``), and bare numbers above 30, which
    no MRI magnet reaches, as gauss, as older DICOM headers stored them (``15000`` -> 1.5 T).
    Zero, negative, non-finite and other values (``"low"``, ``true``) are not read.
    """
    if isinstance(value, bool) or value is None:
        return None, ""
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-z]*)\s*", str(value), flags=re.IGNORECASE)
        if not match or match.group(2).lower() not in _FIELD_UNITS:
            return None, ""
        number, unit = float(match.group(1)), match.group(2).lower()
    if not math.isfinite(number) or number <= 0:
        return None, ""
    gauss = unit == "" and number > GAUSS_ABOVE
    tesla = number / _FIELD_UNITS["gauss" if gauss else unit]
    if isinstance(value, (int, float)) and not gauss:
        return tesla, ""
    note = f"MagneticFieldStrength {value!r} read as {tesla:g} T"
    return tesla, note + (f" (a bare number above {GAUSS_ABOVE} is taken as gauss)" if gauss else "")


def broken_sidecars(bids_dir: Path, subjects) -> dict[str, str]:
    """JSON files that would be indexed but cannot be parsed: relpath -> what is wrong.

    pybids refuses a whole dataset for one such file; they are left out of its index instead, and
    the scans they describe are refused one by one (see :func:`sidecar_applies`).
    """
    folders = [bids_dir / f"sub-{s}" for s in subjects] if subjects else sorted(bids_dir.glob("sub-*"))
    candidates = [p for p in bids_dir.glob("*.json") if p.name != "dataset_description.json"]
    for folder in folders:
        candidates += folder.rglob("*.json")
    broken = {}
    for path in candidates:
        rel = path.relative_to(bids_dir).as_posix()
        if any(pattern.search("/" + rel) for pattern in _IGNORE):
            continue
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            broken[rel] = f"cannot be read: {e.strerror}"
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            broken[rel] = f"is not valid JSON: {e}"
    return broken


def _name_parts(name: str) -> tuple[str, set[str]]:
    """``sub-01_ses-01_T1w.nii.gz`` -> (``T1w``, {``sub-01``, ``ses-01``})."""
    *pairs, suffix = name.split(".", 1)[0].split("_")
    return suffix, set(pairs)


def sidecar_applies(sidecar: str, scan: PurePosixPath) -> bool:
    """BIDS inheritance: a sidecar in the scan's folder or above, same suffix, entities a subset of the scan's."""
    side = PurePosixPath(sidecar)
    if side.parent != scan.parent and side.parent not in scan.parents:
        return False
    (side_suffix, side_pairs), (scan_suffix, scan_pairs) = _name_parts(side.name), _name_parts(scan.name)
    return side_suffix == scan_suffix and side_pairs <= scan_pairs


def _layout(bids_dir: Path, subjects: list[str], leave_out=()):
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    ignore = list(_IGNORE) + [re.compile("^" + re.escape("/" + rel) + "$") for rel in leave_out]
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
    broken = broken_sidecars(bids_dir, subjects)
    layout = _layout(bids_dir, subjects, leave_out=broken)

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
        path = Path(f.path)
        relpath = PurePosixPath(path.relative_to(bids_dir).as_posix())
        bad = [f"its sidecar {rel} {why}" for rel, why in broken.items() if sidecar_applies(rel, relpath)]
        if bad:
            item = Skipped(relpath, "; ".join(bad) + " (fix the JSON; bids-validator-deno shows it too)", error=True)
        else:
            item = _examine(path, relpath, layout, max_field_strength, assume_lowfield)
        (scans if isinstance(item, Scan) else skipped).append(item)
    _warn_field_units(scans)
    return Discovery(scans, skipped)


def _warn_field_units(scans) -> None:
    """One warning per MagneticFieldStrength value that was not a plain number of tesla."""
    read = {}
    for scan in scans:
        if scan.field_note:
            read.setdefault(scan.field_note, []).append(str(scan.relpath))
    for note, relpaths in read.items():
        more = f" and {len(relpaths) - 1} more" if len(relpaths) > 1 else ""
        log.warning("%s (%s%s); BIDS wants a number in tesla: please fix the sidecar", note, relpaths[0], more)


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


def _examine(path: Path, relpath: PurePosixPath, layout, max_t: float, assume_lowfield: bool):
    try:
        src = SourceName.parse(relpath)
    except ValueError as e:
        return Skipped(relpath, f"not a BIDS name: {e}")
    try:
        metadata = dict(layout.get_metadata(str(path)))
    except Exception as e:  # pybids' own complaint; broken JSON was caught before
        return Skipped(relpath, f"cannot read its JSON sidecar: {e}", error=True)
    try:
        image = nib.load(str(path))
        header, affine = image.header, image.affine
        shape = tuple(int(n) for n in header.get_data_shape())
        zooms = tuple(float(z) for z in header.get_zooms()[:3])
    except Exception as e:
        return Skipped(relpath, f"cannot read the NIfTI header ({e}): the file is corrupt, truncated, or its content "
                                "does not match its extension (.nii.gz must be gzip-compressed, .nii not)", error=True)
    problem = header_problem(path, header, shape)
    if problem:
        return Skipped(relpath, problem, error=True)

    raw_field = metadata.get("MagneticFieldStrength")
    tesla, field_note = read_field_strength(raw_field)
    if tesla is None and not assume_lowfield:
        why = "no MagneticFieldStrength in its sidecar" if raw_field is None else \
            f"MagneticFieldStrength {raw_field!r} cannot be read as a field strength (BIDS: a number in tesla)"
        return Skipped(relpath, f"{why}; pass --assume-lowfield to enhance it anyway")
    if tesla is not None and tesla > max_t:
        return Skipped(relpath, f"{tesla:g} T is above --max-field-strength {max_t:g} T (left alone)")
    # the derivative's sidecar gets the BIDS form (a number in tesla), or no value when it cannot be read
    if tesla is None:
        metadata.pop("MagneticFieldStrength", None)
    else:
        metadata["MagneticFieldStrength"] = tesla
    return Scan(path=path, relpath=relpath, suffix=src.suffix, metadata=metadata,
                field_strength=tesla, shape=shape, zooms=zooms, affine=affine, field_note=field_note)


def header_problem(path: Path, header, shape) -> str | None:
    """Why a scan cannot be enhanced, from its header and file size alone (no data read); None if it can."""
    text = "x".join(map(str, shape))
    if len(shape) < 3:
        return f"the image is {len(shape)}D ({text}); diffdeur enhances 3D volumes"
    volumes = math.prod(shape[3:])
    if volumes > 1:
        return (f"the image is 4D with {volumes} volumes ({text}); diffdeur enhances one 3D volume: "
                "write the one to enhance to its own file")
    if min(shape[:3]) < 4:
        return (f"the image has {min(shape[:3])} voxel(s) along one axis ({text}); at least 4 along every axis "
                "are needed (2D images and single slices cannot be enhanced)")
    dtype = header.get_data_dtype()
    if dtype.fields is not None or not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        return f"its data type is {dtype}; a real-valued magnitude image is needed"
    if path.name.endswith(".nii"):  # compressed files are checked when they are read
        expected = int(header.get_data_offset()) + math.prod(shape) * dtype.itemsize
        if path.stat().st_size < expected:
            return (f"the file is truncated: {path.stat().st_size} bytes where its header needs {expected}; "
                    "copy or convert it again")
    return None
