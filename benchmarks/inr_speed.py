"""The INR's own cost on a full head's grid: the MLP per chunk size, and one render and one backward pass.

    python benchmarks/inr_speed.py --threads 2

On a grid of 176 x 238 x 168 voxels (a full head at 1 mm split from 2 x 2 x 4 mm LF voxels) with random
weights: the same MLP on all voxels at several voxels per call (``inr.MLP_CHUNK`` is chosen here), then
``render`` and ``features`` + ``backprop`` as the fidelity step runs them (the second of three repeats).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import common  # noqa: E402,F401  (puts the checkout on the path)

from diffdeur_bids.enhance.grids import subdivided_grid  # noqa: E402
from diffdeur_bids.enhance.inr import FeatureGridINR, render  # noqa: E402

LF_SHAPE, K = (88, 119, 42), (2, 2, 4)


def _seconds(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(sorted(times)[len(times) // 2], 3)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    grid = subdivided_grid(LF_SHAPE, np.diag([*K, 1.0]), K)
    inr = FeatureGridINR(LF_SHAPE, grid.shape)
    n = int(np.prod(grid.shape))
    feats, grad = torch.randn(n, 8), torch.randn(n)

    rows = []
    for chunk in (2**12, 2**14, 2**16, 2**18, 2**20):
        def forward():
            with torch.no_grad():
                for s in range(0, n, chunk):
                    inr.mlp(feats[s:s + chunk])

        def forward_backward():
            for s in range(0, n, chunk):
                part = feats[s:s + chunk].requires_grad_(True)
                inr.mlp(part)[:, 0].backward(grad[s:s + chunk])

        rows.append({"mlp_voxels_per_call": chunk, "forward_s": _seconds(forward),
                     "forward_backward_s": _seconds(forward_backward)})
        print(json.dumps(rows[-1]), flush=True)
    image_grad = torch.randn(grid.shape)

    def fit_step():
        inr.backprop(inr.features(grid), image_grad)

    print(json.dumps({"grid": list(grid.shape), "render_s": _seconds(lambda: render(inr, grid)),
                      "features_and_backprop_s": _seconds(fit_step)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
