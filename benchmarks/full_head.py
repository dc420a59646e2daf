"""What users meet: a full head at 1 mm output, one stack (sim-lf-v1's 1 mm track) or three (sim-lf-v2).

Wall time and peak resident memory of one ``enhance`` call (in its own spawned process, see
``common.py``), the time of the start and of each sampler step (from the progress ticks), and
what the progress lines said was left against what was: the honest-ETA check; with ``--profile``,
the seconds in each part (``common.PARTS``). PSNR and SSIM (no LPIPS) are reported only to check
that a change for speed keeps the result: these heads are of the training split, and ``sim_lf.py``
gives the quality figures. With three stacks, the registration's error against the simulated
motions too.

    python benchmarks/full_head.py --mode stacks --preset default --threads 2
    python benchmarks/full_head.py --mode single --preset fast --profile      # seconds per part too
    python benchmarks/full_head.py --mode stacks --only otsu --output-resolution 2
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import common  # noqa: E402
from sim_lf import DEFAULT_DATA, load_hf, registration_scores  # noqa: E402

from diffdeur_bids.evaluation.metrics import score_volume  # noqa: E402

from diffdeur_bids.evaluation.protocol import TRACKS, simulate_lowfield, simulate_stacks  # noqa: E402

# whole heads at 1 mm, skull and neck included (training split): 7.0, 6.5 and 4.3 M voxels at 1 mm output
FULL_HEADS = ["hf/1mm/niivue_otsu_T1w_head_1mm.nii.gz", "hf/1mm/py_synthsr_FLAIR3D_head_1mm.nii.gz",
              "hf/1mm/stroke_M2208_T2w_head_1mm_normalized.nii.gz"]


def simulate(path: Path, mode: str) -> dict:
    """``lf``/``lf_affine`` (lists for stacks), the ground truth, and for stacks the simulation (``sim_lf``'s form)."""
    hf, affine = load_hf({"path": path})
    if mode == "stacks":
        sim = simulate_stacks(hf, affine, seed=0)
        return {"lf": [s["lf"] for s in sim["stacks"]], "lf_affine": [s["affine"] for s in sim["stacks"]],
                "gt": sim["gt"], "gt_affine": sim["gt_affine"], "sim": sim}
    lf, lf_affine, gt, gt_affine = simulate_lowfield(hf, affine, seed=0, **TRACKS["1mm"])
    return {"lf": lf, "lf_affine": lf_affine, "gt": gt, "gt_affine": gt_affine, "sim": None}


def eta_errors(ticks) -> list[dict]:
    """Each progress line's estimate against the time that was really left (the last tick's elapsed)."""
    end = ticks[-1][2]
    return [{"tick": done, "elapsed_s": round(elapsed, 1), "said_left_s": None if eta is None else round(eta, 1),
             "was_left_s": round(end - elapsed, 1),
             "error": None if eta is None or end - elapsed <= 0 else round(eta / (end - elapsed) - 1, 3)}
            for done, total, elapsed, eta in ticks]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--mode", nargs="+", choices=["single", "stacks"], default=["single", "stacks"])
    p.add_argument("--only", nargs="+", default=None, metavar="TEXT", help="only the heads whose file name holds TEXT")
    p.add_argument("--preset", default="default")
    p.add_argument("--steps", type=int, default=None, help="override the preset's steps (a quicker memory run)")
    p.add_argument("--output-resolution", type=float, default=1.0, help="mm (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--profile", action="store_true", help="seconds per part (cProfile's cumulative times)")
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    rows = []
    for rel in [h for h in FULL_HEADS if not args.only or any(t in h for t in args.only)]:
        for mode in args.mode:
            case = simulate(args.data / rel, mode)
            settings = dict(method="diffdeur", output_resolution=args.output_resolution, device=args.device, steps=args.steps,
                            threads=args.threads)
            run = common.run_in_fresh_process({"preset": args.preset, "settings": settings, "lf": case["lf"],
                                               "lf_affine": case["lf_affine"], "threads": args.threads,
                                               "profile": args.profile})
            if "error" in run:
                print(json.dumps({"volume": rel, "mode": mode, "error": run["error"]}), flush=True)
                continue
            ticks = run["ticks"]
            steps = [b[2] - a[2] for a, b in zip(ticks[1:], ticks[2:])]
            row = {"volume": Path(rel).name, "mode": mode, "preset": args.preset, "steps": len(ticks) - 1,
                   "output_resolution_mm": args.output_resolution,
                   "output_shape": run["info"]["output_shape"],
                   "output_mvoxels": round(math.prod(run["info"]["output_shape"]) / 1e6, 2),
                   "seconds": round(run["seconds"], 1), "peak_rss_mb": round(run["peak_rss_mb"]),
                   "start_s": round(ticks[0][2], 1), "step_s_mean": round(float(np.mean(steps)), 2) if steps else None,
                   "step_s_first_last": [round(steps[0], 2), round(steps[-1], 2)] if steps else None,
                   **score_volume(run["image"], run["affine"], case["gt"], case["gt_affine"], lpips=False),
                   "registration": registration_scores(run, case["sim"]) if case["sim"] else None,
                   "eta": eta_errors(ticks), "device": run["info"].get("device"), "parts_s": {r["part"]: r["seconds"] for r in run["parts"] or []} or None}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "eta"}), flush=True)
            worst = max((abs(e["error"]) for e in row["eta"] if e["error"] is not None), default=None)
            print(f"  ETA: worst error {worst} over the lines that gave one", flush=True)
    if args.out:
        common.write_json(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
