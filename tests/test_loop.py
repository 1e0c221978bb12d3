"""The one training loop: hooks fire at their steps and at the end, a stop request ends the
run at a step boundary, and resuming continues from `start`."""

import math

from jet_jax_train.loop import TrainLoop


def _loop(total, **kw):
    return TrainLoop(lambda state, x: (state + x, {"state": state}), stage="test",
                     total_steps=total, tokens=4, progress="none", **kw)


def test_hooks_fire_every_n_steps_and_at_the_end():
    seen = []
    loop = _loop(7).every(3, lambda i: seen.append(("every3", i.step, i.state)))
    loop.at_end(lambda i: seen.append(("end", i.step, i.state)))
    state, result = loop.run(0, lambda step: step)  # inputs 0..6 -> state 21
    assert state == 21
    assert seen == [("every3", 3, 3), ("every3", 6, 15), ("every3", 7, 21), ("end", 7, 21)]
    assert (result.start_step, result.end_step, result.interrupted) == (0, 7, False)
    assert result.tokens_per_s > 0


def test_stop_request_ends_at_a_step_boundary_and_resume_continues():
    steps = []
    loop = _loop(10, stop_requested=lambda _step: len(steps) == 4)
    loop.every(1, lambda i: steps.append(i.step))
    ends = []
    loop.at_end(lambda i: ends.append(i.step))
    state, result = loop.run(0, lambda step: 1)
    assert result.interrupted and result.end_step == 4 and state == 4 and ends == [4]
    state, result = _loop(10).run(state, lambda step: 1, start=result.end_step)
    assert state == 10 and result.end_step == 10 and not result.interrupted


def test_rates_exclude_the_first_step_and_nothing_runs_past_total():
    rates = []
    loop = _loop(3).every(1, lambda i: rates.append(i.tokens_per_s))
    _, result = loop.run(0, lambda step: 0)
    assert math.isnan(rates[0]) and all(r > 0 for r in rates[1:])
    _, result = _loop(3).run(0, lambda step: 0, start=3)
    assert result.end_step == 3 and math.isnan(result.tokens_per_s)
