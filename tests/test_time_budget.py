"""--time-budget: the run's length from the pace of its first steps, with the schedule and the saved
settings following it (a fake clock stands in for the machine's)."""

from __future__ import annotations

import json

import pytest

from heed.train.budget import PACE_STEPS, Pace
from tests.test_train import quiet, run_config, stop_at, train


class Clock:
    """``time.perf_counter`` for heed.train.loop: every reading is ``tick`` seconds after the last, so
    each training step (two readings around it) takes ``tick``."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock(0.5)
    monkeypatch.setattr("heed.train.loop.time.perf_counter", c)
    return c


def test_pace_counts_the_steps_that_fit():
    pace = Pace(budget=10.0, decide_at=PACE_STEPS, seconds=[3.0] + [0.5] * 5)  # the first step is left out
    assert pace.per_step() == 0.5 and pace.steps() == 6 + 9  # 5.5 s spent, 4.5 s left
    assert Pace(budget=1.0, decide_at=6, seconds=[3.0] * 6).steps() == 6  # over budget: what was taken
    # a resumed run: its 4 earlier steps count at the pace measured now
    assert Pace(budget=10.0, decide_at=6, done=4, seconds=[0.5, 0.5]).steps() == 20  # 10 s at 0.5
    assert Pace.for_run(None, 0, 0) is None and Pace.for_run(10.0, 10, 10) is None
    assert Pace.for_run(10.0, 3, 0).decide_at == PACE_STEPS and Pace.for_run(10.0, 12, 0).decide_at == 12


def test_time_budget_sets_the_steps_and_the_schedule_decays_to_them(data_file, tmp_path, clock):
    logs = []
    out = tmp_path / "run"
    run = run_config(data_file, out, epochs=40, eval_every=1, eval_batches=1, schedule="cosine", time_budget=10.0)
    result = train(run, log=logs.append)
    assert result.steps == 20  # 0.5 s a step in 10 s
    assert any("--time-budget 10s: 0.50s a step here, so 20 steps (of 120)" in line for line in logs)
    lrs = [row["lr"] for row in result.metrics if row.get("step") == 20]
    assert lrs and lrs[-1] == pytest.approx(0.1 * run.train.lr)  # cosine ends at 10%: the schedule knew 20
    saved = json.loads((out / "heed.json").read_text())
    assert saved["config"]["train"]["max_steps"] == 20 and saved["config"]["train"]["time_budget"] is None


def test_the_steps_after_a_late_decision_follow_the_new_length(data_file, tmp_path, clock):
    """No warmup: steps 1-6 ran on the 120-step cosine; from step 7 on the rate is the 20-step one's.
    (A row's lr is the rate of the step after it.)"""
    from heed.train.schedule import lr_lambda

    run = run_config(data_file, tmp_path / "run", epochs=40, eval_every=1, eval_batches=1, schedule="cosine",
                     time_budget=10.0)
    rates = {row["step"]: row["lr"] for row in train(run, log=quiet).metrics if "step" in row}
    short, long = lr_lambda(0, 20, "cosine"), lr_lambda(0, 120, "cosine")
    assert rates[5] == pytest.approx(run.train.lr * long(5)) and long(5) - short(5) > 0.01
    for step in (6, 12, 19):
        assert rates[step] == pytest.approx(run.train.lr * short(step))


def test_pace_is_the_median_so_a_stall_moves_it_little():
    pace = Pace(budget=100.0, decide_at=6, seconds=[3.0, 1.0, 1.0, 30.0, 1.0, 1.0])  # one compile in the middle
    assert pace.per_step() == 1.0
    pace.decided = True
    pace.seconds += [2.0] * 10  # after the decision: the last 10 steps' pace
    assert pace.per_step() == 2.0 and pace.due(16) and pace.due(26) and not pace.due(17)


def test_a_machine_that_slows_down_gets_fewer_steps(data_file, tmp_path, clock):
    """The count fixed at step 6 (20 steps at 0.5 s) is checked every 10 steps: from step 9 on a step takes
    1 s, so at step 16 the 10 s are spent and the run ends there, its schedule decayed to 16."""
    def slower(state):
        if state.step == 8:
            clock.tick = 1.0

    logs = []
    run = run_config(data_file, tmp_path / "run", epochs=40, eval_every=1, eval_batches=1, schedule="cosine",
                     time_budget=10.0)
    result = train(run, log=logs.append, on_step=slower)
    assert result.steps == 16
    assert any("--time-budget 10s: 1.00s a step here now; 16 steps instead of 20" in line for line in logs)
    rates = {row["step"]: row["lr"] for row in result.metrics if "step" in row}
    assert rates[16] == pytest.approx(0.1 * run.train.lr)


def test_time_budget_never_adds_steps(data_file, tmp_path, clock):
    result = train(run_config(data_file, tmp_path / "run", epochs=3, time_budget=1000.0), log=quiet)
    assert result.steps == 9  # 3 epochs of 3 steps: the budget would allow far more


def test_a_resumed_budgeted_run_keeps_its_length(data_file, tmp_path, clock):
    out = tmp_path / "run"
    run = run_config(data_file, out, epochs=40, eval_every=1, eval_batches=1, time_budget=10.0)
    with pytest.raises(KeyboardInterrupt):
        train(run, log=quiet, on_step=stop_at(8))
    from heed.train import checkpoint

    resumed = checkpoint.load(out)
    assert resumed["config"]["train"]["max_steps"] == 20
    clock.tick = 5.0  # a slower machine now: the length was fixed at step 6 and stays
    from heed.config import RunConfig

    result = train(RunConfig.from_dict(resumed["config"]), resume=resumed, log=quiet)
    assert result.steps == 20
