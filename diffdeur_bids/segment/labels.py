"""SynthSeg label metadata: channel order, FreeSurfer values, BIDS lookup rows, volume rows.

Everything comes from one table (``data/synthseg/labels_2.0.tsv``) so the label map, the
top-level ``desc-synthseg_dseg.tsv`` and the volumes table can never disagree.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

LABEL_TABLE = Path(__file__).resolve().parent.parent / "data" / "synthseg" / "labels_2.0.tsv"
TIV_NAME = "total intracranial"


@dataclass(frozen=True)
class LabelInfo:
    index: int
    name: str
    abbreviation: str
    color: str
    mapping: int
    synthseg_name: str
    lr_partner: int
    topology_class: int


@lru_cache(maxsize=None)
def _rows() -> tuple[LabelInfo, ...]:
    with open(LABEL_TABLE, newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        return tuple(
            LabelInfo(int(r["index"]), r["name"], r["abbreviation"], r["color"], int(r["mapping"]),
                      r["synthseg_name"], int(r["lr_partner"]), int(r["topology_class"]))
            for r in reader)


def label_infos(version: str = "2.0") -> tuple[LabelInfo, ...]:
    """Rows in network channel order; SynthSeg 1.0 has no CSF (label 24) channel."""
    rows = _rows()
    if version == "1.0":
        rows = tuple(r for r in rows if r.index != 24)
    elif version != "2.0":
        raise ValueError(f"unknown SynthSeg version {version!r}")
    return rows


def label_values(version: str = "2.0") -> np.ndarray:
    """FreeSurfer label value of each output channel."""
    return np.array([r.index for r in label_infos(version)], dtype=np.int16)


def flip_indices(version: str = "2.0") -> np.ndarray:
    """Channel of the left/right counterpart of each channel (itself for midline labels)."""
    values = list(label_values(version))
    return np.array([values.index(r.lr_partner) for r in label_infos(version)], dtype=np.int64)


def topology_classes(version: str = "2.0") -> np.ndarray:
    return np.array([r.topology_class for r in label_infos(version)], dtype=np.int64)


def version_for_channels(n_labels: int) -> str:
    """33 outputs = SynthSeg 2.0 (and robust 2.0), 32 = SynthSeg 1.0."""
    for version in ("2.0", "1.0"):
        if len(label_infos(version)) == n_labels:
            return version
    raise ValueError(f"a SynthSeg segmentation network has 32 or 33 outputs, not {n_labels}")


def dseg_lookup_rows(version: str = "2.0") -> list[dict]:
    """Rows of the BIDS ``desc-synthseg_dseg.tsv`` lookup table (index, name, abbreviation, color, mapping)."""
    return [dict(index=r.index, name=r.name, abbreviation=r.abbreviation, color=r.color, mapping=r.mapping)
            for r in label_infos(version)]


def volume_rows(volumes: dict[int, float], tiv_mm3: float | None, version: str = "2.0") -> list[dict]:
    """Per-scan volumes table: total intracranial first (``label`` None, i.e. n/a), then one row per structure.

    Same order and content as SynthSeg's ``--vol`` CSV (``last_first``), rounded like it to 1e-3 mm3.
    """
    rows = []
    if tiv_mm3 is not None:
        rows.append(dict(label=None, name=TIV_NAME, volume_mm3=round(float(tiv_mm3), 3)))
    for r in label_infos(version)[1:]:
        rows.append(dict(label=r.index, name=r.name, volume_mm3=round(float(volumes.get(r.index, 0.0)), 3)))
    return rows
