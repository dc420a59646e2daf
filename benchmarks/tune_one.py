"""Score methods on one simulated volume with settings overridden: how the solver defaults were chosen.

    python benchmarks/tune_one.py ../shared/data/hf/ixi_2mm/IXI132-HH-1415_T1w.nii.gz --track 2mm \
        --methods linear diffdeur --set sigma_start=0.25 mu=1.0 inr_lr=0.05
    python benchmarks/tune_one.py ../shared/data/hf/1mm/IXI002-Guys-0828_T2w_brain_hdbet.nii.gz --track 1mm \
        --crop-to-head --methods cubic diffdeur --set num_samples=2
    python benchmarks/tune_one.py ../shared/data/hf/1mm/IXI002-Guys-0828_T1w_brain_hdbet.nii.gz --track 1mm \
        --crop-to-head --noise-sigma 0 --methods cubic start --set start_damping=0
    python benchmarks/tune_one.py ../shared/data/hf/ixi_2mm/IXI212-HH-1643_T1w.nii.gz --track 2mm \
        --methods start diffdeur --set learned_upsampling=1 --upsampler runs/upsampler_v1/upsampler.safetensors
    python benchmarks/tune_one.py ../shared/data/hf/1mm/IXI002-Guys-0828_T2w_brain_hdbet.nii.gz --track stacks \
        --crop-to-head --methods start diffdeur --threads 2 --lpips --ssim-split

Each ``--set NAME=VALUE`` overrides an ``EnhanceSettings`` field of the default preset; scores are
sim-lf-v1's (PSNR, SSIM; LPIPS with --lpips). ``--track stacks`` simulates sim-lf-v2's three stacks: the
methods that fuse get all three, the others the reference stack alone. ``--ssim-split`` also prints the
protocol's local SSIM averaged inside the head (GT > 0.05) and outside it, in the scored box. Use the full
benchmark (sim_lf.py) for reported figures.
"""

from __future__ import annotations

import argparse
import time

import nibabel as nib
import numpy as np
import torch

from diffdeur_bids.enhance import METHODS, EnhanceSettings, enhance
from diffdeur_bids.evaluation import metrics
from diffdeur_bids.evaluation.metrics import score_volume
from diffdeur_bids.evaluation.protocol import TRACKS, simulate_lowfield, simulate_stacks
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


def _ssim_inside_outside(image, affine, gt, gt_aff) -> tuple[float, float]:
    """The protocol's local SSIM (as ``metrics.ssim``) averaged inside the head (GT > 0.05) and outside it."""
    from skimage.metrics import structural_similarity

    pred = metrics.resample_to_grid(image, affine, gt.shape, gt_aff)
    mask = metrics.score_mask(gt)
    box = metrics.bounding_box(mask)
    pred_b, gt_b = metrics.align_intensity(pred, gt, mask)[box], np.asarray(gt, float)[box]
    _, local = structural_similarity(gt_b, pred_b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, full=True)
    head = gt_b > metrics.MASK_THRESHOLD
    return float(local[head].mean()), float(local[~head].mean())


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
    ap.add_argument("--track", choices=sorted(TRACKS) + ["stacks"], default="2mm")
    ap.add_argument("--methods", nargs="+", default=["linear", "diffdeur"], choices=sorted(METHODS))
    ap.add_argument("--prior", default=DEFAULT_PRIOR, help="a shipped prior's name or a weights file")
    ap.add_argument("--upsampler", default=None, help="learned upsampler weights (default: the shipped ones)")
    ap.add_argument("--quality", default="default")
    ap.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lpips", action="store_true")
    ap.add_argument("--noise-sigma", type=float, default=None, help="override the track's noise level (0: resolution loss only)")
    ap.add_argument("--ssim-split", action="store_true", help="also the local SSIM inside and outside the head")
    ap.add_argument("--crop-to-head", action="store_true",
                    help="crop the HF volume to the bounding box of its voxels above 5%% of the 99.5th percentile, plus 4 voxels (faster)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
    img = nib.as_closest_canonical(nib.load(args.hf_file))
    hf, hf_aff = np.asarray(img.dataobj, dtype=np.float32), img.affine
    if args.crop_to_head:
        hf, hf_aff = _crop_to_head(hf, hf_aff)
    if args.track == "stacks":
        sim = simulate_stacks(hf, hf_aff, seed=0)
        stacks = [s["lf"] for s in sim["stacks"]], [s["affine"] for s in sim["stacks"]]
        lf, lf_aff, gt, gt_aff = stacks[0][0], stacks[1][0], sim["gt"], sim["gt_affine"]
    else:
        track = dict(TRACKS[args.track])
        if args.noise_sigma is not None:
            track["noise_sigma"] = args.noise_sigma
        lf, lf_aff, gt, gt_aff = simulate_lowfield(hf, hf_aff, **track, seed=0)
    resolution = tuple(float(v) for v in np.sqrt((gt_aff[:3, :3] ** 2).sum(0)))
    prior = load_prior(args.prior) if any(METHODS[m].needs_prior for m in args.methods) else None
    upsampler = read_upsampler(args.upsampler) if args.upsampler else None
    for method in args.methods:
        given = dict(overrides)
        inputs = lf, lf_aff
        if args.track == "stacks" and METHODS[method].fuses_stacks:
            inputs = stacks
        elif args.track == "stacks":  # the reference alone: sim-lf-v2's PSF is in-plane only (as in sim_lf.py)
            given.setdefault("psf_sigma", (0.5, 0.5, 0.0))
        settings = EnhanceSettings.preset(args.quality, method=method, output_resolution=resolution, device="cpu", **given)
        t0 = time.time()
        res = enhance(*inputs, settings, prior=prior,
                      upsampler=upsampler or (load_upsampler() if settings.learned_upsampling else None))
        s = score_volume(res.image, res.affine, gt, gt_aff, lpips=args.lpips)
        lp = f" LPIPS {s['lpips']:.3f}" if args.lpips else ""
        split = " SSIM inside / outside the head {:.3f} / {:.3f}".format(
            *_ssim_inside_outside(res.image, res.affine, gt, gt_aff)) if args.ssim_split else ""
        print(f"{method:10s} PSNR {s['psnr']:.2f} SSIM {s['ssim']:.3f}{lp}{split} {time.time() - t0:.1f} s  {overrides}",
              flush=True)


if __name__ == "__main__":
    main()
