"""The end of a run (``heed.train.loop.train``): the last evaluation, the best weights restored, the final
checkpoint, a sharded model gathered whole, adapters merged; what comes out is a ``Trained``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from heed.model import load_model
from heed.model.lora import adapter_of, add_adapters, merged
from heed.train.parallel import Sharded
from heed.train.state import Setup, Trained, TrainResult

if TYPE_CHECKING:
    from heed.train.loop import Loop


def finish(s: Setup, loop: Loop) -> Trained:
    """The last evaluation, the best weights restored, the final checkpoint, adapters merged."""
    state = loop.state
    if not state.metrics or state.metrics[-1]["step"] != state.step:
        loop.evaluate()
    last = state.metrics[-1]
    if loop.best is not None and state.best_step != state.step:
        if isinstance(s.parallel, Sharded):
            s.parallel.load_full_state(s.optimizer, loop.best, strict=False)
        else:
            s.model.load_state_dict(loop.best, strict=False)
        loop.log(f"restored the best weights: step {state.best_step}, val loss {state.best_val:.3f}")
    if s.run.train.checkpoint_every:
        loop.save_checkpoint(finished=True)
    result = TrainResult(Path(s.run.train.out), state.step, state.tokens_seen, state.best_step, state.best_val,
                         last["train_loss"], last["val_loss"], state.stopped_early, state.seconds, state.metrics)
    if isinstance(s.parallel, Sharded):
        s.model = unsharded(s)
    s.model.float()
    adapter = adapter_of(s.model, s.run.train.model) if s.run.train.lora else None  # taken before the merge
    model = (merged(s.model) if s.run.train.merge else s.model).eval()  # adapters merged into fp32 weights
    return Trained(model, s.tokenizer, s.template, s.run, result, s.split, s.report, s.precision, s.device, s.audit,
                   adapter)


def unsharded(s: Setup) -> Any:
    """The trained model gathered whole on every rank, as a plain model on this rank's device, for saving
    and answering the test split: built as ``setup`` built it, then given the trained weights."""
    full = s.parallel.gathered()
    s.optimizer = s.parallel = None  # the shards go
    tcfg = s.run.train
    model = load_model(tcfg.model, seed=tcfg.seed, fast=s.fast)
    if tcfg.lora:
        model = add_adapters(model.to(torch.bfloat16) if s.precision == "bf16" else model, tcfg.lora)
    model.load_state_dict(full)
    return model.to(s.device).train()

