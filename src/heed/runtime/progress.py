"""Progress bars and log lines on stderr: one place that sets tqdm up for every stage."""

from __future__ import annotations

import sys
from typing import Any


def progress(total: int, desc: str, unit: str, *, initial: int = 0) -> Any:
    """A tqdm bar on stderr, silent when stderr is not a terminal (``disable=None``) and on every rank
    but the first under torchrun."""
    from tqdm import tqdm

    from heed.runtime import distributed

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr,
                disable=None if distributed.world().main else True)


def log(message: str) -> None:
    """Print a line without breaking a progress bar that is being drawn."""
    from tqdm import tqdm

    tqdm.write(message)
