"""What limits DiffDeuR: where its time goes, and which part of the degradation costs quality.

Two measurements on one volume of each sim-lf-v1 track's validation split (the first one):

- ``time``: a cProfile of one ``enhance`` call with the chosen preset; the cumulative seconds of
  the method's parts (prior denoiser, INR fitting and rendering, the degradation operator) show
  what a faster implementation would have to speed up.
- ``quality``: the same volume degraded with one part of sim-lf-v1 at a time (noise only,
  resolution loss only, all of it) and enhanced by linear, cubic and DiffDeuR. Where DiffDeuR's
  gain over interpolation is small says which half of the inverse problem the prior and the
  sampler do not solve.

    python benchmarks/limits.py --threads 2             # both, writes limits.json / limits.md
    python benchmarks/limits.py --parts time --tracks 1mm
"""

from __future__ import annotations

import argparse
import cProfile
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import common  # noqa: E402
from sim_lf import DEFAULT_DATA, VALIDATION_SPLIT, load_hf  # noqa: E402


# Degradation variants: one part of the track at a time (k, PSF sigma, noise sigma).
VARIANTS = {
    "noise only": lambda t: dict(k=(1, 1, 1), psf_sigma=0.0, noise_sigma=t["noise_sigma"]),
    "resolution only": lambda t: dict(k=t["k"], psf_sigma=t["psf_sigma"], noise_sigma=0.0),
    "full track": lambda t: dict(t),
}
METHODS = ["linear", "cubic", "diffdeur"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding hf/ (default: %(default)s)")
    p.add_argument("--tracks", nargs="+", default=["2mm", "1mm"], choices=sorted(VALIDATION_SPLIT))
    p.add_argument("--parts", nargs="+", default=["time", "quality"], choices=["time", "quality"])
    p.add_argument("--preset", default="default")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: benchmarks/results/<date>)")
    args = p.parse_args(argv)
    args.out = args.out or common.default_out_dir()
    return args


def first_volume(args, track: str):
    path = args.data / VALIDATION_SPLIT[track][0]
    if not path.is_file():
        raise SystemExit(f"{path} not found: this script needs ../shared/data (see --data)")
    data, affine = load_hf({"path": path})
    return path.name.split(".")[0], data, affine


def _settings(args, method, gt_affine, psf_sigma=0.5):
    from diffdeur_bids.enhance import EnhanceSettings

    resolution = tuple(float(v) for v in np.sqrt((gt_affine[:3, :3] ** 2).sum(0)))
    return EnhanceSettings.preset(args.preset, method=method, output_resolution=resolution, device=args.device,
                                  psf_sigma=psf_sigma)


def profile_time(args, track: str) -> dict:
    from diffdeur_bids.enhance import enhance
    from diffdeur_bids.evaluation.protocol import TRACKS, simulate_lowfield
    from diffdeur_bids.priors import load_prior

    name, hf, affine = first_volume(args, track)
    lf, lf_aff, gt, gt_aff = simulate_lowfield(hf, affine, **TRACKS[track], seed=0)
    settings = _settings(args, "diffdeur", gt_aff)
    prior = load_prior(device=args.device)
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    enhance(lf, lf_aff, settings, prior=prior)
    profiler.disable()
    total = time.perf_counter() - t0
    rows = [{**row, "share": round(row["seconds"] / total, 3)} for row in common.part_times(profiler)]
    return {"volume": name, "shape_out": list(gt.shape), "preset": args.preset, "seconds_total": round(total, 2), "parts": rows}


def profile_quality(args, track: str) -> dict:
    from diffdeur_bids.enhance import enhance
    from diffdeur_bids.evaluation.metrics import score_volume
    from diffdeur_bids.evaluation.protocol import TRACKS, simulate_lowfield
    from diffdeur_bids.priors import load_prior

    name, hf, affine = first_volume(args, track)
    prior = load_prior(device=args.device)
    out = {"volume": name, "variants": {}}
    for variant, make in VARIANTS.items():
        degradation = make(TRACKS[track])
        lf, lf_aff, gt, gt_aff = simulate_lowfield(hf, affine, **degradation, seed=0)
        scores = {}
        for method in METHODS:
            settings = _settings(args, method, gt_aff, psf_sigma=degradation["psf_sigma"])  # the model matches the data
            res = enhance(lf, lf_aff, settings, prior=prior)
            s = score_volume(res.image, res.affine, gt, gt_aff, lpips=False)
            scores[method] = {"psnr": round(s["psnr"], 2), "ssim": round(s["ssim"], 3)}
            print(f"{track} {variant:16s} {method:9s} PSNR {s['psnr']:.2f} SSIM {s['ssim']:.3f}", flush=True)
        out["variants"][variant] = {"degradation": {k: list(v) if isinstance(v, tuple) else v for k, v in degradation.items()},
                                    "scores": scores}
    return out


def markdown(prov: dict, results: dict) -> str:
    lines = [f"# What limits DiffDeuR, {prov['date'][:10]}", "",
             f"- commit `{prov['git_commit']}`, device {prov['device']} ({prov['device_name']}), {prov['threads']} threads",
             f"- prior sha256 `{prov['weights_sha256']['prior']}`", ""]
    for track, res in results.items():
        if "time" in res:
            t = res["time"]
            lines += [f"## Track {track}: where the time goes ({t['volume']}, output {t['shape_out']}, preset {t['preset']}, "
                      f"{t['seconds_total']} s under cProfile)", "", "| part | seconds | share | calls |", "|---|---|---|---|"]
            lines += [f"| {r['part']} | {r['seconds']} | {100 * r['share']:.0f} % | {r['calls']} |" for r in t["parts"]]
            lines.append("")
        if "quality" in res:
            q = res["quality"]
            lines += [f"## Track {track}: which part of the degradation costs quality ({q['volume']})", "",
                      "| degradation | " + " | ".join(f"{m} PSNR / SSIM" for m in METHODS) + " | DiffDeuR − best interpolation (dB) |",
                      "|---" * (len(METHODS) + 2) + "|"]
            for variant, v in q["variants"].items():
                sc = v["scores"]
                gain = sc["diffdeur"]["psnr"] - max(sc["linear"]["psnr"], sc["cubic"]["psnr"])
                cells = " | ".join(f"{sc[m]['psnr']:.2f} / {sc[m]['ssim']:.3f}" for m in METHODS)
                lines.append(f"| {variant} | {cells} | {gain:+.2f} |")
            lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    prov = common.provenance(args.device, args.threads)
    results = {}
    for track in args.tracks:
        results[track] = {}
        if "time" in args.parts:
            results[track]["time"] = profile_time(args, track)
            print(f"{track} time: {results[track]['time']['seconds_total']} s", flush=True)
        if "quality" in args.parts:
            results[track]["quality"] = profile_quality(args, track)
    args.out.mkdir(parents=True, exist_ok=True)
    common.write_json(args.out / "limits.json", {"provenance": prov, "results": results})
    common.write_text(args.out / "limits.md", markdown(prov, results) + "\n")
    print(f"wrote {args.out / 'limits.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
