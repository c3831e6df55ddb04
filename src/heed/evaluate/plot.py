"""The judge's score histogram."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from heed.io import save_figure


def plot_histogram(scores: Sequence[float], path: Path, *, title: str) -> None:
    """Judge scores in ten bins of width 10 from 0 to 100."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(list(scores), bins=list(range(0, 101, 10)), edgecolor="white")
    ax.set_xlabel("judge score")
    ax.set_ylabel("responses")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
