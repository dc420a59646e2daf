"""The time left of an enhancement, from what each part has measurably cost so far.

A sample of DiffDeuR is one start (the prior on the LF slices, the INR's first fit: minutes on a
full head) and then ``steps`` sampler steps of a different, smaller cost. Dividing the elapsed time
by the ticks done, as if every tick cost the same, overstates the time left by the start's share
(issue 19 measured "about 2228 s left" with 263 s to go). Here the start ticks and the step ticks
are timed apart, and the time left is their measured means times what is left of each. Before a
step has been timed, the method may give the step's expected cost from the parts of the start it
shares with a step (DiffDeuR: its INR iterations and render, and one batch of the prior timed on the
output grid); without that there is no estimate (``None``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class TimeLeft:
    """Call :meth:`tick` at the end of each part; it returns ``(done, total, elapsed s, estimated s left | None)``."""

    steps_per_sample: int            # ticks of one sample, its start included
    samples: int = 1
    start_ticks: int = 0             # the first ticks of each sample that are its start (0: every tick is a step)
    clock: callable = time.monotonic
    t0: float | None = None
    _last: float = field(init=False, default=0.0)
    _starts: list = field(init=False, default_factory=list)
    _steps: list = field(init=False, default_factory=list)
    _expected_step: float | None = field(init=False, default=None)

    def __post_init__(self):
        self.t0 = self.clock() if self.t0 is None else self.t0
        self._last = self.t0

    @property
    def total(self) -> int:
        return self.steps_per_sample * self.samples

    def tick(self, expected_step_s: "float | Callable[[], float] | None" = None) -> tuple[int, int, float, float | None]:
        """One part done; ``expected_step_s``: what a step should cost, used until one is timed (a function is
        called only then: pricing a step may cost work, as DiffDeuR's timed prior batch does)."""
        if expected_step_s is not None and not self._steps:
            self._expected_step = float(expected_step_s() if callable(expected_step_s) else expected_step_s)
        now = self.clock()
        done = len(self._starts) + len(self._steps)
        in_sample = done % self.steps_per_sample
        (self._starts if in_sample < self.start_ticks else self._steps).append(now - self._last)
        self._last = now
        done += 1
        return done, self.total, now - self.t0, self.estimate(done)

    def estimate(self, done: int) -> float | None:
        """Seconds left after ``done`` ticks, from the mean cost of each kind of tick measured so far."""
        left = self.total - done
        if left <= 0:
            return 0.0
        step_ticks = self.steps_per_sample - self.start_ticks
        if self._steps:
            step = sum(self._steps) / len(self._steps)
        elif step_ticks > 0 and self._expected_step is None:
            return None
        else:
            step = self._expected_step or 0.0
        start = sum(self._starts) / len(self._starts) if self._starts else 0.0
        starts_left = sum(1 for tick in range(done, self.total) if tick % self.steps_per_sample < self.start_ticks)
        return starts_left * start + (left - starts_left) * step
