"""The subject reports: ``OUTPUT_DIR/sub-XX.html`` with figures in ``sub-XX/figures/``, as fMRIPrep's.

Built after the workflow from what it wrote (``--reports-only`` rebuilds them alone): for each
scan, the input interpolated onto the output grid beside the enhanced image in three orientations
with one intensity window, a zoomed detail, the uncertainty map (``--num-samples`` > 1), the
SynthSeg labels as contours with the volume table (``--synthseg``), the sidecar's noise, timing,
device, settings and weights hash, and where interpolation and enhancement differ most. A scan
that failed gets its error and crash file instead. Figures are matplotlib PNGs; the page needs no
network (no script or style from elsewhere).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from . import atomic
from .bids import naming
from .bids.stacks import StackGroup
from .bids.tables import read_tsv
from .summary import unit_name

WINDOW_PERCENTILE = 99.5
DETAIL_SHARE = 0.4  # the zoomed detail: this share of the axial slice, about its centre


def pyplot():
    import os
    import tempfile

    # matplotlib keeps a font cache in $HOME unless told otherwise; diffdeur writes nothing outside the output,
    # the work dir and the temporary folder
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(tempfile.gettempdir(), f"diffdeur-matplotlib-{os.getuid()}"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _views(volume: np.ndarray, centre) -> list[np.ndarray]:
    """Sagittal, coronal and axial slices through ``centre`` (RAS+ arrays), superior / anterior up."""
    i, j, k = centre
    return [np.rot90(volume[i]), np.rot90(volume[:, j]), np.rot90(volume[:, :, k])]


def input_on_output_grid(source: Path, enhanced: nib.Nifti1Image) -> np.ndarray:
    """The raw scan (linear interpolation through both affines) on the enhanced image's grid."""
    from scipy.ndimage import affine_transform

    raw = nib.as_closest_canonical(nib.load(str(source)))
    data = np.asarray(raw.dataobj, dtype=np.float32)
    data = data[..., 0] if data.ndim == 4 else data
    to_raw = np.linalg.inv(raw.affine) @ enhanced.affine
    return affine_transform(data, to_raw[:3, :3], offset=to_raw[:3, 3], output_shape=enhanced.shape[:3], order=1,
                            mode="nearest")


def where_they_differ(before: np.ndarray, after: np.ndarray, affine: np.ndarray) -> str:
    """The "what to check" line: where the enhanced image departs most from the interpolated input."""
    from scipy.ndimage import gaussian_filter

    scale = max(float(np.percentile(after, WINDOW_PERCENTILE)), 1e-12)
    diff = gaussian_filter(np.abs(after - before) / scale, 2.0)
    voxel = np.unravel_index(int(np.argmax(diff)), diff.shape)
    world = affine @ np.r_[voxel, 1.0]
    return (f"Interpolation and enhancement differ most at voxel {tuple(int(v) for v in voxel)} "
            f"(RAS {world[0]:.0f}, {world[1]:.0f}, {world[2]:.0f} mm), by {diff.max():.0%} of the window: look there.")


def _window(image: np.ndarray) -> float:
    """The top of the grey-level window every panel of a scan shares."""
    return float(np.percentile(image[image > 0], WINDOW_PERCENTILE)) if (image > 0).any() else 1.0


def before_after_figure(before: np.ndarray, after: np.ndarray, path: Path) -> None:
    plt = pyplot()
    centre = [n // 2 for n in after.shape]
    vmax = _window(after)
    fig, axes = plt.subplots(2, 4, figsize=(12, 6))
    for row, (title, volume) in zip(axes, [("input, interpolated", before), ("enhanced", after)]):
        views = _views(volume, centre)
        axial = views[2]
        h, w = axial.shape
        dh, dw = int(h * DETAIL_SHARE / 2), int(w * DETAIL_SHARE / 2)
        detail = axial[h // 2 - dh: h // 2 + dh, w // 2 - dw: w // 2 + dw]
        for ax, view, name in zip(row, views + [detail], ("sagittal", "coronal", "axial", "axial, detail")):
            ax.imshow(view, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_title(f"{title}: {name}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    _save(fig, path)


def overlay_figure(after: np.ndarray, overlay: np.ndarray, path: Path, contours: bool) -> None:
    """The enhanced image with the uncertainty map (colour) or the labels (contours) over it."""
    plt = pyplot()
    centre = [n // 2 for n in after.shape]
    vmax = _window(after)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    for ax, base, top in zip(axes, _views(after, centre), _views(overlay, centre)):
        ax.imshow(base, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        if contours:
            for label in np.unique(top)[1:]:
                ax.contour(top == label, levels=[0.5], linewidths=0.4, colors=[plt.cm.tab20(int(label) % 20)])
        else:
            ax.imshow(np.ma.masked_less_equal(top, 0), cmap="hot", alpha=0.6, interpolation="nearest")
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    import io

    plt = pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    plt.close(fig)
    atomic.write_bytes(path, buffer.getvalue())


def scan_section(config, scan) -> dict:
    """Make one scan's figures; return what its section of the page shows."""
    out = Path(config.output_dir)
    rel = scan.relpath
    enhanced_path = out / naming.enhanced_relpath(rel)
    section = {"scan": unit_name(scan), "figures": [], "facts": {}, "check": ""}
    if not enhanced_path.exists():
        return section
    enhanced = nib.load(str(enhanced_path))
    after = np.asarray(enhanced.dataobj, dtype=np.float32)
    before = input_on_output_grid(scan.path, enhanced)
    figure = naming.figure_relpath(rel, "beforeafter")
    before_after_figure(before, after, out / figure)
    section["figures"].append((str(figure), "Input (interpolated onto the output grid) and enhanced image, "
                                            "one intensity window; right: a zoomed detail"))
    section["check"] = where_they_differ(before, after, enhanced.affine)
    std_path = out / naming.std_relpath(rel)
    if std_path.exists():
        figure = naming.figure_relpath(rel, "uncertainty")
        overlay_figure(after, np.asarray(nib.load(str(std_path)).dataobj, dtype=np.float32), out / figure, False)
        section["figures"].append((str(figure), "Uncertainty: the standard deviation across posterior samples"))
    seg_path = out / naming.synthseg_relpath(rel)
    if seg_path.exists():
        figure = naming.figure_relpath(rel, "synthseg")
        overlay_figure(after, np.asarray(nib.load(str(seg_path)).dataobj), out / figure, True)
        section["figures"].append((str(figure), "SynthSeg labels over the enhanced image"))
        volumes = out / naming.synthseg_volumes_relpath(rel)
        section["volumes"] = read_tsv(volumes) if volumes.exists() else []
    meta = json.loads((out / naming.sidecar_of(naming.enhanced_relpath(rel))).read_text())
    prov = meta.get("DiffDeuR", {})
    settings = prov.get("Settings", {})
    section["facts"] = {
        "noise (estimated, input units)": prov.get("NoiseSigma"), "noise estimator": prov.get("NoiseEstimator"),
        "SNR before / after": f"{prov.get('SNRInput', 0) or 0:.1f} / {prov.get('SNROutput', 0) or 0:.1f}",
        "time (s)": prov.get("EnhanceSeconds"), "device": f"{prov.get('Device')} ({prov.get('DeviceName')})",
        "settings": ", ".join(f"{k} {settings.get(k)}" for k in ("quality", "steps", "num_samples",
                                                                 "output_resolution", "seed")),
        "prior": f"{prov.get('Prior')} (sha256 {str(prov.get('WeightsSHA256'))[:16]}...)",
        "learned upsampler": (f"{prov.get('Upsampler')} (sha256 {str(prov.get('UpsamplerSHA256'))[:16]}...)"
                              if prov.get("Upsampler") else "not used"),
        "resolution": meta.get("Resolution"),
    }
    for stack in prov.get("Stacks", []):  # a fused group: how each stack was aligned to the reference
        source = str(stack.get("Source", "")).rpartition("/")[2]
        section["facts"][f"stack {source}"] = "reference" if stack.get("Reference") else (
            f"moved {stack.get('RotationDeg')} deg, {stack.get('TranslationMM')} mm from the reference "
            f"(refined during the fit); {stack.get('Explained', 0):.0%} of its signal explained by the reference")
    if prov.get("StackFusion"):
        section["check"] = ("Not fused: " + str(prov["StackFusion"].get("Reason")) + ". " + section["check"]).strip()
    return section


def report_units(config, units) -> list:
    """What gets a section: each scan, each fused group, and each stack of a group that was not fused."""
    out = Path(config.output_dir)
    sections = []
    for unit in units:
        if isinstance(unit, StackGroup) and not (out / naming.enhanced_relpath(unit.relpath)).exists() and \
                all((out / naming.enhanced_relpath(s)).exists() for s in unit.sources):
            sections += list(unit.stacks)
        else:
            sections.append(unit)
    return sections


def _section_html(section: dict, failure: str | None) -> str:
    parts = [f"<section><h2>{html.escape(section['scan'])}</h2>"]
    if failure:
        parts.append(f"<p class=\"error\">Failed: {html.escape(failure)}</p>")
    if section["check"]:
        parts.append(f"<p class=\"check\"><b>What to check.</b> {html.escape(section['check'])}</p>")
    for rel, caption in section["figures"]:
        src = html.escape(rel)
        parts.append(f"<figure><img src=\"{src}\" alt=\"{html.escape(caption)}\" "
                     "onload=\"this.dataset.loaded='1'\" onerror=\"this.dataset.broken='1'\">"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if section["facts"]:
        parts.append("<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                                         for k, v in section["facts"].items()) + "</table>")
    if section.get("volumes"):
        parts.append("<details><summary>SynthSeg volumes (mm³)</summary><table>" + "".join(
            f"<tr><td>{html.escape(r['name'])}</td><td>{html.escape(r['volume_mm3'])}</td></tr>"
            for r in section["volumes"]) + "</table></details>")
    return "\n".join(parts + ["</section>"])


def subject_page(subject: str, sections: list[str], crash_files: list[str]) -> str:
    crashes = "".join(f"<li><code>{html.escape(c)}</code></li>" for c in crash_files)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>diffdeur: sub-{html.escape(subject)}</title><style>body{{font-family:sans-serif;margin:2em;"
            "max-width:1100px}img{max-width:100%}table{border-collapse:collapse;font-size:13px}th,td{border:1px solid "
            "#ccc;padding:2px 8px;text-align:left}.error{color:#b00020;font-weight:bold}.check{background:#fff6d6;"
            f"padding:.4em}}</style></head><body><h1>diffdeur report: sub-{html.escape(subject)}</h1>\n"
            + "\n".join(sections)
            + (f"<h2>Crash reports</h2><ul>{crashes}</ul>" if crashes else "") + "\n</body></html>\n")


def write_reports(config, discovery, outcome) -> list[Path]:
    """One page per subject of ``discovery.scans`` (failed scans included), from what is in the output folder."""
    failures = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in outcome.failed if ": " in line}
    written = []
    for subject in sorted({s.subject for s in discovery.scans}):
        sections = []
        for scan in report_units(config, [s for s in discovery.scans if s.subject == subject]):
            sections.append(_section_html(scan_section(config, scan), failures.get(unit_name(scan))))
        crashes = [str(Path(c).relative_to(config.output_dir)) for c in outcome.crash_files
                   if f"/sub-{subject}/" in c and Path(c).is_relative_to(config.output_dir)]
        page = Path(config.output_dir) / naming.report_relpath(subject)
        atomic.write_text(page, subject_page(subject, sections, crashes))
        written.append(page)
    return written
