"""Thick-slice stacks of one contrast, grouped to be fused into one enhanced volume (``--stacks auto``).

Scans of one subject and session with the same suffix whose names differ only in ``acq-``, ``run-``
or ``rec-`` (:data:`naming.STACK_ENTITIES`), and whose grids differ (another thick axis, an offset),
form a group. Its reference is the stack with the smallest in-plane voxel (ties: the first in BIDS
order): the fused volume covers the reference's field of view. A scan is kept out of a group, with
the reason in the plan, when it repeats another member's grid or hardly overlaps the reference's
field of view, or was acquired with other timing (``SEQUENCE_KEYS``). A member that discovery refused (it cannot be read) refuses its whole group: the
group is not fused from what is left without the user knowing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

from . import naming
from .discovery import Scan, Skipped

MIN_OVERLAP = 0.5  # share of the smaller field of view that a stack and the reference must have in common
GRID_ATOL_MM = 1e-3
# Stacks of one protocol share its timing; a scan whose timing differs from the reference's is another sequence
# (another contrast weighting), not another view of the same one
SEQUENCE_KEYS = ("EchoTime", "RepetitionTime", "InversionTime", "FlipAngle")


@dataclass(frozen=True)
class StackGroup:
    """Stacks to fuse, the reference first: read like a :class:`Scan` where the run needs one unit of work."""

    stacks: tuple[Scan, ...]
    relpath: PurePosixPath  # the name the derivatives are made from (``naming.group_relpath``); not a raw file

    @property
    def reference(self) -> Scan:
        return self.stacks[0]

    @property
    def sources(self) -> list[PurePosixPath]:
        return [s.relpath for s in self.stacks]

    def label(self, stack: Scan) -> str:
        return naming.stack_label(stack.relpath, self.sources)

    def __str__(self) -> str:
        """How the plan, the summary and the reports name the group: its stacks, the reference first."""
        return " + ".join(str(s) for s in self.sources)

    # what the plan, the reports and the summary read of a unit of work: the reference's
    subject = property(lambda self: self.reference.subject)
    session = property(lambda self: self.reference.session)
    suffix = property(lambda self: self.reference.suffix)
    path = property(lambda self: self.reference.path)
    shape = property(lambda self: self.reference.shape)
    zooms = property(lambda self: self.reference.zooms)
    affine = property(lambda self: self.reference.affine)
    field_strength = property(lambda self: self.reference.field_strength)

    @property
    def metadata(self) -> dict:
        """The sidecar metadata every stack has with the same value."""
        first, rest = self.stacks[0].metadata, [s.metadata for s in self.stacks[1:]]
        return {k: v for k, v in first.items() if all(m.get(k) == v for m in rest)}


def in_plane_area(scan) -> float:
    """mm²: the product of the two smallest voxel sizes."""
    a, b = sorted(scan.zooms)[:2]
    return a * b


def same_grid(a, b) -> bool:
    return tuple(a.shape[:3]) == tuple(b.shape[:3]) and np.allclose(a.affine, b.affine, atol=GRID_ATOL_MM)


def _box(scan) -> tuple[np.ndarray, np.ndarray]:
    """The field of view's world bounding box (voxel edges, not centres)."""
    corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in scan.shape[:3]], indexing="ij")).reshape(3, -1)
    world = scan.affine[:3, :3] @ corners + scan.affine[:3, 3:]
    return world.min(1), world.max(1)


def other_sequence(a, b) -> str | None:
    """How ``a``'s timing differs from ``b``'s (a key both sidecars have, values more than 1 % apart), or None."""
    for key in SEQUENCE_KEYS:
        va, vb = a.metadata.get(key), b.metadata.get(key)
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and not np.isclose(va, vb, rtol=0.01):
            return f"its {key} {va:g} is not the reference's {vb:g}"
    return None


def fov_overlap(a, b) -> float:
    """The share of the smaller field of view (bounding boxes) that ``a`` and ``b`` have in common."""
    (lo_a, hi_a), (lo_b, hi_b) = _box(a), _box(b)
    common = np.prod(np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0, None))
    return float(common / min(np.prod(hi_a - lo_a), np.prod(hi_b - lo_b)))


def group_key(relpath) -> tuple:
    """Scans with the same key may be stacks of one group: folder, suffix and every other entity."""
    name = naming.SourceName.parse(relpath)
    kept = tuple((k, v) for k, v in name.entities if k not in naming.STACK_ENTITIES)
    return str(PurePosixPath(relpath).parent), name.suffix, kept


@dataclass
class Grouping:
    units: list            # Scan and StackGroup, in BIDS order of their first scan
    notes: list[str]       # why a scan that could have been a stack was enhanced on its own
    refused: list[Skipped]  # members of groups refused because one of their stacks cannot be read


def group_stacks(scans, skipped=(), mode: str = "auto") -> Grouping:
    """Group ``scans`` into stacks to fuse (``mode`` ``auto``) or leave every scan alone (``separate``)."""
    if mode == "separate":
        return Grouping(list(scans), [], [])
    candidates = defaultdict(list)
    for scan in scans:
        candidates[group_key(scan.relpath)].append(scan)
    unreadable = defaultdict(list)
    for item in skipped:
        if item.error:
            try:
                unreadable[group_key(item.relpath)].append(item)
            except ValueError:  # not a BIDS name: it belongs to no group
                pass
    units, notes, refused = [], [], []
    for members in candidates.values():
        group, kept_out = _one_group(sorted(members, key=lambda s: str(s.relpath)), notes)
        bad = unreadable.get(group_key(members[0].relpath), []) if group else []
        if bad:
            names = ", ".join(str(b.relpath) for b in bad)
            why = (f"not enhanced: {names}, a stack of the same group, cannot be read ({bad[0].reason}); fix or "
                   "remove it, or pass --stacks separate to enhance the other stacks one by one")
            refused += [Skipped(s.relpath, why, error=True) for s in group.stacks]
            units += kept_out
        else:
            units += ([group] if group else []) + kept_out
    taken = {str(u.relpath) for u in units if isinstance(u, Scan)}
    kept = []
    for unit in units:  # a group named like a scan enhanced on its own is not fused
        if isinstance(unit, StackGroup) and str(unit.relpath) in taken:
            notes.append(f"{', '.join(map(str, unit.sources))}: not fused, the fused image would have the name of "
                         f"{unit.relpath}'s; each is enhanced on its own")
            kept += unit.stacks
        else:
            kept.append(unit)
    units = kept
    units.sort(key=lambda u: str(u.stacks[0].relpath if isinstance(u, StackGroup) else u.relpath))
    return Grouping(units, notes, refused)


def _one_group(members: list, notes: list[str]) -> tuple[StackGroup | None, list]:
    """The group among ``members`` (BIDS order), or None, and the scans enhanced on their own."""
    if len(members) < 2:
        return None, members
    distinct, alone = [], []
    for scan in members:
        twin = next((d for d in distinct if same_grid(d, scan)), None)
        if twin is not None:
            notes.append(f"{scan.relpath}: enhanced on its own, it has the same grid as {twin.relpath} "
                         "(a repeat of it, not another stack)")
            alone.append(scan)
        else:
            distinct.append(scan)
    if len(distinct) < 2:
        return None, distinct + alone
    smallest = min(in_plane_area(s) for s in distinct)
    reference = next(s for s in distinct if np.isclose(in_plane_area(s), smallest, rtol=1e-3))
    stacks = [reference]
    for scan in distinct:
        if scan is reference:
            continue
        overlap, sequence = fov_overlap(scan, reference), other_sequence(scan, reference)
        if sequence:
            notes.append(f"{scan.relpath}: enhanced on its own, {sequence} ({reference.relpath}): another "
                         "sequence, not another view of the same one")
            alone.append(scan)
        elif overlap < MIN_OVERLAP:
            notes.append(f"{scan.relpath}: enhanced on its own, its field of view shares only {overlap:.0%} with "
                         f"that of {reference.relpath}, the reference of its stacks (at least {MIN_OVERLAP:.0%})")
            alone.append(scan)
        else:
            stacks.append(scan)
    if len(stacks) < 2:
        return None, stacks + alone
    return StackGroup(tuple(stacks), naming.group_relpath([s.relpath for s in stacks])), alone
