"""Progress bars and log lines on stderr: one place that sets tqdm up for every stage."""

from __future__ import annotations

import sys
from typing import Any


def progress(total: int | None, desc: str, unit: str, *, initial: int = 0, enabled: bool | None = None,
             delay: float = 0.0, mininterval: float = 0.1, leave: bool = True) -> Any:
    """A tqdm bar on stderr, silent when stderr is not a terminal (``disable=None``), when ``enabled`` is
    False, and on every rank but the first under torchrun. ``delay``: shown only once the work has taken
    that many seconds; ``mininterval``: seconds between redraws; ``leave``: the bar stays when done."""
    from tqdm import tqdm

    from heed.runtime import distributed

    shown = enabled is not False and distributed.world().main
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, disable=None if shown else True,
                delay=delay, mininterval=mininterval, leave=leave)


def log(message: str) -> None:
    """Print a line without breaking a progress bar that is being drawn."""
    from tqdm import tqdm

    tqdm.write(message)
