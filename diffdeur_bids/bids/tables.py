"""BIDS tabular files (TSV): tab-separated, a header row, ``n/a`` for a missing value."""

from __future__ import annotations

from pathlib import Path

NA = "n/a"
# Per-scan SynthSeg volumes table: total intracranial first (label n/a), then one row per structure.
VOLUME_COLUMNS = ("label", "name", "volume_mm3")


def _cell(value) -> str:
    if value is None:
        return NA
    if isinstance(value, float):
        return f"{value:.10g}" if value == value else NA  # NaN is missing too
    text = str(value)
    if "\t" in text or "\n" in text:
        raise ValueError(f"a TSV cell cannot hold tabs or newlines: {text!r}")
    return text


def to_tsv(rows, columns) -> str:
    """Rows (dicts) as TSV text with the given columns, in that order."""
    lines = ["\t".join(columns)]
    lines += ["\t".join(_cell(row.get(c)) for c in columns) for row in rows]
    return "\n".join(lines) + "\n"


def read_tsv(path: str | Path) -> list[dict]:
    """Rows of a TSV file as dicts of strings (``n/a`` kept as written)."""
    lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, ln.split("\t"))) for ln in lines[1:]]
