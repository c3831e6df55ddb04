"""Resumable checkpoints: weights, optimizer, scheduler, loop state, RNG states and the resolved config.

One file, ``checkpoint.pt``, replaced atomically (temp + rename) so an interrupted save never
leaves a broken checkpoint behind.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from heed.errors import HeedError
from heed.io import atomic_path

CHECKPOINT = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(out_dir: Path, *, model: Any, optimizer: Any, scheduler: Any, loop: dict[str, Any],
         config: dict[str, Any], best_state: dict[str, torch.Tensor] | None) -> Path:
    path = out_dir / CHECKPOINT
    payload = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "loop": loop,
        "config": config,
        "best_state": best_state,
        "rng": rng_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise HeedError(f"--resume {path.parent}: no {CHECKPOINT} there; a run writes one with "
                        "--checkpoint-every N or when it is interrupted")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise HeedError(f"{path}: not a readable heed checkpoint ({type(e).__name__})") from None
