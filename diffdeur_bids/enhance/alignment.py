"""Several stacks into one start: register their motions, then one damped least-squares step through all.

The motions are registered (``registration.py``) to the reconstruction so far: first the
reference's cubic interpolation, then the fused image itself. The fused image minimises

    ||x - c||^2 + sum_j (K_j / lambda) (sigma_ref / sigma_j)^2 ||A_j x - z_j||^2

(``c`` the reference's interpolation, or in the last round the mean of the stacks' upsampled starts
when ``start.py`` gives it, ``z_j`` stack ``j``'s data, ``K_j`` its points per voxel,
``lambda`` the start's damping): for one stack, the start's projection step (``start.py``).
A registration that fails (a motion beyond ``MAX_ROTATION_DEG`` / ``MAX_TRANSLATION_MM``, or a
stack that the reference's interpolation does not match: ``align_stacks``) raises
:class:`RegistrationError`, so nothing is fused misaligned.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .errors import RegistrationError
from .grids import resample
from .linalg import conjugate_gradient
from .problem import Problem
from .registration import LEVELS, register
from .rigid import rotation_deg, translation_mm

PROJECTION_ITERS = 30
ALIGN_ROUNDS = 2           # register to the reference's interpolation, then to the fused image
ROUND_ITERS = PROJECTION_ITERS // ALIGN_ROUNDS  # each round's projection goes on from the last round's
# the first round registers to the reference's interpolation, which lacks the detail across its thick
# slices that the exact operator's level would fit: only the blurred levels; the second round refines
FIRST_ROUND_LEVELS = LEVELS[:-1]
MAX_ROTATION_DEG = 15.0    # a registered motion beyond these is a failed registration
MAX_TRANSLATION_MM = 20.0
MIN_EXPLAINED = 0.5        # share of a stack's signal variance the reference's interpolation must explain
# (the reference's interpolation lacks the detail across its thick slices that the other stacks hold, so a
# well-registered stack's share is well below 1 at 1 mm; about 0.75 in `sim_lf.py --mni --crop 64 --tracks stacks`)
MIN_EDGES = 0.6            # edge correlation (``registration.detail_ncc``) with the reference's interpolation
# (another head, or this one misplaced, matches the outline and the explained share but not the edges inside:
# benchmarks/README.md, "Refusing a stack that is not this head")


def fused_projection(p: Problem, start: torch.Tensor, zs: list[torch.Tensor], iters: int = PROJECTION_ITERS,
                     x0: torch.Tensor | None = None):
    """``argmin ||x - start||^2 + sum_j w_j ||A_j x - z_j||^2`` over every stack, by conjugate gradients from ``x0``
    (default ``start``)."""
    ref_var = p.reference.noise_sigma ** 2
    weights = [float(np.prod(o.operator.k)) / max(p.settings.start_damping, 1e-6) * ref_var / max(o.noise_sigma**2, 1e-12)
               for o in p.observations]
    ops = [o.operator for o in p.observations]

    def normal(v):
        return v + sum(w * op.adjoint(op(v)) for w, op in zip(weights, ops))

    b = start + sum(w * op.adjoint(z) for w, op, z in zip(weights, ops, zs))
    return conjugate_gradient(normal, b, start if x0 is None else x0, iters=iters)


def failed(found: dict, check_match: bool = True) -> bool:
    """Whether one stack's registration record (``align_stacks``) fails: a motion beyond the limits, or with
    ``check_match``, a stack the reference does not match."""
    return (found["rotation_deg"] > MAX_ROTATION_DEG or found["translation_mm"] > MAX_TRANSLATION_MM
            or check_match and (found["explained"] < MIN_EXPLAINED or found["edges"] < MIN_EDGES or found["gain"] <= 0))


def align_stacks(p: Problem, x: torch.Tensor, zs: list[torch.Tensor], levels=LEVELS, check_match: bool = False) -> list[dict]:
    """Register every stack but the reference to ``x``; raise :class:`RegistrationError` when one fails: a motion
    beyond the limits, or with ``check_match``, a stack that ``x`` seen through it does not match (less than
    ``MIN_EXPLAINED`` of its signal variance, its variance less the noise's, explained; its edges correlating
    less than ``MIN_EDGES``; a gain that is not positive)."""
    found = [{"reference": True}]
    for obs, z in zip(p.observations[1:], zs[1:]):
        noise_var = obs.noise_sigma ** 2 if z is obs.y else 0.0  # data denoised by the prior: little noise left
        quality = register(obs.operator, x, z, levels, noise_var ** 0.5)
        motion = obs.operator.motion()
        signal_var = max(float(z.var()) - noise_var, 1e-12)
        explained = 1.0 - max(quality.residual_rms ** 2 - noise_var, 0.0) / signal_var
        found.append({"reference": False, "ncc": round(quality.ncc, 4), "explained": round(explained, 4),
                      "edges": round(quality.detail, 4), "gain": round(quality.gain, 4),
                      "rotation_deg": round(rotation_deg(motion), 3),
                      "translation_mm": round(translation_mm(motion, obs.operator.centre), 3),
                      "motion": motion.round(6).tolist()})
    bad = [i for i, f in enumerate(found) if not f["reference"] and failed(f, check_match)]
    if bad:
        raise RegistrationError(
            "stack(s) " + ", ".join(str(i) for i in bad) + " could not be aligned with the reference: "
            + "; ".join(f"stack {i}: rotation {found[i]['rotation_deg']:.1f} deg, translation "
                        f"{found[i]['translation_mm']:.1f} mm, {found[i]['explained']:.0%} of its signal explained, "
                        f"edge correlation {found[i]['edges']:.2f}, intensity gain {found[i]['gain']:.2f}" for i in bad)
            + f" (limits {MAX_ROTATION_DEG:g} deg, {MAX_TRANSLATION_MM:g} mm, {MIN_EXPLAINED:.0%} explained, edge "
            f"correlation {MIN_EDGES:g}, a positive gain: the stacks must be of one head, in one contrast)", found)
    return found


def align_and_fuse(p: Problem, zs: list[torch.Tensor], centre: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
    """Align every stack's data ``zs`` and fuse them on the output grid; the registration goes to ``p.notes``.

    ``centre``, called once the motions are registered, gives the image the last round's fused image stays
    near (``c`` above) in place of the reference's interpolation.
    """
    c = resample(zs[0], p.reference.grid, p.out_grid, order=3).clamp_min(0)
    x = c
    for round_ in range(ALIGN_ROUNDS):
        first = round_ == 0  # against the reference alone: a stack that does not match it is refused here
        last = round_ == ALIGN_ROUNDS - 1
        p.notes["stacks"] = align_stacks(p, x, zs, FIRST_ROUND_LEVELS if first else LEVELS[1:], check_match=first)
        if last and centre is not None:
            c = x = centre()
        x = fused_projection(p, c, zs, ROUND_ITERS, x0=None if first else x)
    return x
