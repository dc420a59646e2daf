"""The one table of methods: every name the settings, the CLI and the benchmark accept is here.

A method is a function ``Problem -> image on the output grid`` (normalised units) plus what the
caller must know about it: whether it needs a prior, how many progress ticks (``p.tick()``)
one sample makes, and whether it fuses several stacks (``Problem.observations``) into one
volume. Adding a method is adding one entry to :data:`METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import baselines
from .diffdeur import run_diffdeur
from .problem import Problem
from .settings import EnhanceSettings
from .start import run_start


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable[[Problem], torch.Tensor]
    needs_prior: bool
    ticks: Callable[[EnhanceSettings], int]  # progress ticks of one sample
    fuses_stacks: bool = False
    start_ticks: int = 0  # the first ticks of a sample that are its start, not a step (``progress.TimeLeft``)
    upsamples_start: bool = False  # one scan's start goes through the learned upsampler (``learned_upsampling``)


def _once(settings: EnhanceSettings) -> int:
    return 1


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("diffdeur", run_diffdeur, True, lambda s: s.steps + 1, fuses_stacks=True, start_ticks=1,
           upsamples_start=True),
    Method("linear", baselines.run_linear, False, _once),
    Method("cubic", baselines.run_cubic, False, _once),
    Method("cubic_bm3d", baselines.run_cubic_bm3d, False, _once),
    Method("inr", baselines.run_inr, False, _once, fuses_stacks=True),
    Method("dps", baselines.run_dps, True, lambda s: s.dps_steps),
    Method("prior_cf", baselines.run_prior_closed_form, True, lambda s: s.steps),
    Method("start", run_start, True, _once, fuses_stacks=True, upsamples_start=True),
]}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def check_settings(settings: EnhanceSettings) -> None:
    """Raise ``ValueError`` for an unknown method or an out-of-range setting."""
    get_method(settings.method)
    settings.validate()
