"""The sha256 of every method's output on one simulated volume: run it before and after a change
that must not change the method (a refactor), and compare the two listings line by line.

    python benchmarks/output_hashes.py ../shared/data/hf/ixi_2mm/IXI212-HH-1643_T1w.nii.gz
    python benchmarks/output_hashes.py ../shared/data/hf/ixi_2mm/IXI212-HH-1643_T1w.nii.gz --learned-upsampling off

One CPU thread, the 2 mm track of sim-lf-v1, seed 0; each line gives the method, the settings it
overrides, the output shape, the first 16 hex digits of the image's sha256 (and of the std map
with several samples) and the time. The last line is DiffDeuR on a crop with a 1.5 mm output,
a grid that does not subdivide the LF voxels.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffdeur_bids.enhance import EnhanceSettings, enhance  # noqa: E402
from diffdeur_bids.enhance.grids import voxel_sizes  # noqa: E402
from diffdeur_bids.evaluation.protocol import TRACKS, simulate_lowfield  # noqa: E402
from diffdeur_bids.priors import load_prior, load_upsampler  # noqa: E402

RUNS = [("linear", {}), ("cubic", {}), ("start", {}), ("inr", {}), ("prior_cf", {}), ("dps", {"dps_steps": 4}),
        ("diffdeur", {}), ("diffdeur", {"num_samples": 2, "steps": 3})]


def digest(array) -> str:
    return "-" if array is None else hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("hf_file")
    ap.add_argument("--learned-upsampling", choices=["on", "off"], default="on")
    args = ap.parse_args()
    torch.set_num_threads(1)
    prior, upsampler, upsampling = load_prior(), load_upsampler(), args.learned_upsampling == "on"
    img = nib.as_closest_canonical(nib.load(args.hf_file))
    lf, lf_aff, _, gt_aff = simulate_lowfield(np.asarray(img.dataobj, dtype=np.float32), img.affine,
                                              **TRACKS["2mm"], seed=0)
    resolution = tuple(float(v) for v in voxel_sizes(gt_aff))
    for method, extra in RUNS:
        t0 = time.time()
        settings = EnhanceSettings.preset("default", method=method, output_resolution=resolution, device="cpu",
                                          learned_upsampling=upsampling, **extra)
        res = enhance(lf, lf_aff, settings, prior=prior, upsampler=upsampler)
        print(method, extra, res.image.shape, digest(res.image), digest(res.std), f"{time.time() - t0:.1f}s", flush=True)
    res = enhance(lf[:40, :40, :20], lf_aff, EnhanceSettings.preset("fast", output_resolution=1.5, device="cpu", steps=2,
                                                                   learned_upsampling=upsampling),
                  prior=prior, upsampler=upsampler)
    print("diffdeur-1.5mm", res.image.shape, digest(res.image), flush=True)


if __name__ == "__main__":
    main()
