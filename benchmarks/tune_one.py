"""Score methods on one simulated volume with settings overridden: how the solver defaults were chosen.

    python benchmarks/tune_one.py ../shared/data/hf/ixi_2mm/IXI132-HH-1415_T1w.nii.gz --track 2mm \
        --methods linear diffdeur --set sigma_start=0.25 mu=1.0 inr_lr=0.05
    python benchmarks/tune_one.py ../shared/data/hf/1mm/IXI002-Guys-0828_T2w_brain_hdbet.nii.gz --track 1mm \
        --crop-to-head --methods cubic diffdeur --set num_samples=2
    python benchmarks/tune_one.py ../shared/data/hf/1mm/IXI002-Guys-0828_T1w_brain_hdbet.nii.gz --track 1mm \
        --crop-to-head --noise-sigma 0 --methods cubic start --set start_damping=0
    python benchmarks/tune_one.py ../shared/data/hf/ixi_2mm/IXI212-HH-1643_T1w.nii.gz --track 2mm \
        --methods start diffdeur --set learned_upsampling=1 --upsampler runs/upsampler_v1/upsampler.safetensors

Each ``--set NAME=VALUE`` overrides an ``EnhanceSettings`` field of the default preset; scores are
sim-lf-v1's (PSNR, SSIM; LPIPS with --lpips). Use the full benchmark (sim_lf.py) for reported figures.
"""

from __future__ import annotations

import argparse
import time

import nibabel as nib
import numpy as np
import torch

from diffdeur_bids.enhance import METHODS, EnhanceSettings, enhance
from diffdeur_bids.evaluation.metrics import score_volume
from diffdeur_bids.evaluation.protocol import TRACKS, simulate_lowfield
from diffdeur_bids.priors import DEFAULT_PRIOR, load_prior, load_upsampler
from diffdeur_bids.priors.checkpoint import read_upsampler


def _crop_to_head(hf: np.ndarray, affine: np.ndarray, margin: int = 4):
    """Drop the empty border, keeping the affine true to the cropped voxels."""
    inside = np.argwhere(hf > 0.05 * np.percentile(hf[hf > 0], 99.5))
    lo = np.maximum(inside.min(0) - margin, 0)
    hi = inside.max(0) + margin + 1
    cropped = affine.copy()
    cropped[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return hf[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], cropped


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("hf_file")
    ap.add_argument("--track", choices=sorted(TRACKS), default="2mm")
    ap.add_argument("--methods", nargs="+", default=["linear", "diffdeur"], choices=sorted(METHODS))
    ap.add_argument("--prior", default=DEFAULT_PRIOR, help="a shipped prior's name or a weights file")
    ap.add_argument("--upsampler", default=None, help="learned upsampler weights (default: the shipped ones)")
    ap.add_argument("--quality", default="default")
    ap.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lpips", action="store_true")
    ap.add_argument("--noise-sigma", type=float, default=None, help="override the track's noise level (0: resolution loss only)")
    ap.add_argument("--crop-to-head", action="store_true",
                    help="crop the HF volume to the bounding box of its voxels above 5%% of the 99.5th percentile, plus 4 voxels (faster)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
    img = nib.as_closest_canonical(nib.load(args.hf_file))
    hf, hf_aff = np.asarray(img.dataobj, dtype=np.float32), img.affine
    if args.crop_to_head:
        hf, hf_aff = _crop_to_head(hf, hf_aff)
    track = dict(TRACKS[args.track])
    if args.noise_sigma is not None:
        track["noise_sigma"] = args.noise_sigma
    lf, lf_aff, gt, gt_aff = simulate_lowfield(hf, hf_aff, **track, seed=0)
    resolution = tuple(float(v) for v in np.sqrt((gt_aff[:3, :3] ** 2).sum(0)))
    prior = load_prior(args.prior) if any(METHODS[m].needs_prior for m in args.methods) else None
    upsampler = read_upsampler(args.upsampler) if args.upsampler else None
    for method in args.methods:
        settings = EnhanceSettings.preset(args.quality, method=method, output_resolution=resolution, device="cpu", **overrides)
        t0 = time.time()
        res = enhance(lf, lf_aff, settings, prior=prior,
                      upsampler=upsampler or (load_upsampler() if settings.learned_upsampling else None))
        s = score_volume(res.image, res.affine, gt, gt_aff, lpips=args.lpips)
        lp = f" LPIPS {s['lpips']:.3f}" if args.lpips else ""
        print(f"{method:10s} PSNR {s['psnr']:.2f} SSIM {s['ssim']:.3f}{lp} {time.time() - t0:.1f} s  {overrides}", flush=True)


if __name__ == "__main__":
    main()
