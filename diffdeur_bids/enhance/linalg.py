"""Conjugate gradients for the symmetric positive-definite systems of the fidelity steps."""

from __future__ import annotations

from typing import Callable

import torch


def conjugate_gradient(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
                       x0: torch.Tensor | None = None, iters: int = 8) -> torch.Tensor:
    """Approximately solve ``apply(x) = b`` in ``iters`` iterations, from ``x0`` (zero if None).

    A fixed iteration count rather than a tolerance: the callers want a bounded cost, and a
    few iterations already act on the well-conditioned part of the system.
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - apply(x) if x0 is not None else b.clone()
    d = r.clone()
    rr = (r * r).sum()
    for _ in range(iters):
        q = apply(d)
        alpha = rr / (d * q).sum().clamp_min(1e-30)
        x += alpha * d
        r -= alpha * q
        rr_new = (r * r).sum()
        d = r + (rr_new / rr.clamp_min(1e-30)) * d
        rr = rr_new
    return x
