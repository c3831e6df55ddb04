"""The loss plot: train and validation loss against steps, tokens seen on a second axis."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from heed.io import save_figure


def plot_losses(metrics: Sequence[dict[str, Any]], path: Path, *, best_step: int | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [m["train_loss"] for m in metrics], label="training loss")
    if any(m.get("val_loss") is not None for m in metrics):
        ax.plot(steps, [m.get("val_loss") for m in metrics], linestyle="-.", label="validation loss")
    if best_step is not None:
        ax.axvline(best_step, color="grey", linewidth=0.8, linestyle=":", label=f"best (step {best_step})")
    ax.set_xlabel("steps")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    top = ax.twiny()  # same data against tokens seen, for scale
    top.plot([m["tokens_seen"] for m in metrics], [m["train_loss"] for m in metrics], alpha=0)
    top.set_xlabel("tokens seen")
    fig.tight_layout()
    save_figure(fig, path)
