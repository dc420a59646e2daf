"""The group level: one table and one page over every image the participant runs wrote, recomputing nothing.

As MRIQC's group level does, this only reads: each ``*_desc-enhanced_<suffix>.json`` sidecar (and
the SynthSeg volumes table beside it, when there is one) becomes one row of
``OUTPUT_DIR/group_<suffix>.tsv`` (with a JSON sidecar describing each column), and
``OUTPUT_DIR/group.html`` shows the distributions with the outlying images named.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from . import atomic
from .bids import naming
from .bids.tables import read_tsv, to_tsv
from .errors import EmptySelectionError

COLUMNS = {  # name: description (units)
    "participant_id": "Subject, as sub-<label>",
    "session_id": "Session, as ses-<label> (n/a without sessions)",
    "source": "The raw scan, relative to the input dataset (of a fused image: its reference stack)",
    "stacks": "Raw stacks fused into the image (1: a scan enhanced on its own)",
    "enhanced": "The enhanced image, relative to this dataset",
    "field_strength_t": "MagneticFieldStrength of the raw scan (tesla)",
    "input_shape": "Voxels of the raw scan, x by y by z",
    "input_voxel_mm": "Voxel size of the raw scan (mm)",
    "output_shape": "Voxels of the enhanced image",
    "output_voxel_mm": "Voxel size of the enhanced image (mm)",
    "noise_input": "Noise standard deviation of the raw scan as the method estimated it (raw units)",
    "noise_output": "Noise standard deviation of the enhanced image, from its finest wavelet detail (raw units)",
    "snr_input": "Mean of the head over noise_input",
    "snr_output": "Mean of the head over noise_output",
    "seconds": "Time the enhancement took (s)",
    "device": "Device it ran on",
    "tiv_mm3": "SynthSeg's total intracranial volume (mm3; n/a without --synthseg)",
}
OUTLIER_COLUMNS = ("snr_input", "snr_output", "noise_input", "seconds", "tiv_mm3")
OUTLIER_IQR = 1.5  # beyond the quartiles by this many interquartile ranges


def _x(values) -> str:
    return "x".join(f"{v:g}" for v in values) if values else "n/a"


def image_row(output_dir: Path, sidecar: Path) -> dict:
    meta = json.loads(sidecar.read_text())
    prov = meta.get("DiffDeuR", {})
    source = str(meta.get("Sources", ["n/a"])[0]).removeprefix("bids:raw:")
    image = sidecar.with_name(sidecar.name.removesuffix(".json") + ".nii.gz")
    name = naming.SourceName.parse(image.name)
    row = {
        "participant_id": f"sub-{name.subject}", "session_id": f"ses-{name.session}" if name.session else "n/a",
        "source": source, "stacks": len(meta.get("Sources", [])) or "n/a",
        "enhanced": str(image.relative_to(output_dir)),
        "field_strength_t": meta.get("MagneticFieldStrength", "n/a"),
        "input_shape": _x(prov.get("InputShape")),
        # "4x4x4 mm (input 4x4x8 mm)": the sidecar's Resolution holds the raw voxel size
        "input_voxel_mm": meta.get("Resolution", "").rpartition("input ")[2].removesuffix(" mm)") or "n/a",
        "output_shape": _x(prov.get("OutputShape")), "output_voxel_mm": _x(prov.get("OutputVoxelSize")),
        "noise_input": prov.get("NoiseSigma", "n/a"), "noise_output": prov.get("NoiseSigmaOutput", "n/a"),
        "snr_input": prov.get("SNRInput", "n/a"), "snr_output": prov.get("SNROutput", "n/a"),
        "seconds": prov.get("EnhanceSeconds", "n/a"), "device": prov.get("Device", "n/a"),
        "tiv_mm3": "n/a",
    }
    volumes = output_dir / naming.synthseg_volumes_relpath(image.relative_to(output_dir))
    if volumes.is_file():
        for r in read_tsv(volumes):
            if r.get("label") in ("", "n/a", None):
                row["tiv_mm3"] = r["volume_mm3"]
            else:
                row[f"volume_{r['name']}_mm3"] = r["volume_mm3"]
    return row


def collect(output_dir: Path, participant_label=(), session_label=()) -> dict[str, list[dict]]:
    """Rows per suffix, from every enhanced image's sidecar (in BIDS order)."""
    rows: dict[str, list[dict]] = {}
    for sidecar in sorted(Path(output_dir).glob("sub-*/**/anat/*_desc-enhanced_*.json")):
        name = naming.SourceName.parse(sidecar.name.removesuffix(".json") + ".nii.gz")
        if participant_label and name.subject not in participant_label:
            continue
        if session_label and name.session not in session_label:
            continue
        rows.setdefault(name.suffix, []).append(image_row(Path(output_dir), sidecar))
    return rows


def outliers(rows: list[dict]) -> dict[int, list[str]]:
    """Row index -> the columns where it lies beyond the quartiles by ``OUTLIER_IQR`` interquartile ranges."""
    found: dict[int, list[str]] = {}
    for column in OUTLIER_COLUMNS:
        values = np.array([float(r[column]) if r.get(column) not in (None, "n/a") else np.nan for r in rows])
        if np.isfinite(values).sum() < 4:
            continue
        q1, q3 = np.nanpercentile(values, [25, 75])
        spread = OUTLIER_IQR * (q3 - q1)
        for i, v in enumerate(values):
            if np.isfinite(v) and (v < q1 - spread or v > q3 + spread):
                found.setdefault(i, []).append(column)
    return found


def _figure(rows_by_suffix: dict[str, list[dict]]) -> str:
    """The distributions (one panel per quantity, one strip of points per suffix), as an inline PNG."""
    from .reports import pyplot

    plt = pyplot()

    quantities = [c for c in ("snr_input", "snr_output", "noise_input", "seconds")]
    fig, axes = plt.subplots(1, len(quantities), figsize=(3.2 * len(quantities), 3.0))
    for ax, q in zip(axes, quantities):
        for k, (suffix, rows) in enumerate(rows_by_suffix.items()):
            v = [float(r[q]) for r in rows if r.get(q) not in (None, "n/a")]
            ax.scatter(np.full(len(v), k) + np.linspace(-0.15, 0.15, len(v)), v, s=14)
        ax.set_xticks(range(len(rows_by_suffix)), list(rows_by_suffix))
        ax.set_title(q, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def group_page(rows_by_suffix: dict[str, list[dict]]) -> str:
    """One self-contained page (no external resource): the figure and a table per suffix, outliers marked."""
    parts = ["<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>diffdeur: group report</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:2px 6px}tr.outlier{background:#fde2e1}</style></head><body>",
             "<h1>diffdeur group report</h1>",
             f"<img alt=\"distributions\" src=\"data:image/png;base64,{_figure(rows_by_suffix)}\">"]
    for suffix, rows in rows_by_suffix.items():
        flagged = outliers(rows)
        columns = list(COLUMNS)
        parts.append(f"<h2>{html.escape(suffix)}: {len(rows)} image(s), {len(flagged)} outlier(s)</h2><table><tr>"
                     + "".join(f"<th>{c}</th>" for c in columns) + "<th>outlying in</th></tr>")
        for i, r in enumerate(rows):
            cls = " class=\"outlier\"" if i in flagged else ""
            parts.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(r.get(c, 'n/a')))}</td>" for c in columns)
                         + f"<td>{', '.join(flagged.get(i, []))}</td></tr>")
        parts.append("</table>")
    return "\n".join(parts + ["</body></html>"]) + "\n"


def run_group(output_dir: Path, participant_label=(), session_label=()) -> list[Path]:
    """Write ``group_<suffix>.tsv`` (+ ``.json``) and ``group.html``; exit 18 when there is nothing to aggregate."""
    output_dir = Path(output_dir)
    rows_by_suffix = collect(output_dir, participant_label, session_label)
    if not rows_by_suffix:
        raise EmptySelectionError(f"no enhanced image in {output_dir} to aggregate"
                                  + (" for the selected participants/sessions" if participant_label or session_label else "")
                                  + ": run the 'participant' level first")
    written = []
    for suffix, rows in rows_by_suffix.items():
        columns = list(COLUMNS) + sorted({k for r in rows for k in r} - set(COLUMNS))
        tsv = output_dir / f"group_{suffix}.tsv"
        atomic.write_text(tsv, to_tsv(rows, columns))
        described = {c: {"Description": COLUMNS.get(c) or f"SynthSeg volume of {c[7:-4]} (mm3)"} for c in columns}
        atomic.write_json(tsv.with_suffix(".json"), described)
        written.append(tsv)
    page = output_dir / "group.html"
    atomic.write_text(page, group_page(rows_by_suffix))
    return written + [page]
