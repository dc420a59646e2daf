"""How DiffDeuR's cost grows: time and peak memory against output voxels, and against prior steps.

Cubes cropped from nilearn's 1 mm MNI152 template (available to everyone, large enough for the
biggest size) are degraded with a sim-lf-v1 track and enhanced back onto the template's grid with
one quality preset (``default``). Every run happens in its own spawned process (see
``common.py``) so each peak memory is that run's own. The fitted exponent of time ~ voxels^p says
whether cost is linear in the volume, which is what predicts the time of a full-size scan.

    python benchmarks/scaling.py --device cpu --threads 2
    python benchmarks/scaling.py --sizes 32 48 --steps 1 2 --preset fast   # a smoke run

Writes ``scaling.json`` and ``scaling.md`` (atomically) to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import common  # noqa: E402

# Cube sides (1 mm voxels) giving ~0.26 M, 1.0 M and 4.1 M output voxels; multiples of the 1mm
# track's factors (2, 2, 4) so no voxel is cropped away by the simulation.
DEFAULT_SIZES = [64, 100, 160]
DEFAULT_STEPS = [4, 10, 25]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", type=int, default=DEFAULT_SIZES, help="cube sides in voxels")
    p.add_argument("--steps", nargs="+", type=int, default=DEFAULT_STEPS, help="prior steps, run on the smallest size")
    p.add_argument("--preset", default="default", help="quality preset (default: %(default)s)")
    p.add_argument("--track", default="1mm", choices=["1mm", "2mm"], help="degradation (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: benchmarks/results/<date>)")
    args = p.parse_args(argv)
    args.out = args.out or common.default_out_dir()
    return args


def template_cube(n: int, resolution: int = 1):
    """An ``n``-voxel cube of the MNI template centred on the head, with its affine."""
    import nibabel as nib
    from nilearn.datasets import load_mni152_template

    from sim_lf import centre_crop

    img = nib.as_closest_canonical(load_mni152_template(resolution=resolution))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if n > min(data.shape):
        raise SystemExit(f"size {n} exceeds the template {data.shape}")
    return centre_crop(data, img.affine, n)


def one_run(n: int, steps: int | None, args) -> dict:
    """Degrade one cube, enhance it in a fresh process, return the costs."""
    from diffdeur_bids.evaluation.protocol import TRACKS, simulate_lowfield

    hf, aff = template_cube(n, 1 if args.track == "1mm" else 2)
    lf, lf_aff, gt, gt_aff = simulate_lowfield(hf, aff, **TRACKS[args.track], seed=args.seed)
    voxel_mm = tuple(float(v) for v in np.sqrt((gt_aff[:3, :3] ** 2).sum(0)))
    settings = dict(method="diffdeur", output_resolution=voxel_mm, device=args.device, seed=args.seed,
                    steps=steps, threads=args.threads)
    run = common.run_in_fresh_process({"preset": args.preset, "settings": settings, "lf": lf,
                                       "lf_affine": lf_aff, "threads": args.threads})
    entry = {"size": n, "steps": run.get("info", {}).get("settings", {}).get("steps", steps),
             "lf_shape": list(lf.shape), "output_shape": list(gt.shape), "output_voxels": int(gt.size)}
    if "error" in run:
        return {**entry, "error": run["error"]}
    entry.update({k: run[k] for k in ("seconds", "peak_rss_mb", "rss_before_method_mb", "peak_gpu_mb", "threads")})
    entry["seconds_per_mvoxel"] = run["seconds"] / (gt.size / 1e6)
    entry["method_rss_mb"] = run["peak_rss_mb"] - run["rss_before_method_mb"]  # without Python + torch
    return entry


def power_law(entries, key) -> float | None:
    """Exponent p of ``key ~ voxels^p`` (least squares in log-log); 1 means linear in the volume."""
    ok = [e for e in entries if "error" not in e and e.get(key)]
    if len(ok) < 2:
        return None
    x = np.log([e["output_voxels"] for e in ok])
    y = np.log([e[key] for e in ok])
    return float(np.polyfit(x, y, 1)[0])


def markdown(args, prov, by_size, by_steps) -> str:
    gpu = any(e.get("peak_gpu_mb") for e in by_size + by_steps)
    head = "| size | output voxels | steps | s | s / M voxels | peak MB | of which method MB |" + (" peak GPU MB |" if gpu else "")
    rule = "|---|---|---|---|---|---|---|" + ("---|" if gpu else "")

    def row(e):
        if "error" in e:
            return f"| {e['size']}³ | {e['output_voxels'] / 1e6:.2f} M | {e['steps']} | failed: {e['error']} |"
        r = (f"| {e['size']}³ | {e['output_voxels'] / 1e6:.2f} M | {e['steps']} | {e['seconds']:.1f} | "
             f"{e['seconds_per_mvoxel']:.1f} | {e['peak_rss_mb']:.0f} | {e['method_rss_mb']:.0f} |")
        return r + (f" {e['peak_gpu_mb'] or 0:.0f} |" if gpu else "")

    p_t, p_m = power_law(by_size, "seconds"), power_law(by_size, "method_rss_mb")
    fmt = lambda p: "n/a" if p is None else f"{p:.2f}"  # noqa: E731
    lines = [f"# DiffDeuR scaling ({args.preset} preset, track {args.track}), {prov['date'][:10]}", "",
             f"- commit `{prov['git_commit']}`{' (with uncommitted changes)' if prov['git_dirty'] else ''}, "
             f"torch {prov['versions']['torch']}; device {prov['device']} ({prov['device_name']}), "
             f"{prov['threads']} threads; {prov['machine']['cpus_usable']} usable CPUs",
             "- cubes of nilearn's MNI152 template; peak MB: VmHWM of the fresh process that ran it; method MB: "
             "that peak less the process's size before the prior was loaded (Python + torch + input)",
             "", "## Against volume size", "", head, rule, *map(row, by_size), "",
             f"Fitted exponents (1 = linear in the voxels): time ~ voxels^{fmt(p_t)}, "
             f"memory above the bare process ~ voxels^{fmt(p_m)}",
             "", f"## Against prior steps (size {min(args.sizes)}³)", "", head, rule, *map(row, by_steps)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    prov = common.provenance(args.device, args.threads)
    by_size, by_steps = [], []
    for n in args.sizes:
        by_size.append(one_run(n, None, args))
        print(f"size {n}: {by_size[-1]}", flush=True)
    preset_steps = by_size[args.sizes.index(min(args.sizes))]["steps"]
    for s in args.steps:
        same = s == preset_steps and "error" not in by_size[args.sizes.index(min(args.sizes))]
        by_steps.append(by_size[args.sizes.index(min(args.sizes))] if same else one_run(min(args.sizes), s, args))
        print(f"steps {s}: {by_steps[-1]}", flush=True)
    doc = {"provenance": prov, "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "by_size": by_size, "by_steps": by_steps,
           "exponent_seconds_vs_voxels": power_law(by_size, "seconds"),
           "exponent_method_rss_vs_voxels": power_law(by_size, "method_rss_mb")}
    common.write_json(args.out / "scaling.json", common.finite_or_none(doc))
    common.write_text(args.out / "scaling.md", markdown(args, prov, by_size, by_steps))
    print(f"results in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
