"""The time left of an enhancement: the start and the sampler steps are timed apart (issue 19's honest ETA)."""

from diffdeur_bids.enhance.progress import TimeLeft


def clock(*times):
    values = iter(times)
    return lambda: next(values)


def test_the_start_is_not_counted_as_a_step():
    # a start of 100 s, then steps of 10 s: elapsed / ticks would say 400 s left after the start, and 165 s after a step
    left = TimeLeft(steps_per_sample=5, start_ticks=1, clock=clock(0, 100, 110, 120, 130, 140))
    assert left.tick() == (1, 5, 100, None)  # no step timed yet: no estimate rather than a wrong one
    assert left.tick() == (2, 5, 110, 30.0)
    assert left.tick() == (3, 5, 120, 20.0)
    assert left.tick()[3] == 10.0 and left.tick() == (5, 5, 140, 0.0)


def test_later_samples_count_their_own_start():
    left = TimeLeft(steps_per_sample=3, samples=2, start_ticks=1, clock=clock(0, 60, 70, 80))
    left.tick(), left.tick()
    assert left.tick() == (3, 6, 80, 60.0 + 2 * 10.0)  # the second sample: one start and two steps


def test_methods_without_a_start_use_the_mean_step():
    left = TimeLeft(steps_per_sample=4, clock=clock(0, 5, 15))
    assert left.tick() == (1, 4, 5, 15.0)
    assert left.tick() == (2, 4, 15, 15.0)


def test_an_expected_step_cost_gives_the_first_line_an_estimate():
    left = TimeLeft(steps_per_sample=5, start_ticks=1, clock=clock(0, 100, 112, 124))
    assert left.tick(expected_step_s=10.0) == (1, 5, 100, 40.0)  # four steps of the expected 10 s
    assert left.tick() == (2, 5, 112, 36.0)  # then the measured 12 s replaces the expectation
    assert left.tick(expected_step_s=1.0)[3] == 24.0


def test_a_priced_step_is_asked_for_only_before_any_step_is_timed():
    calls = []

    def price():
        calls.append(1)
        return 10.0

    left = TimeLeft(steps_per_sample=3, samples=2, start_ticks=1, clock=clock(0, 100, 112, 124, 224))
    assert left.tick(expected_step_s=price) == (1, 6, 100, 10.0 + 10.0 + 100.0 + 20.0)
    left.tick(), left.tick()
    left.tick(expected_step_s=price)  # the second sample's start: its steps are known by now
    assert calls == [1]
