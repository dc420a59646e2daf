"""Real low-field scans against 3 T: the nine 0.055 T / 3 T pairs, run through the app as a user would.

    python benchmarks/real_lf.py --quality fast default best --out benchmarks/results/real_lf
    python benchmarks/real_lf.py --quality default --pairs hku_fig6A_T1w      # one pair, quicker

Each 0.055 T stack (256 x 256 x 4, stored without a voxel size) is written to a BIDS dataset with
the voxel size the scanner's publication gives (0.86 x 0.86 mm in-plane on the stored, zero-filled
matrix, 5 mm slices; ``--pixel-mm``, ``--slice-mm``) and ``MagneticFieldStrength`` 0.055. The app
enhances it (``--device cpu``, output on the input's in-plane grid, ``--output-resolution``
``--pixel-mm``). Each output is averaged back over each 5 mm slice, so that it is compared slice for
slice. For each slice, one 2D affine transform from the input to its 3 T slice is estimated by
mutual information (SimpleITK) and applied to the input and to every method's result alike; they
are scored against the 3 T slice inside its head mask, after a least-squares intensity fit:
SSIM, PSNR (3 T scaled to [0, 1]) and normalised mutual information. Baselines: the input, a
Gaussian filter (``--gaussian-px``) and BM3D (when the ``bm3d`` package is installed). The data
never leave ``../shared/data``; results and figures go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import common  # noqa: E402

FIELD_T = 0.055
NMI_BINS = 64


# --------------------------------------------------------------------------- data and app


def load_pairs(data_dir: Path, names=None) -> list[dict]:
    listed = json.loads((data_dir / "pairs.json").read_text())
    pairs = []
    for entry in listed:
        if names and entry["name"] not in names:
            continue
        arrays = np.load(data_dir / f"{entry['name']}.npz")
        patient = entry["name"].split("_")[1].replace("fig", "hku")  # hku_fig6A_T1w -> hku6A
        pairs.append({"name": entry["name"], "contrast": entry["contrast"], "subject": patient,
                      "lf": arrays["lf"].astype(np.float32), "hf": arrays["hf"].astype(np.float32)})
    if not pairs:
        raise SystemExit(f"no pair found in {data_dir} (names {names})")
    return pairs


def lf_affine(pixel_mm: float, slice_mm: float) -> np.ndarray:
    """Stored (row, column, slice) axes taken as RAS+, with the assumed voxel size."""
    return np.diag([pixel_mm, pixel_mm, slice_mm, 1.0])


def build_bids(pairs, root: Path, pixel_mm: float, slice_mm: float) -> dict:
    """One subject per patient, one scan per contrast; returns pair name -> scan relpath."""
    from diffdeur_bids.demo import write_raw_description, write_scan

    write_raw_description(root, "HKU 0.055 T pairs", "0.055 T head scans (CC0), for diffdeur's real-scan benchmark.")
    relpaths = {}
    for pair in pairs:
        rel = f"sub-{pair['subject']}/anat/sub-{pair['subject']}_{pair['contrast']}.nii.gz"
        write_scan(root, rel, pair["lf"], lf_affine(pixel_mm, slice_mm),
                   {"MagneticFieldStrength": FIELD_T, "Manufacturer": "HKU", "ManufacturersModelName": "0.055 T"})
        relpaths[pair["name"]] = rel
    (root / "participants.tsv").write_text("participant_id\n" + "".join(
        f"sub-{s}\n" for s in sorted({p["subject"] for p in pairs})))
    return relpaths


def run_app(bids: Path, out: Path, work: Path, quality: str, resolution: float, threads: int,
            app_pythonpath: str | None = None) -> float:
    """The app as a user runs it (``app_pythonpath``: another checkout, to compare versions); returns the wall time."""
    import os

    env = {**os.environ, **({"PYTHONPATH": app_pythonpath} if app_pythonpath else {})}
    cmd = [sys.executable, "-m", "diffdeur_bids", str(bids), str(out), "participant", "--device", "cpu",
           "--quality", quality, "--output-resolution", f"{resolution:g}", "--skip-bids-validation",
           "-w", str(work), "--nprocs", str(threads), "--omp-nthreads", "1"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"diffdeur failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def enhanced_on_lf_slices(out: Path, rel: str, lf_shape, lf_aff) -> tuple[np.ndarray, dict]:
    """The app's output averaged over each LF voxel (box profile), so it sits on the input's grid."""
    import nibabel as nib
    from scipy.ndimage import map_coordinates

    from diffdeur_bids.bids import naming

    img = nib.load(str(out / naming.enhanced_relpath(rel)))
    data = np.asarray(img.dataobj, dtype=np.float32)
    meta = json.loads((out / naming.sidecar_of(naming.enhanced_relpath(rel))).read_text())
    to_out = np.linalg.inv(img.affine) @ lf_aff  # LF index -> output index
    # sample a fine grid inside each LF voxel and average: the mean of the output over the voxel
    sub = 8
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    result = np.zeros(lf_shape, np.float32)
    ii, jj, kk = np.meshgrid(*[np.arange(n, dtype=float) for n in lf_shape], indexing="ij")
    for dz in offsets:
        pts = np.stack([ii, jj, kk + dz, np.ones_like(ii)], 0).reshape(4, -1)
        vox = (to_out @ pts)[:3]
        result += map_coordinates(data, vox, order=1, mode="nearest").reshape(lf_shape)
    return result / sub, meta.get("DiffDeuR", {})


# --------------------------------------------------------------------------- registration and scores


def head_mask(image: np.ndarray) -> np.ndarray:
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    mask = image > 0.5 * threshold_otsu(image)
    mask = ndimage.binary_closing(mask, iterations=3)
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n > 1:
        mask = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    return ndimage.binary_erosion(mask, iterations=2)


def register_slice(moving: np.ndarray, fixed: np.ndarray):
    """A 2D affine (SimpleITK, Mattes mutual information) taking the LF slice onto the 3 T slice."""
    import SimpleITK as sitk

    fix = sitk.GetImageFromArray(fixed.astype(np.float32))
    mov = sitk.GetImageFromArray(moving.astype(np.float32))
    scale = np.sqrt(head_mask(fixed).sum() / max(head_mask(moving).sum(), 1))  # pixels of the 3 T per LF pixel
    mov.SetSpacing((float(scale), float(scale)))
    init = sitk.CenteredTransformInitializer(fix, mov, sitk.AffineTransform(2), sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.25, seed=0)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=300,
                                                gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SetInitialTransform(init, inPlace=False)
    transform = reg.Execute(fix, mov)
    return transform, fix, float(scale)


def resample_to(transform, fix, scale: float, moving: np.ndarray) -> np.ndarray:
    import SimpleITK as sitk

    mov = sitk.GetImageFromArray(moving.astype(np.float32))
    mov.SetSpacing((scale, scale))
    out = sitk.Resample(mov, fix, transform, sitk.sitkLinear, float("nan"))
    return sitk.GetArrayFromImage(out)


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information (H(A) + H(B)) / H(A, B): 1 for independent, 2 for identical."""
    hist, _, _ = np.histogram2d(a, b, bins=NMI_BINS)
    p = hist / hist.sum()
    entropy = lambda q: -np.sum(q[q > 0] * np.log(q[q > 0]))  # noqa: E731
    return float((entropy(p.sum(0)) + entropy(p.sum(1))) / entropy(p))


def score_slice(pred: np.ndarray, hf: np.ndarray, mask: np.ndarray) -> dict:
    from diffdeur_bids.evaluation.metrics import align_intensity, bounding_box, psnr, ssim

    mask = mask & np.isfinite(pred)
    gt = np.clip(hf / np.percentile(hf[mask], 99.5), 0, 1)
    aligned = align_intensity(np.nan_to_num(pred), gt, mask)
    box = bounding_box(mask)
    gt_b, pred_b = np.where(mask, gt, 0)[box], np.where(mask, aligned, 0)[box]
    return {"ssim": ssim(pred_b, gt_b), "psnr": psnr(aligned[mask], gt[mask]), "nmi": nmi(aligned[mask], gt[mask])}


# --------------------------------------------------------------------------- baselines


def gaussian_filter_slices(lf: np.ndarray, sigma_px: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(lf, (sigma_px, sigma_px, 0))


def bm3d_slices(lf: np.ndarray) -> np.ndarray | None:
    """BM3D per slice at the noise level of the air around the head (Rayleigh mode)."""
    try:
        import bm3d
    except ImportError:
        return None
    from diffdeur_bids.enhance.noise import rayleigh_sigma

    sigma = rayleigh_sigma(lf)
    return np.stack([bm3d.bm3d(lf[..., z], sigma_psd=sigma) for z in range(lf.shape[2])], -1).astype(np.float32)


# --------------------------------------------------------------------------- the 64 mT volume (no partner)


def invented_edges(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> float:
    """Share of the output's strong edges (top 5% of the gradient inside ``mask``) with no input edge
    (top 20% of the input's gradient, after a 1-voxel Gaussian against its noise) within 2 voxels."""
    from scipy import ndimage

    def gradient(x, sigma):
        return ndimage.gaussian_gradient_magnitude(x.astype(np.float64), sigma)

    g_out, g_in = gradient(after, 0.5), gradient(before, 1.0)
    edges_out = (g_out > np.percentile(g_out[mask], 95)) & mask
    edges_in = ndimage.binary_dilation((g_in > np.percentile(g_in[mask], 80)) & mask, iterations=2)
    return float((edges_out & ~edges_in).sum() / max(edges_out.sum(), 1))


def run_64mt(path: Path, quality: str, threads: int, out_dir: Path, app_pythonpath=None) -> dict:
    """Enhance the 64 mT volume as a user would, at its own voxel size; figure and invented-edges check."""
    import nibabel as nib

    from diffdeur_bids.bids import naming
    from diffdeur_bids.demo import write_raw_description, write_scan

    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asarray(img.dataobj, dtype=np.float32)
    voxel = float(np.sqrt((img.affine[:3, :3] ** 2).sum(0)).min())
    with tempfile.TemporaryDirectory() as tmp:
        bids, rel = Path(tmp) / "bids", "sub-64mT/anat/sub-64mT_T1w.nii.gz"
        write_raw_description(bids, "64 mT", "One 64 mT scan for diffdeur's real-scan benchmark.")
        write_scan(bids, rel, data, img.affine, {"MagneticFieldStrength": 0.064})
        seconds = run_app(bids, Path(tmp) / "out", Path(tmp) / "work", quality, voxel, threads, app_pythonpath)
        out = nib.load(str(Path(tmp) / "out" / naming.enhanced_relpath(rel)))
        enhanced = np.asarray(out.dataobj, dtype=np.float32)
    if enhanced.shape != data.shape:
        raise SystemExit(f"64 mT: output {enhanced.shape} is not on the input grid {data.shape}")
    mask = data > 0.1 * np.percentile(data[data > 0], 99.5)
    share = invented_edges(data, enhanced, mask)
    figure_64mt(data, enhanced, mask, out_dir / "real_lf_64mT.png", quality)
    return {"quality": quality, "voxel_mm": voxel, "app_seconds": seconds, "invented_edge_share": share}


def figure_64mt(before, after, mask, path: Path, quality: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centre = [n // 2 for n in before.shape]
    fig, axes = plt.subplots(2, 3, figsize=(9, 6.4))
    vmax = np.percentile(before[mask], 99.5)
    for row, (title, img) in zip(axes, [("64 mT input", before), (f"diffdeur-{quality}", after)]):
        views = [img[centre[0]].T, img[:, centre[1]].T, img[:, :, centre[2]].T]
        for ax, view, name in zip(row, views, ("sagittal", "coronal", "axial")):
            ax.imshow(view, cmap="gray", origin="lower", vmin=0, vmax=vmax)
            ax.set_title(f"{title}, {name}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    common.save_figure(fig, path)


# --------------------------------------------------------------------------- the run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=common.REPO.parent / "shared" / "data" / "lf_pairs")
    p.add_argument("--pairs", nargs="*", help="pair names (default: all nine)")
    p.add_argument("--quality", nargs="+", default=["fast", "default", "best"])
    p.add_argument("--pixel-mm", type=float, default=0.86, help="assumed in-plane pixel of the stored 256 x 256 matrix")
    p.add_argument("--slice-mm", type=float, default=5.0, help="assumed slice thickness")
    p.add_argument("--gaussian-px", type=float, default=0.7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--app-pythonpath", help="run the app from another checkout (e.g. an earlier commit) to compare")
    p.add_argument("--noise-only", action="store_true",
                   help="print each scan's noise by every estimator, and the slice-to-slice intensity drift against 3 T, and stop")
    p.add_argument("--lf64", type=Path, default=None, metavar="NIFTI",
                   help="also enhance this unpaired 64 mT volume (last --quality): figure and invented-edges check")
    p.add_argument("--lf64-only", action="store_true", help="only the 64 mT volume (no pairs)")
    args = p.parse_args()
    args.out = args.out or common.default_out_dir() / "real_lf"
    if args.lf64_only:
        if not args.lf64:
            p.error("--lf64-only needs --lf64 NIFTI")
        args.out.mkdir(parents=True, exist_ok=True)
        lf64 = run_64mt(args.lf64, args.quality[-1], args.threads, args.out, args.app_pythonpath)
        common.write_json(args.out / "real_lf_64mT.json", {**lf64, "provenance": common.provenance("cpu", args.threads)})
        print(f"64 mT: {lf64['invented_edge_share']:.1%} of the output's strong edges have no input edge nearby "
              f"({lf64['app_seconds']:.0f} s)")
        return
    pairs = load_pairs(args.data, args.pairs)
    aff = lf_affine(args.pixel_mm, args.slice_mm)
    if args.noise_only:
        print(noise_table(pairs))
        print()
        print(drift_table(pairs))
        return

    methods = {pair["name"]: {"input": pair["lf"], f"gaussian_{args.gaussian_px:g}px":
                              gaussian_filter_slices(pair["lf"], args.gaussian_px)} for pair in pairs}
    for pair in pairs:
        bm = bm3d_slices(pair["lf"])
        if bm is not None:
            methods[pair["name"]]["bm3d"] = bm
    timings, provenance = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        bids = Path(tmp) / "bids"
        relpaths = build_bids(pairs, bids, args.pixel_mm, args.slice_mm)
        for quality in args.quality:
            out = Path(tmp) / f"out-{quality}"
            timings[quality] = run_app(bids, out, Path(tmp) / f"work-{quality}", quality, args.pixel_mm, args.threads,
                                       args.app_pythonpath)
            for pair in pairs:
                image, prov = enhanced_on_lf_slices(out, relpaths[pair["name"]], pair["lf"].shape, aff)
                methods[pair["name"]][f"diffdeur-{quality}"] = image
                provenance.setdefault(pair["name"], {})[quality] = {
                    k: prov.get(k) for k in ("NoiseSigma", "NoiseEstimator", "NoiseSigmaAir", "NoiseSigmaTissue",
                                             "AcquiredShape", "AcquiredVoxelSize", "EnhanceSeconds", "WeightsSHA256")}

    rows = []
    registered = {}
    for pair in pairs:
        per_slice = []
        for z in range(pair["lf"].shape[2]):
            transform, fix, scale = register_slice(pair["lf"][..., z], pair["hf"][..., z])
            mask = head_mask(pair["hf"][..., z])
            moved = {m: resample_to(transform, fix, scale, v[..., z]) for m, v in methods[pair["name"]].items()}
            per_slice.append({m: score_slice(v, pair["hf"][..., z], mask) for m, v in moved.items()})
            registered[(pair["name"], z)] = (moved, pair["hf"][..., z], mask)
        for method in methods[pair["name"]]:
            mean = {k: float(np.mean([s[method][k] for s in per_slice])) for k in ("ssim", "psnr", "nmi")}
            rows.append({"pair": pair["name"], "contrast": pair["contrast"], "method": method, **mean,
                         "ssim_per_slice": [s[method]["ssim"] for s in per_slice]})
            print(f"{pair['name']:18s} {method:18s} SSIM {mean['ssim']:.3f} PSNR {mean['psnr']:.2f} NMI {mean['nmi']:.4f}",
                  flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    lf64 = run_64mt(args.lf64, args.quality[-1], args.threads, args.out, args.app_pythonpath) if args.lf64 else None
    if lf64:
        print(f"64 mT: {lf64['invented_edge_share']:.1%} of the output's strong edges have no input edge nearby", flush=True)
    report = {"lf64": lf64, "provenance": common.provenance("cpu", args.threads), "assumed_voxel_mm": [args.pixel_mm, args.pixel_mm,
              args.slice_mm], "app_seconds": timings, "noise": provenance, "rows": rows}
    common.write_json(args.out / "real_lf.json", common.finite_or_none(report))
    common.write_text(args.out / "real_lf.md", summary_markdown(rows, args))
    figure(registered, pairs, args.out / "real_lf.png", [f"diffdeur-{q}" for q in args.quality][-1])
    print(summary_markdown(rows, args))


def noise_table(pairs) -> str:
    """The noise estimates of each 0.055 T scan, in its stored units: air, wavelet detail of the stored
    grid, and the tissue's detail on the acquired grid (where ``enhance`` estimates it)."""
    from diffdeur_bids.enhance.acquisition import to_acquired_grid
    from diffdeur_bids.enhance.noise import rayleigh_sigma, tissue_sigma, wavelet_mad_sigma

    lines = ["| pair | air (Rayleigh mode) | finest wavelet detail, stored grid | air / wavelet | acquired grid | "
             "tissue detail, acquired grid | tissue / air |", "|---|---|---|---|---|---|---|"]
    for pair in pairs:
        air, wavelet = rayleigh_sigma(pair["lf"]), wavelet_mad_sigma(pair["lf"])
        acquired, _, _ = to_acquired_grid(pair["lf"], np.eye(4), air)
        tissue = tissue_sigma(acquired, air, (0, 1))
        lines.append(f"| {pair['name']} | {air:.4f} | {wavelet:.4f} | {air / wavelet:.1f} | "
                     f"{' x '.join(map(str, acquired.shape[:2]))} | {tissue:.4f} | {tissue / air:.2f} |")
    return "\n".join(lines)


def drift_table(pairs) -> str:
    """Per slice, the ratio of the 0.055 T head's median to the 3 T head's, over its mean across the slices:
    how much the two scanners' intensities drift apart from slice to slice."""
    lines = ["| pair | slice 1 | slice 2 | slice 3 | slice 4 | spread |", "|---|---|---|---|---|---|"]
    for pair in pairs:
        ratios = np.array([np.median(pair["lf"][..., z][head_mask(pair["lf"][..., z])])
                           / np.median(pair["hf"][..., z][head_mask(pair["hf"][..., z])]) for z in range(pair["lf"].shape[2])])
        r = ratios / ratios.mean()
        lines.append(f"| {pair['name']} | " + " | ".join(f"{v:.3f}" for v in r) + f" | {r.max() - r.min():.3f} |")
    return "\n".join(lines)


def summary_markdown(rows, args) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["pair"], r["method"]): r for r in rows}
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    lines = [f"Assumed voxel {args.pixel_mm:g} x {args.pixel_mm:g} x {args.slice_mm:g} mm; scores against 3 T after a "
             "per-slice affine registration (mean over the 4 slices).", "",
             "| method | mean SSIM | mean PSNR | mean NMI | SSIM > input | NMI > input | worst SSIM change |",
             "|---|---|---|---|---|---|---|"]
    for m in methods:
        d_ssim = [by[(p, m)]["ssim"] - by[(p, "input")]["ssim"] for p in pairs]
        d_nmi = [by[(p, m)]["nmi"] - by[(p, "input")]["nmi"] for p in pairs]
        lines.append(f"| {m} | {np.mean([by[(p, m)]['ssim'] for p in pairs]):.3f} | "
                     f"{np.mean([by[(p, m)]['psnr'] for p in pairs]):.2f} | {np.mean([by[(p, m)]['nmi'] for p in pairs]):.4f} | "
                     f"{sum(d > 0 for d in d_ssim)}/{len(pairs)} | {sum(d > 0 for d in d_nmi)}/{len(pairs)} | "
                     f"{min(d_ssim):+.3f} |")
    lines += ["", "Mean SSIM per contrast:", "", "| method | " + " | ".join(sorted({r['contrast'] for r in rows})) + " |",
              "|---" * (1 + len({r['contrast'] for r in rows})) + "|"]
    for m in methods:
        cells = [np.mean([r["ssim"] for r in rows if r["method"] == m and r["contrast"] == c])
                 for c in sorted({r["contrast"] for r in rows})]
        lines.append(f"| {m} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    slices = len(rows[0]["ssim_per_slice"])
    lines += ["", "SSIM change over the input per slice (mean over the pairs; the first and last slices have one "
              "neighbour):", "", "| method | " + " | ".join(f"slice {z + 1}" for z in range(slices)) + " |",
              "|---" * (1 + slices) + "|"]
    for m in methods[1:]:
        cells = [np.mean([by[(p, m)]["ssim_per_slice"][z] - by[(p, "input")]["ssim_per_slice"][z] for p in pairs])
                 for z in range(slices)]
        lines.append(f"| {m} | " + " | ".join(f"{v:+.3f}" for v in cells) + " |")
    return "\n".join(lines) + "\n"


def figure(registered, pairs, path: Path, method: str) -> None:
    """Input | DiffDeuR | 3 T, one slice (the second) per contrast of the first patient, all on the 3 T grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [p for p in pairs if p["subject"] == pairs[0]["subject"]]
    fig, axes = plt.subplots(len(shown), 3, figsize=(9, 3.2 * len(shown)), squeeze=False)
    for row, pair in zip(axes, shown):
        moved, hf, mask = registered[(pair["name"], 1)]
        for ax, (title, img) in zip(row, [("0.055 T input", moved["input"]), (method, moved[method]), ("3 T", hf)]):
            finite = np.nan_to_num(img)
            ax.imshow(finite, cmap="gray", vmin=0, vmax=np.percentile(finite[mask], 99.5))
            ax.set_title(f"{pair['contrast']}: {title}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    common.save_figure(fig, path)


if __name__ == "__main__":
    main()
