"""What the training loop carries (``heed.train.loop``): what ``setup`` hands it (``Setup``), where it is
(``LoopState``, all a checkpoint needs to continue), and what a finished run returns (``Trained``, with its
``TrainResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heed.config import FastPath, RunConfig
from heed.data.encode import EncodeReport, Example
from heed.data.records import Record, Split
from heed.data.templates import Template

if TYPE_CHECKING:
    import torch

    from heed.train.parallel import DataParallel


@dataclass
class LoopState:
    """Where the loop is: everything a checkpoint needs to continue exactly where it stopped."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens_seen: int = 0
    best_val: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    metrics: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    tokens_seen: int
    best_step: int | None
    best_val_loss: float | None
    final_train_loss: float | None
    final_val_loss: float | None
    stopped_early: bool
    seconds: float
    metrics: list[dict[str, Any]]


@dataclass
class Setup:
    """What the loop works on: data, model, optimizer, and the run's resolved settings."""

    run: RunConfig
    device: torch.device
    precision: str
    template: Template
    tokenizer: Any
    split: Split
    records: list[Record]
    report: EncodeReport
    train_examples: list[Example]
    val_examples: list[Example]
    model: Any
    optimizer: Any
    scheduler: Any
    total_steps: int
    drop_last: bool
    fast: FastPath
    audit: dict[str, Any] | None = None
    parallel: DataParallel | None = None


@dataclass
class Trained:
    """A finished run: the model (adapters merged unless --no-merge, fp32, eval mode) and what it needs to be
    saved and used."""

    model: Any
    tokenizer: Any
    template: Template
    run: RunConfig
    result: TrainResult
    split: Split
    report: EncodeReport
    precision: str
    device: torch.device
    audit: dict[str, Any] | None = None
    adapter: Any = None  # with --lora: the adapter on its own (heed.model.lora.Adapter), saved beside the model
