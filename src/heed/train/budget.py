"""``--time-budget``: a run sized by the time its steps take on this machine, not by a step count.

Steps cost what the hardware makes them cost (a 2-core CPU without bf16 trains several times slower
than one with it), so a fixed ``--max-steps`` either overruns a time limit or leaves time unused. The
pace is the median of the run's own first steps (the first left out: it allocates and warms caches),
and the step count fixed by the end of warmup, so a cosine schedule decays to that count as if it had
been given up front (with fewer warmup steps than ``PACE_STEPS`` the steps before the decision followed
a slightly longer schedule). A machine can slow down after its first steps (a CPU's boost clock, other
jobs): every ``RECHECK`` steps the count is checked against the pace of the last ``RECHECK`` steps and
shortened, never lengthened, when the rest would not fit; the schedule then decays to the new count
from where it is.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

PACE_STEPS = 6  # the step count is decided after this many steps at the earliest (or at the end of warmup)
RECHECK = 10  # steps between checks of the count against the recent pace


@dataclass
class Pace:
    """Seconds each step took; ``steps`` is how many fit in the budget at the pace so far."""

    budget: float  # seconds of training steps (evaluations are not counted)
    decide_at: int  # the step after which the length is first fixed
    done: int = 0  # steps taken before the pace was first observed (a resumed run)
    seconds: list[float] = field(default_factory=list)
    decided: bool = False

    @classmethod
    def for_run(cls, budget: float | None, warmup_steps: int, step: int) -> "Pace | None":
        """None when there is nothing to decide: no budget, or a resumed run already past the decision."""
        decide_at = max(PACE_STEPS, warmup_steps)
        return None if budget is None or step >= decide_at else cls(budget, decide_at, done=step)

    def observe(self, seconds: float) -> None:
        self.seconds.append(seconds)

    def due(self, step: int) -> bool:
        """Whether to (re)count after ``step``: at ``decide_at``, then every ``RECHECK`` steps."""
        return step >= self.decide_at and (step - self.decide_at) % RECHECK == 0

    def per_step(self) -> float:
        """Before the decision, the median step after the first (a stall, e.g. a recompile under
        --compile, moves it little where it would move a mean); after it, the median of the last
        ``RECHECK`` steps, the machine's pace now."""
        recent = self.seconds[-RECHECK:] if self.decided else self.seconds[1:]
        return statistics.median(recent or self.seconds)

    def steps(self) -> int:
        """How many steps fit in the budget: those taken, then the rest at ``per_step`` (steps taken before
        a resume count at that pace too).

        >>> Pace(budget=60.0, decide_at=6, seconds=[9.0, 2.0, 2.0, 2.0, 2.0, 2.0]).steps()  # 41 s left: 20 more
        26
        """
        per_step = max(self.per_step(), 1e-9)
        left = self.budget - sum(self.seconds) - self.done * per_step
        return self.done + len(self.seconds) + max(0, math.floor(left / per_step))
