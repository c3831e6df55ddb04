"""The shape of a run: which examples each optimizer step of an epoch takes (``step_order``) and the
learning-rate factor of each step (``lr_lambda``); ``heed.train.loop`` asks both."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from heed.config import TrainConfig
from heed.data.batch import batch_order, length_grouped_order, token_budget_order
from heed.data.encode import Example


def step_order(examples: Sequence[Example], cfg: TrainConfig, *, shuffle: bool, seed: int,
               drop_last: bool) -> list[list[int]]:
    """The example indices of each optimizer step of one epoch: ``cfg.batch_size`` examples a step (of
    similar lengths with ``cfg.group_by_length``), or with ``cfg.tokens_per_step`` as many as fill that
    many tokens (every example kept: the steps differ in size anyway)."""
    lengths = [len(e.input_ids) - 1 for e in examples]
    if cfg.tokens_per_step:
        return token_budget_order(lengths, cfg.tokens_per_step, shuffle=shuffle, seed=seed)
    if cfg.group_by_length:
        return length_grouped_order(lengths, cfg.batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    return batch_order(len(examples), cfg.batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)


def lr_lambda(warmup: int, total: int, kind: str) -> Callable[[int], float]:
    """Linear warmup, then constant or cosine decay to 10% of the peak learning rate."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor

