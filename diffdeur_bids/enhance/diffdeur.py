"""DiffDeuR: half-quadratic splitting between the diffusion prior and an INR data-fidelity step.

The INR is first fitted to the data with a pull towards the data-consistent start
(``start.py``), which keeps it from fitting the noise and gives the sampler its starting
point. When the start went through the learned upsampler (one scan's, or each of several
stacks'), the INR is a correction of that start (``f = start + INR``) rather than an image of
its own. Then, at each level of the HQS loop (``hqs.py``), the fidelity step is a few
optimiser steps of the INR on

    ||A f - y||^2 / sigma_n^2 + rho_t ||f - z||^2,   rho_t = mu / sigma_t^2

warm-started from the previous level: DiffPIR's form of the poster's ``mu * sigma_t^2``
weighting, with both terms divided by ``sigma_t^2``.

Several stacks: the data term sums over them (``fusion.py``), the start aligns and fuses them
(``alignment.py``), and from the middle of the schedule on the stacks' motions are optimised
with the INR (as slice-to-volume reconstruction refines its slices' positions).
"""

from __future__ import annotations

import time

import torch

from .forward import MIN_NOISE_SIGMA
from .hqs import karras_sigmas, sample_problem
from .inr import fit_inr, make_inr, make_optimizer, render
from .problem import Problem
from .start import data_consistent_start, upsampled_start


MOTION_LR = 0.01  # deg / mm per INR step while the motions are refined


def run_diffdeur(p: Problem) -> torch.Tensor:
    s, obs = p.settings, p.reference
    # an upsampled start (one scan's, or the fused stacks') holds detail that the INR's few iterations from
    # scratch would not reach: the INR is then a small correction of it (held near it, with smaller steps)
    corrects_start = p.upsampler is not None
    if corrects_start:
        start_fid, start = upsampled_start(p)
        fid, base = p.fidelity(base=(start_fid, start)), start
        pull, init_iters, lr = s.upsampled_pull, s.upsampled_init_iters, s.upsampled_lr
    else:
        start = data_consistent_start(p)
        fid, base = p.fidelity(), None
        pull, init_iters, lr = s.inr_init_pull, s.inr_init_iters, s.inr_lr
    inr = make_inr(obs.y.shape, obs.fid_grid, p.out_grid, p.device, init_value=float(obs.y.mean()),
                   correction=corrects_start)
    opt = make_optimizer(inr, lr)
    t0 = time.perf_counter()
    fit_inr(inr, fid, opt, init_iters, z=start, rho=pull / max(obs.noise_sigma, MIN_NOISE_SIGMA) ** 2)
    t1 = time.perf_counter()
    x0 = render(inr, p.out_grid, base)
    # a step is inr_iters of the same INR iterations, one render and one prior pass over the output grid
    inr_iter_s, render_s = (t1 - t0) / init_iters, time.perf_counter() - t1
    p.tick(expected_step_s=lambda: s.inr_iters * inr_iter_s + render_s + p.prior_cost(x0))

    sigmas = karras_sigmas(s.steps, s.sigma_start, s.sigma_end)
    refine_from = sigmas[len(sigmas) // 2] if p.fused and s.steps > 1 else -1.0

    refining = []

    def inr_prox(z, sigma, _previous):
        if sigma <= refine_from and not refining:
            fid.refine_motion(opt, MOTION_LR)
            refining.append(sigma)
        fit_inr(inr, fid, opt, s.inr_iters, z=z, rho=s.mu / sigma**2)
        return render(inr, p.out_grid, base)

    x = sample_problem(p, inr_prox, x0)
    if p.fused:
        p.notes["refined_motions"] = [o.operator.motion().round(6).tolist() for o in p.observations]
    return x
