"""The stack operators' own cost on a full head's three stacks (sim-lf-v2 at 1 mm output), per part.

    python benchmarks/stack_operator_speed.py --threads 2 --out <file.json>

For each stack (``axi`` the unmoved reference, read by upsampling; ``cor`` and ``sag`` moved, read by
``grid_sample``): the forward pass, forward + autograd backward (as the INR's fit runs it) and the adjoint
(as the conjugate-gradient projections run it), medians of three. Beside them, the resampling kernels the
operators replaced: ``grid_sample`` in one batch (torch parallelises its 3D kernel over the batch only) against
``grids.sample_points``, and torch's backward kernel of the trilinear upsampling against
``grids.AlignedUpsampling.adjoint``. Random volume and a fixed 1 deg / 1 mm motion: times only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import common  # noqa: E402
from full_head import FULL_HEADS, simulate  # noqa: E402
from inr_speed import _seconds  # noqa: E402
from sim_lf import DEFAULT_DATA  # noqa: E402

from diffdeur_bids.enhance.grids import output_grid, sample_points, sample_points_adjoint  # noqa: E402
from diffdeur_bids.enhance.stacks import StackOperator  # noqa: E402

MOTION = [1.0, -0.5, 0.3, 0.5, 1.0, -0.2]  # rotation vector (deg), translation (mm)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    case = simulate(args.data / FULL_HEADS[0], "stacks")
    lfs, affines = case["lf"], case["lf_affine"]
    out = output_grid(lfs[0].shape, affines[0], 1.0)
    centre = (affines[0] @ np.r_[(np.asarray(lfs[0].shape) - 1) / 2.0, 1.0])[:3]
    ops = [StackOperator(out, lf.shape, a, 0.5, centre, "cpu") for lf, a in zip(lfs, affines)]
    for op in ops[1:]:
        op.params = torch.tensor(MOTION, dtype=torch.float64)
    x = torch.rand(tuple(out.shape), generator=torch.Generator().manual_seed(0))
    rows = []
    for name, op in zip(["axi", "cor", "sag"], ops):
        y = op(x).detach()

        def forward_backward(op=op, y=y):
            f = x.clone().requires_grad_(True)
            (op(f) - y).pow(2).sum().backward()

        fine = op.sample(x)
        row = {"stack": name, "output_shape": list(out.shape), "fine_shape": list(op.fine.shape),
               "read_by": "upsampling" if op._upsampling() else "grid_sample",
               "forward_s": _seconds(lambda: op(x)), "forward_backward_s": _seconds(forward_backward),
               "adjoint_s": _seconds(lambda: op.adjoint(y))}
        if op._upsampling():
            up = op._aligned
            row["upsampling_transpose_s"] = {
                "torch_backward_kernel": _seconds(lambda: torch.ops.aten.upsample_trilinear3d_backward(
                    fine[None, None], list(up.shape), [1, 1, *up.in_shape], False, *up.scales)),
                "aligned_upsampling_adjoint": _seconds(lambda: up.adjoint(fine))}
        else:
            points = op._points()
            row["grid_sample_s"] = {
                "one_batch_forward": _seconds(lambda: F.grid_sample(x[None, None], points, mode="bilinear",
                                                                    padding_mode="border", align_corners=True)),
                "sample_points_forward": _seconds(lambda: sample_points(x, points)),
                "one_batch_adjoint": _seconds(lambda: torch.ops.aten.grid_sampler_3d_backward(
                    fine[None, None], torch.zeros((1, 1, *out.shape)), points, 0, 1, True, [True, False])),
                "sample_points_adjoint": _seconds(lambda: sample_points_adjoint(fine, points, tuple(out.shape)))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        common.write_json(args.out, {"threads": args.threads, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
