"""The HQS / DiffPIR sampler loop shared by DiffDeuR and its closed-form ablation.

Per noise level ``sigma``, from high to low (Zhu et al. 2023, DiffPIR):

1. prior step: ``z = D(x; sigma)``, Tweedie's posterior mean (slicing axis cycles 0, 1, 2);
2. fidelity step: ``x0 = prox(z, sigma, x0)`` (an INR fit or a least-squares solve);
3. re-noise: ``x = x0 + sigma' (sqrt(1 - zeta) eps_hat + sqrt(zeta) eps)`` with
   ``eps_hat = (x - x0) / sigma``: the fidelity correction re-enters the noise, as in DiffPIR
   (DDIM's ``(x - z) / sigma`` would drop it).

The result is the mean of the fidelity estimates over the last ``average_fraction`` of the
levels: with few optimiser steps per level the last estimate alone still wanders, and the mean
of the low-noise estimates is a cheap step towards the posterior mean.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .problem import Problem

Denoise = Callable[[torch.Tensor, float, int], torch.Tensor]         # D(x, sigma, axis)
Prox = Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]   # prox(z, sigma, previous x0)
Randn = Callable[[tuple], torch.Tensor]


def karras_sigmas(n: int, sigma_hi: float, sigma_lo: float, rho: float = 7.0) -> list[float]:
    """Noise levels from high to low, spaced as in Karras et al. (2022)."""
    if n == 1:
        return [float(sigma_hi)]
    a, b = sigma_hi ** (1 / rho), sigma_lo ** (1 / rho)
    return [float((a + i / (n - 1) * (b - a)) ** rho) for i in range(n)]


def sample_hqs(denoise: Denoise, prox: Prox, start: torch.Tensor, sigmas: list[float], randn: Randn,
               zeta: float, average_fraction: float, callback: Callable[[int], None] | None = None) -> torch.Tensor:
    """Run the loop from ``start`` over ``sigmas``; ``callback(i)`` after each level."""
    first_averaged = len(sigmas) - max(1, math.ceil(average_fraction * len(sigmas)))
    x0 = start
    x = x0 + sigmas[0] * randn(x0.shape)
    total, count = torch.zeros_like(x0), 0
    for i, sigma in enumerate(sigmas):
        z = denoise(x, sigma, i % 3)
        x0 = prox(z, sigma, x0)
        if i >= first_averaged:
            total += x0
            count += 1
        if i + 1 < len(sigmas):
            eps_hat = (x - x0) / sigma
            x = x0 + sigmas[i + 1] * (math.sqrt(1 - zeta) * eps_hat + math.sqrt(zeta) * randn(x0.shape))
        if callback:
            callback(i)
    return total / count


def sample_problem(p: Problem, prox: Prox, start: torch.Tensor) -> torch.Tensor:
    """:func:`sample_hqs` with the problem's prior, schedule and settings; one progress tick per level."""
    s = p.settings
    sigmas = karras_sigmas(s.steps, s.sigma_start, s.sigma_end)
    return sample_hqs(p.denoise, prox, start, sigmas, p.randn, s.zeta, s.average_fraction, callback=lambda i: p.tick())
