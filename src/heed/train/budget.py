"""``--time-budget``: a run sized by the time its steps take on this machine, not by a step count.

Steps cost what the hardware makes them cost (a 2-core CPU without bf16 trains several times slower
than one with it), so a fixed ``--max-steps`` either overruns a time limit or leaves time unused. The
pace is the median of the run's own first steps (the first left out: it allocates and warms caches),
and the step count fixed once, by the end of warmup, so a cosine schedule decays to that count exactly
as if it had been given up front (with fewer warmup steps than ``PACE_STEPS`` the steps before the
decision followed a slightly longer schedule).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

PACE_STEPS = 6  # the step count is decided after this many steps at the earliest (or at the end of warmup)


@dataclass
class Pace:
    """Seconds each step took, until ``decide`` fixes the run's length."""

    budget: float  # seconds of training steps (evaluations are not counted)
    decide_at: int  # the step after which the length is fixed
    done: int = 0  # steps taken before the pace was first observed (a resumed run)
    seconds: list[float] = field(default_factory=list)

    @classmethod
    def for_run(cls, budget: float | None, warmup_steps: int, step: int) -> "Pace | None":
        """None when there is nothing to decide: no budget, or a resumed run already past the decision."""
        decide_at = max(PACE_STEPS, warmup_steps)
        return None if budget is None or step >= decide_at else cls(budget, decide_at, done=step)

    def observe(self, seconds: float) -> None:
        self.seconds.append(seconds)

    def due(self, step: int) -> bool:
        return step == self.decide_at

    def steps(self) -> int:
        """How many steps fit in the budget: those taken, then the rest at the pace of those after the first
        (steps taken before a resume count at that pace too).

        >>> Pace(budget=60.0, decide_at=6, seconds=[9.0, 2.0, 2.0, 2.0, 2.0, 2.0]).steps()  # 41 s left: 20 more
        26
        """
        per_step = max(self.per_step(), 1e-9)
        left = self.budget - sum(self.seconds) - self.done * per_step
        return self.done + len(self.seconds) + max(0, math.floor(left / per_step))

    def per_step(self) -> float:
        """The median step after the first: a stall (a recompile under --compile, another job) moves it
        little, where it would move a mean."""
        return statistics.median(self.seconds[1:] or self.seconds)
