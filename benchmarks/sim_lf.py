"""The sim-lf-v1 benchmark: every method on the same simulated low-field volumes.

Quality (PSNR, SSIM, LPIPS, scored exactly by ``diffdeur_bids.evaluation.metrics.score_volume``), wall time
and peak memory per volume and method, on the fixed validation split of ``../shared/data/hf``
(never trained on). Each method run happens in its own freshly spawned process so its peak
resident memory is its own. See ``../shared/design/benchmark-protocol.md`` and benchmarks/README.md.

    python benchmarks/sim_lf.py --device cpu --threads 2            # the full run
    python benchmarks/sim_lf.py --mni --crop 48 --methods linear diffdeur-fast --steps 2   # a smoke run

Outputs (written atomically) in ``--out``: ``sim_lf.json`` (everything), ``sim_lf.md`` (tables),
``sim_lf_slices.png`` (example slices and error maps) and ``sim_lf_quality_time.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import common  # noqa: E402

# The fixed validation split (kept out of the prior's training), paths relative to --data.
VALIDATION_SPLIT = {
    "2mm": [
        "hf/ixi_2mm/IXI132-HH-1415_T1w.nii.gz",
        "hf/ixi_2mm/IXI162-HH-1548_T1w.nii.gz",
        "hf/ixi_2mm/IXI174-HH-1571_T1w.nii.gz",
        "hf/ixi_2mm/IXI206-HH-1650_T1w.nii.gz",
    ],
    "1mm": [
        "hf/1mm/cstar_stroke_T1w_brain_1mm.nii.gz",
        "hf/1mm/cstar_stroke_T2w_brain_1mm.nii.gz",
        "hf/1mm/cstar_stroke_FLAIR_brain_1mm.nii.gz",
    ],
}
VALIDATION_SPLIT["stacks"] = VALIDATION_SPLIT["1mm"]  # sim-lf-v2: three moved stacks of each 1 mm volume
MNI_RESOLUTION = {"2mm": 2, "1mm": 1, "stacks": 1}  # the template stands in for each track's HF data
# the stacks track: the reference stack alone (plain names), all three stacks interpolated through their headers and
# averaged (no motion correction), and the methods that fuse the stacks ("@fused")
STACK_METHODS = ["linear", "cubic", "mean_of_stacks", "inr@fused", "diffdeur-default", "diffdeur-default@fused"]
FUSED = "@fused"
DEFAULT_METHODS = ["linear", "cubic", "cubic_bm3d", "inr", "dps", "prior_cf",
                   "diffdeur-fast", "diffdeur-default", "diffdeur-best"]
DEFAULT_DATA = common.REPO.parent / "shared" / "data"
# sim-lf-v1 for the tracks 2mm and 1mm, sim-lf-v2 for the stacks track (protocol_of)


def protocol_of(tracks) -> str:
    versions = (["sim-lf-v1"] if set(tracks) - {"stacks"} else []) + (["sim-lf-v2"] if "stacks" in tracks else [])
    return " + ".join(versions)


# --------------------------------------------------------------------------- command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding hf/ (default: %(default)s)")
    p.add_argument("--mni", action="store_true", help="use nilearn's MNI152 template even if --data exists")
    p.add_argument("--tracks", nargs="+", default=["2mm", "1mm"], choices=sorted(VALIDATION_SPLIT))
    p.add_argument("--volumes", type=int, default=None, help="first N volumes per track (default: all)")
    p.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                   help="only the volumes whose name contains one of these (e.g. T2w FLAIR)")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                   help="method names; diffdeur-<preset> picks a quality preset (default: all)")
    p.add_argument("--stack-methods", nargs="+", default=STACK_METHODS,
                   help="the stacks track's rows: NAME on the reference stack alone, NAME@fused on all three, "
                        "mean_of_stacks (default: %(default)s)")
    p.add_argument("--dps-steps", type=int, default=50, help="DPS steps (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="override the preset's prior steps (smoke runs)")
    p.add_argument("--crop", type=int, default=None, help="crop each HF volume to N voxels per axis (smoke runs)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per method run")
    p.add_argument("--learned-upsampling", choices=["on", "off"], default=None,
                   help="pass the start through the learned upsampler, or not (default: the settings' default)")
    p.add_argument("--upsampler", type=Path, default=None, help="upsampler weights under trial (default: the shipped ones)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="noise draw of the simulation and the methods' seed")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: benchmarks/results/<date>)")
    args = p.parse_args(argv)
    check_methods(p, args.methods + [m.removesuffix(FUSED) for m in args.stack_methods if m != "mean_of_stacks"])
    args.out = args.out or common.default_out_dir()
    return args


def check_methods(parser, names) -> None:
    """Refuse an unknown method or preset before any (long) work starts."""
    from diffdeur_bids.enhance import METHODS, PRESETS

    for name in names:
        method, preset = common.parse_method(name)
        if method not in METHODS or preset not in PRESETS:
            parser.error(f"unknown method {name!r}: use one of {', '.join(METHODS)}, optionally -{'/-'.join(PRESETS)}")


def runnable_methods(names, notes) -> list[str]:
    """The methods that can run here; cubic_bm3d needs the optional (non-commercial) bm3d package."""
    keep = []
    for name in names:
        if common.parse_method(name)[0] == "cubic_bm3d" and importlib.util.find_spec("bm3d") is None:
            notes.append("cubic_bm3d skipped: the optional bm3d package is not installed (pip install 'diffdeur[bm3d]')")
            continue
        keep.append(name)
    return keep


# --------------------------------------------------------------------------- data


def volume_list(args, notes) -> dict[str, list[dict]]:
    """Per track, the HF volumes to degrade: the validation split, or the MNI template without data."""
    use_mni = args.mni or not args.data.is_dir()
    if use_mni:
        why = "--mni was given" if args.mni else f"{args.data} is absent"
        notes.append(f"MNI fallback ({why}): each track runs on nilearn's MNI152 template, NOT the validation "
                     "split; figures are for trying the harness, not for reporting")
    vols = {}
    for track in args.tracks:
        if use_mni:
            r = MNI_RESOLUTION[track]
            vols[track] = [{"name": f"MNI152_{r}mm", "path": None, "mni_resolution": r}]
        else:
            vols[track] = [{"name": rel.split("/")[-1].split(".nii")[0], "path": str(args.data / rel)}
                           for rel in VALIDATION_SPLIT[track]]
            missing = [v["path"] for v in vols[track] if not Path(v["path"]).is_file()]
            if missing:
                raise SystemExit(f"the validation split is incomplete under {args.data}; missing: {', '.join(missing)}")
        if args.only:
            vols[track] = [v for v in vols[track] if any(text in v["name"] for text in args.only)]
        vols[track] = vols[track][: args.volumes] if args.volumes else vols[track]
    return vols


def load_hf(vol: dict) -> tuple[np.ndarray, np.ndarray]:
    """An HF volume in RAS+, float32, first volume if 4D (protocol step 1)."""
    import nibabel as nib

    if vol["path"] is None:
        from nilearn.datasets import load_mni152_template

        img = nib.as_closest_canonical(load_mni152_template(resolution=vol["mni_resolution"]))
    else:
        img = nib.as_closest_canonical(nib.load(vol["path"]))
    data = np.asarray(img.dataobj, dtype=np.float32)
    return (data[..., 0] if data.ndim == 4 else data), img.affine


def centre_crop(data: np.ndarray, affine: np.ndarray, n: int | None):
    """A box of ``n`` voxels per axis centred on the head, so smoke runs score real anatomy."""
    if not n:
        return data, affine
    fg = np.argwhere(data > 0.05 * float(data.max()))
    centre = (fg.min(0) + fg.max(0)) // 2 if fg.size else np.array(data.shape) // 2
    start = [int(np.clip(c - n // 2, 0, max(s - n, 0))) for c, s in zip(centre, data.shape)]
    box = tuple(slice(a, a + min(n, s)) for a, s in zip(start, data.shape))
    aff = np.array(affine, dtype=float)
    aff[:3, 3] = affine[:3, :3] @ np.asarray(start, float) + affine[:3, 3]
    return np.ascontiguousarray(data[box]), aff


def simulate(vol: dict, track: str, args) -> dict:
    """Protocol steps 1-8 for one volume: LF scan, its affine, and the GT it is scored against
    (the stacks track: sim-lf-v2's three stacks, the reference one as ``lf``)."""
    from diffdeur_bids.evaluation.protocol import TRACKS, simulate_lowfield, simulate_stacks

    hf, aff = centre_crop(*load_hf(vol), args.crop)
    if track == "stacks":
        sim = simulate_stacks(hf, aff, seed=args.seed)
        ref = sim["stacks"][0]
        return {**sim, "lf": ref["lf"], "lf_affine": ref["affine"],
                "voxel_mm": tuple(float(v) for v in np.sqrt((sim["gt_affine"][:3, :3] ** 2).sum(0)))}
    lf, lf_aff, gt, gt_aff = simulate_lowfield(hf, aff, **TRACKS[track], seed=args.seed)
    return {"lf": lf, "lf_affine": lf_aff, "gt": gt, "gt_affine": gt_aff,
            "voxel_mm": tuple(float(v) for v in np.sqrt((gt_aff[:3, :3] ** 2).sum(0)))}


# --------------------------------------------------------------------------- one method on one volume


def make_job(name: str, sim: dict, args) -> dict:
    """What the child process needs: the LF scan (or all stacks, for NAME@fused) and settings that write on
    the GT grid."""
    method, preset = common.parse_method(name.removesuffix(FUSED))
    settings = dict(method=method, output_resolution=sim["voxel_mm"], device=args.device, seed=args.seed,
                    dps_steps=args.dps_steps, steps=args.steps, threads=args.threads)
    lf, lf_affine = sim["lf"], sim["lf_affine"]
    if name.endswith(FUSED):
        lf, lf_affine = [s["lf"] for s in sim["stacks"]], [s["affine"] for s in sim["stacks"]]
    elif "stacks" in sim:  # sim-lf-v2's PSF is in-plane only (the reference stack's slices run along its third axis)
        settings["psf_sigma"] = (0.5, 0.5, 0.0)
    if args.learned_upsampling:
        settings["learned_upsampling"] = args.learned_upsampling == "on"
    return {"preset": preset, "settings": settings, "lf": lf, "lf_affine": lf_affine, "threads": args.threads,
            "upsampler": str(args.upsampler) if args.upsampler else None}


def mean_of_stacks(sim: dict) -> dict:
    """Every stack interpolated (linear) onto the GT grid through its header, averaged: no motion correction."""
    import time

    from diffdeur_bids.evaluation.metrics import resample_to_grid

    t0 = time.perf_counter()
    image = np.mean([resample_to_grid(s["lf"], s["affine"], sim["gt"].shape, sim["gt_affine"]) for s in sim["stacks"]], 0)
    return {"image": image.astype(np.float32), "affine": sim["gt_affine"], "info": {}, "seconds": time.perf_counter() - t0,
            "prior_load_seconds": 0.0, "peak_rss_mb": None, "rss_before_method_mb": None, "ru_maxrss_mb": None,
            "peak_gpu_mb": None, "threads": None}


def run_one(name: str, sim: dict, args) -> dict:
    return mean_of_stacks(sim) if name == "mean_of_stacks" else common.run_in_fresh_process(make_job(name, sim, args))


def registration_scores(run: dict, sim: dict) -> list[dict] | None:
    """Each later stack's estimated motion against the simulated one, after the start's registration and after
    the refinement during the fit (sim-lf-v2's corner displacement and angle)."""
    from diffdeur_bids.evaluation.metrics import registration_error

    found = (run.get("info") or {}).get("stacks")
    if not found:
        return None
    ref = sim["stacks"][0]
    centre = (ref["affine"] @ np.r_[(np.asarray(ref["lf"].shape) - 1) / 2.0, 1.0])[:3]
    out = []
    for truth, est in zip(sim["stacks"][1:], found[1:]):
        row = {"stack": truth["name"], "registered": registration_error(np.array(est["motion"]), truth["motion"], centre)}
        if est.get("refined_motion"):
            row["refined"] = registration_error(np.array(est["refined_motion"]), truth["motion"], centre)
        out.append(row)
    return out


def score(run: dict, sim: dict) -> dict:
    """PSNR/SSIM/LPIPS of the method's output, exactly as the protocol scores it."""
    from diffdeur_bids.evaluation.metrics import score_volume

    return score_volume(run["image"], run["affine"], sim["gt"], sim["gt_affine"], lpips=True)


def record(vol_name: str, run: dict, scores: dict | None) -> dict:
    """The per-volume entry of the JSON (the image itself is not kept)."""
    if "error" in run:
        return {"volume": vol_name, "error": run["error"]}
    keys = ("seconds", "prior_load_seconds", "peak_rss_mb", "rss_before_method_mb", "ru_maxrss_mb",
            "peak_gpu_mb", "threads")
    entry = {"volume": vol_name, **scores, **{k: run[k] for k in keys}}
    entry["info"] = {k: run["info"].get(k) for k in ("output_shape", "input_shape", "noise_sigma_used",
                                                      "intensity_scale", "weights_sha256", "device")}
    return entry


def _registration_summary(entries) -> str:
    """The worst corner displacement and angle over every stack and volume, registered / refined."""
    cells = []
    for stage in ("registered", "refined"):
        rows = [r[stage] for e in entries for r in (e.get("registration") or []) if stage in r]
        if rows:
            cells.append(f"{stage}: max {max(r['corner_mm'] for r in rows):.2f} mm, {max(r['angle_deg'] for r in rows):.2f} deg")
    return "; ".join(cells)


# --------------------------------------------------------------------------- example slices


def coronal_slice(volume: np.ndarray, sim: dict, affine=None) -> np.ndarray:
    """The aligned [0, 1] coronal slice through the middle of the scored box (``volume`` on the GT grid, or
    on the grid of ``affine``).

    Coronal, not axial: it shows the through-plane axis (z), the one every track degrades most.
    """
    from diffdeur_bids.evaluation.metrics import align_intensity, bounding_box, resample_to_grid, score_mask

    if affine is not None:
        volume = resample_to_grid(volume, affine, sim["gt"].shape, sim["gt_affine"])
    mask = score_mask(sim["gt"])
    box = bounding_box(mask)
    y = (box[1].start + box[1].stop) // 2
    aligned = align_intensity(np.asarray(volume, float), np.asarray(sim["gt"], float), mask)
    return np.rot90(aligned[box[0], y, box[2]])  # superior up, x across


def lf_on_gt_grid(sim: dict) -> np.ndarray:
    """The LF scan on the GT grid by nearest neighbour, so the figure shows its real voxels."""
    from scipy import ndimage

    vox = np.linalg.inv(sim["lf_affine"]) @ sim["gt_affine"]
    return ndimage.affine_transform(sim["lf"], vox[:3, :3], offset=vox[:3, 3], output_shape=sim["gt"].shape,
                                    order=0, mode="nearest")


# --------------------------------------------------------------------------- outputs


def summarise(results: dict) -> dict:
    """Mean ± std (over volumes) per track per method, of every score and cost."""
    out = {}
    for track, methods in results.items():
        out[track] = {}
        for name, entries in methods.items():
            ok = [e for e in entries if "error" not in e]
            out[track][name] = {k: common.mean_std([e.get(k) for e in ok])
                                for k in ("psnr", "ssim", "lpips", "seconds", "peak_rss_mb", "peak_gpu_mb")}
            out[track][name]["failed"] = len(entries) - len(ok)
    return out


def write_json(args, prov, notes, vols, results) -> None:
    """Rewritten after every method run, so a long run that dies keeps what it measured."""
    doc = {"protocol": protocol_of(vols), "provenance": prov, "notes": notes,
           "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "volumes": {t: [v["name"] for v in vs] for t, vs in vols.items()},
           "summary": summarise(results), "per_volume": results}
    common.write_json(args.out / "sim_lf.json", common.finite_or_none(doc))


def _fmt(stat: dict, digits: int) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown(args, prov, notes, vols, results) -> str:
    """Per track: method | PSNR | SSIM | LPIPS | s/volume | peak MB (mean ± std over volumes)."""
    from diffdeur_bids.evaluation.protocol import TRACKS

    summ = summarise(results)
    gpu = any(s["peak_gpu_mb"]["n"] for t in summ.values() for s in t.values())
    lines = [f"# {protocol_of(vols)} benchmark, {prov['date'][:10]}", "",
             f"- commit `{prov['git_commit']}`{' (with uncommitted changes)' if prov['git_dirty'] else ''}, "
             f"diffdeur {prov['diffdeur_version']}, torch {prov['versions']['torch']}",
             f"- device {prov['device']} ({prov['device_name']}), {prov['threads']} threads; machine: "
             f"{prov['machine']['cpu_model']}, {prov['machine']['cpus_usable']} usable CPUs, "
             f"{prov['machine']['memory_gb']} GB RAM",
             f"- prior sha256 `{prov['weights_sha256']['prior']}`; DPS with {args.dps_steps} steps"
             + (f"; prior steps overridden to {args.steps}" if args.steps else "")
             + (f"; HF volumes cropped to {args.crop} voxels per axis" if args.crop else ""),
             "- peak MB: peak resident memory (VmHWM) of the fresh process that ran the method, Python and "
             "torch included (see `rss_before_method_mb` in the JSON); mean ± std over volumes (sample std)"]
    lines += [f"- note: {n}" for n in notes]
    for track, methods in summ.items():
        t = TRACKS.get(track)
        what = (f"k = {t['k']}, PSF sigma {t['psf_sigma']}, noise {t['noise_sigma']}" if t else
                "sim-lf-v2, three stacks (axi reference, cor, sag) 1.5 x 1.5 x 5 mm, motion up to 3 deg / 2 mm, noise 0.04")
        lines += ["", f"## Track {track}: {what}; "
                      f"{len(vols[track])} volume(s): {', '.join(v['name'] for v in vols[track])}", "",
                  "| method | PSNR (dB) | SSIM | LPIPS | s/volume | peak MB |" + (" peak GPU MB |" if gpu else ""),
                  "|---|---|---|---|---|---|" + ("---|" if gpu else "")]
        for name, s in methods.items():
            row = (f"| {name} | {_fmt(s['psnr'], 2)} | {_fmt(s['ssim'], 3)} | {_fmt(s['lpips'], 3)} | "
                   f"{_fmt(s['seconds'], 1)} | {_fmt(s['peak_rss_mb'], 0)} |")
            row += f" {_fmt(s['peak_gpu_mb'], 0)} |" if gpu else ""
            lines.append(row + (f" ({s['failed']} failed)" if s["failed"] else ""))
        for name, entries in results[track].items():
            if any(e.get("registration") for e in entries):
                lines.append(f"\nRegistration of {name} (error against the simulated motions): {_registration_summary(entries)}")
    return "\n".join(lines) + "\n"


def slices_figure(examples: dict, path: Path) -> None:
    """Per track: a row of images (LF, each method, GT) and a row of |error| maps against the GT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not examples:
        return
    ncol = max(len(ex["panels"]) for ex in examples.values())
    fig, axes = plt.subplots(2 * len(examples), ncol, figsize=(2.0 * ncol, 4.4 * len(examples)), squeeze=False)
    for r, (track, ex) in enumerate(examples.items()):
        gt = ex["panels"]["ground truth"]
        for c in range(ncol):
            top, bottom = axes[2 * r, c], axes[2 * r + 1, c]
            top.axis("off")
            bottom.axis("off")
            if c >= len(ex["panels"]):
                continue
            label, img = list(ex["panels"].items())[c]
            top.imshow(img, cmap="gray", vmin=0, vmax=1)
            top.set_title(f"{track}: {label}" if c == 0 else label, fontsize=8)
            if label != "ground truth":
                bottom.imshow(np.abs(img - gt), cmap="magma", vmin=0, vmax=0.25)
                bottom.set_title("|error|", fontsize=7)
    fig.suptitle(f"{protocol_of(examples)}: coronal slice of the first volume per track (error maps 0-0.25)", fontsize=9)
    common.save_figure(fig, path)
    plt.close(fig)


def quality_time_figure(results: dict, path: Path) -> None:
    """PSNR against seconds per volume, one panel per track: the cost of each gain in quality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = summarise(results)
    fig, axes = plt.subplots(1, len(summ), figsize=(5.0 * len(summ), 4.0), squeeze=False)
    for ax, (track, methods) in zip(axes[0], summ.items()):
        for name, s in methods.items():
            if s["psnr"]["mean"] is None:
                continue
            ax.errorbar(s["seconds"]["mean"], s["psnr"]["mean"], xerr=s["seconds"]["std"], yerr=s["psnr"]["std"],
                        fmt="o", capsize=3)
            ax.annotate(name, (s["seconds"]["mean"], s["psnr"]["mean"]), fontsize=8,
                        textcoords="offset points", xytext=(4, 4))
        ax.set_xscale("log")
        ax.margins(x=0.25, y=0.1)  # room for the labels
        ax.set_xlabel("seconds per volume (log)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"track {track}")
        ax.grid(alpha=0.3)
    common.save_figure(fig, path)
    plt.close(fig)


# --------------------------------------------------------------------------- the loop


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:  # the scoring (LPIPS) in this process keeps to the same budget as the methods
        import torch

        torch.set_num_threads(args.threads)
    notes: list[str] = []
    methods = runnable_methods(args.methods, notes)
    vols = volume_list(args, notes)
    prov = common.provenance(args.device, args.threads)
    for n in notes:
        print(f"note: {n}", flush=True)
    results = {t: {m: [] for m in (args.stack_methods if t == "stacks" else methods)} for t in vols}
    examples = {}
    for track, track_vols in vols.items():
        for i, vol in enumerate(track_vols):
            sim = simulate(vol, track, args)
            print(f"[{track}] {vol['name']}: LF {sim['lf'].shape} -> GT {sim['gt'].shape}", flush=True)
            if i == 0:
                examples[track] = {"panels": {"LF input": coronal_slice(lf_on_gt_grid(sim), sim)}}
            for name in (args.stack_methods if track == "stacks" else methods):
                run = run_one(name, sim, args)
                scores = score(run, sim) if "error" not in run else None
                entry = record(vol["name"], run, scores)
                if "error" not in run and name.endswith(FUSED):
                    entry["registration"] = registration_scores(run, sim)
                results[track][name].append(entry)
                report(track, vol["name"], name, entry)
                if i == 0 and "error" not in run:
                    examples[track]["panels"][name] = coronal_slice(run["image"], sim, run["affine"])
                write_json(args, prov, notes, vols, results)
            if i == 0:
                examples[track]["panels"]["ground truth"] = coronal_slice(sim["gt"], sim)
    common.write_text(args.out / "sim_lf.md", markdown(args, prov, notes, vols, results))
    slices_figure(examples, args.out / "sim_lf_slices.png")
    quality_time_figure(results, args.out / "sim_lf_quality_time.png")
    print(f"results in {args.out}", flush=True)
    return 0


def report(track, vol_name, name, e) -> None:
    """One line per run on stdout, so a long run can be followed."""
    if "error" in e:
        print(f"  [{track}] {vol_name} {name}: FAILED {e['error']}", flush=True)
        return
    lp = "n/a" if e["lpips"] is None else f"{e['lpips']:.3f}"
    peak = "n/a" if e["peak_rss_mb"] is None else f"{e['peak_rss_mb']:.0f} MB"
    reg = f"; {_registration_summary([e])}" if e.get("registration") else ""
    print(f"  [{track}] {vol_name} {name}: PSNR {e['psnr']:.2f} SSIM {e['ssim']:.3f} LPIPS {lp} "
          f"{e['seconds']:.1f} s peak {peak}{reg}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
