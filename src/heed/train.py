"""Stage 5: the training loop — step, evaluate, early stop, checkpoint, resume, save.

Reads top to bottom like nanoGPT's train.py; each helper does one thing. The loss is plain
cross-entropy between ``logits[:, t]`` and ``targets[:, t]`` because collate already shifted.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from heed import allocator, checkpoint
from heed.config import GenerateConfig, RunConfig
from heed.data import load_split
from heed.data.batch import BUCKET, batch_order, iter_batches, make_batch
from heed.data.encode import Example, encode_records
from heed.data.records import Record
from heed.data.templates import Template, get_template
from heed.device import choose_device, resolve_precision
from heed.errors import HeedError
from heed.generate import generate_responses
from heed.io import write_json
from heed.lora import add_adapters, merged
from heed.loss import compile_body, loss_sum
from heed.model import context_length, load_model, load_tokenizer, model_config
from heed.optim import clipped_step, make_optimizer
from heed.outputs import run_meta, write_outputs, write_test_responses

Log = Callable[[str], None]


def _log(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message)


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


@torch.no_grad()
def evaluate(model: Any, examples: Sequence[Example], *, batch_size: int, pad_id: int, num_batches: int,
             precision: str, device: torch.device, static: bool = False) -> float | None:
    """Mean loss per supervised token over the first ``num_batches`` batches (None without examples)."""
    if not examples:
        return None
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    bucket = BUCKET if static else None
    for i, batch in enumerate(iter_batches(examples, batch_size, pad_id, pad_to_multiple_of=bucket)):
        if i >= num_batches:
            break
        total += float(loss_sum(model, batch.to(device), precision, device))
        tokens += batch.supervised_tokens
    model.train(was_training)
    return total / tokens


def train_step(model: Any, optimizer: Any, scheduler: Any, examples: Sequence[Example], *, grad_accum: int,
               pad_id: int, clip: float | None, precision: str, device: torch.device,
               pack_capacity: int | None = None, static: bool = False) -> float:
    """One optimizer step over ``examples`` split into ``grad_accum`` micro-batches.

    Each micro-batch's summed loss is divided by the supervised tokens of the whole step, so the
    gradient is the per-token mean over the step — not a mean of micro-batch means. With
    ``pack_capacity`` each micro-batch is packed into padding-free rows of at most that many tokens;
    ``static`` buckets batch shapes for a compiled model (``make_batch``).
    """
    supervised = sum(e.supervised_tokens for e in examples)
    size = math.ceil(len(examples) / grad_accum)
    total = 0.0
    for start in range(0, len(examples), size):
        micro = examples[start:start + size]
        batch = make_batch(micro, pad_id, pack_capacity=pack_capacity, static=static).to(device)
        loss = loss_sum(model, batch, precision, device)
        (loss / supervised).backward()
        total += float(loss.detach())
    clipped_step(optimizer, [p for p in model.parameters() if p.requires_grad], clip)
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total / supervised


def lr_lambda(warmup: int, total: int, kind: str) -> Callable[[int], float]:
    """Linear warmup, then constant or cosine decay to 10% of the peak learning rate."""
    if kind not in ("constant", "cosine"):
        raise HeedError(f"--schedule {kind}: choose constant or cosine")

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _sample(model: Any, tokenizer: Any, template: Template, record: Record, max_new_tokens: int = 35) -> str:
    return generate_responses(model, tokenizer, template, [record], GenerateConfig(max_new_tokens=max_new_tokens))[0]


def _validate(run: RunConfig) -> None:
    t = run.train
    problems = [msg for bad, msg in (
        (t.batch_size < 1, f"--batch-size must be at least 1 (got {t.batch_size})"),
        (t.grad_accum < 1 or t.grad_accum > t.batch_size,
         f"--grad-accum must be between 1 and --batch-size (got {t.grad_accum})"),
        (t.epochs < 1, f"--epochs must be at least 1 (got {t.epochs})"),
        (t.lr <= 0, f"--lr must be positive (got {t.lr})"),
        (t.eval_every < 1, f"--eval-every must be at least 1 (got {t.eval_every})"),
        (t.pack_length < 1, f"--pack-length must be at least 1 (got {t.pack_length})"),
        (t.patience is not None and t.patience < 1, f"--patience must be at least 1 (got {t.patience})"),
    ) if bad]
    if problems:
        raise HeedError(*problems)


def train(run: RunConfig, *, resume: dict[str, Any] | None = None, log: Log = _log,
          interrupt_at: int | None = None) -> TrainResult:
    """Finetune ``run.train.model`` on ``run.data`` and write everything to ``run.train.out``.

    ``resume`` is a loaded checkpoint; ``interrupt_at`` simulates Ctrl-C after that step (tests).
    """
    _validate(run)
    tcfg, dcfg = run.train, run.data
    out = Path(tcfg.out)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(tcfg.seed)
    torch.manual_seed(tcfg.seed)
    device = choose_device(tcfg.device)
    precision = resolve_precision(tcfg.precision, device)

    # Data: records → examples. Everything is validated before the model loads.
    records, split = load_split(dcfg)
    split.check(needs_val=tcfg.patience is not None)  # the rule `heed data check` applies, before any model loads
    template = get_template(dcfg.template)
    tokenizer = load_tokenizer(tcfg.model)
    if dcfg.max_length is None:
        dcfg.max_length = context_length(model_config(tcfg.model))
    encode = dict(template=template, tokenizer=tokenizer, max_length=dcfg.max_length, policy=dcfg.overlong,
                  train_on_prompt=dcfg.train_on_prompt, source=dcfg.data)
    train_examples, report = encode_records(split.train, **encode)
    val_examples, _ = encode_records(split.val, **encode)
    if not train_examples:
        raise HeedError(f"{dcfg.data}: no training example survives ({report.summary()}); "
                        "check it with `heed data check`")
    pad_id = tokenizer.pad_token_id
    if tcfg.audit:
        from heed.data.audit import audit

        write_json(out / "audit.json", audit(records, split, template, tokenizer, max_length=dcfg.max_length,
                                             policy=dcfg.overlong, train_on_prompt=dcfg.train_on_prompt,
                                             source=dcfg.data).to_dict())
    log(f"data: {len(split.train)} train / {len(split.val)} val / {len(split.test)} test records; "
        f"train {report.summary()}")

    # Model and optimizer.
    model = load_model(tcfg.model, seed=tcfg.seed)
    if tcfg.lora:
        if precision == "bf16":
            # Frozen weights need no fp32 master copy: holding them in bf16 saves autocast's cast of
            # every weight on every step (a quarter of a CPU step). Adapters stay fp32.
            model = model.to(torch.bfloat16)
        model = add_adapters(model, tcfg.lora)
    model.to(device).train()
    if tcfg.compile:
        compile_body(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, tcfg.lr, tcfg.weight_decay)
    drop_last = len(train_examples) >= tcfg.batch_size
    steps_per_epoch = len(batch_order(len(train_examples), tcfg.batch_size, shuffle=False, seed=0, drop_last=drop_last))
    total_steps = steps_per_epoch * tcfg.epochs
    if tcfg.max_steps:
        total_steps = min(total_steps, tcfg.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tcfg.warmup_steps, total_steps, tcfg.schedule))
    log(f"model: {tcfg.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"{sum(p.numel() for p in trainable) / 1e6:.2f}M trained) on {device}, {precision}"
        + (", mimalloc" if device.type == "cpu" and allocator.loaded() else "") + "; "
        f"{total_steps} steps")

    loop: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "tokens_seen": 0, "best_val": None,
                            "best_step": None, "bad_evals": 0, "stopped_early": False, "seconds": 0.0,
                            "metrics": []}
    best_state: dict[str, torch.Tensor] | None = None
    if resume:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        loop, best_state = resume["loop"], resume["best_state"]
        checkpoint.set_rng_state(resume["rng"])
        log(f"resumed at step {loop['step']} (epoch {loop['epoch'] + 1})")

    def save_checkpoint() -> Path:
        return checkpoint.save(out, model=model, optimizer=optimizer, scheduler=scheduler, loop=loop,
                               config=run.to_dict(), best_state=best_state)

    def evaluate_now() -> dict[str, Any]:
        nonlocal best_state
        kw = dict(batch_size=tcfg.batch_size, pad_id=pad_id, num_batches=tcfg.eval_batches, precision=precision,
                  device=device, static=tcfg.compile)
        row = {"step": loop["step"], "epoch": min(loop["epoch"] + 1, tcfg.epochs), "tokens_seen": loop["tokens_seen"],
               "train_loss": evaluate(model, train_examples, **kw), "val_loss": evaluate(model, val_examples, **kw),
               "lr": scheduler.get_last_lr()[0], "seconds": round(loop["seconds"] + time.perf_counter() - started, 2)}
        loop["metrics"].append(row)
        val = row["val_loss"]
        if val is not None and (loop["best_val"] is None or val < loop["best_val"] - tcfg.min_delta):
            loop.update(best_val=val, best_step=loop["step"], bad_evals=0)
            if tcfg.patience:
                best_state = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
        elif val is not None:
            loop["bad_evals"] += 1
        log(f"ep {row['epoch']} step {row['step']:>5}: train loss {row['train_loss']:.3f}, "
            + (f"val loss {val:.3f}" if val is not None else "no val") + f", tokens seen {row['tokens_seen']:,}")
        return row

    from tqdm import tqdm

    started = time.perf_counter()
    bar = tqdm(total=total_steps, initial=loop["step"], desc="train", unit="step", disable=None, file=sys.stderr)
    try:
        while loop["epoch"] < tcfg.epochs and loop["step"] < total_steps and not loop["stopped_early"]:
            order = batch_order(len(train_examples), tcfg.batch_size, shuffle=tcfg.shuffle,
                                seed=tcfg.seed + loop["epoch"], drop_last=drop_last)
            while loop["batch_in_epoch"] < len(order) and loop["step"] < total_steps:
                examples = [train_examples[i] for i in order[loop["batch_in_epoch"]]]
                loss = train_step(model, optimizer, scheduler, examples, grad_accum=tcfg.grad_accum, pad_id=pad_id,
                                  clip=tcfg.clip, precision=precision, device=device,
                                  pack_capacity=min(tcfg.pack_length, dcfg.max_length) if tcfg.pack else None,
                                  static=tcfg.compile)
                loop["step"] += 1
                loop["batch_in_epoch"] += 1
                loop["tokens_seen"] += sum(len(e.input_ids) - 1 for e in examples)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
                if loop["step"] == 1 or loop["step"] % tcfg.eval_every == 0:
                    evaluate_now()
                    if tcfg.patience and loop["bad_evals"] >= tcfg.patience:
                        loop["stopped_early"] = True
                        log(f"early stop at step {loop['step']}: no validation improvement in "
                            f"{tcfg.patience} evaluations (best {loop['best_val']:.3f} at step {loop['best_step']})")
                        break
                if tcfg.checkpoint_every and loop["step"] % tcfg.checkpoint_every == 0:
                    save_checkpoint()
                if interrupt_at is not None and loop["step"] == interrupt_at:
                    raise KeyboardInterrupt
            else:
                if loop["batch_in_epoch"] >= len(order):
                    loop["epoch"] += 1
                    loop["batch_in_epoch"] = 0
                    if tcfg.sample_every_epoch:
                        first = (split.val or split.train)[0]
                        log(f"sample after epoch {loop['epoch']}: {_sample(model, tokenizer, template, first)!r}")
    except KeyboardInterrupt:
        bar.close()
        loop["seconds"] += time.perf_counter() - started
        path = save_checkpoint()
        log(f"interrupted at step {loop['step']}; checkpoint saved to {path}; continue with: heed train --resume {out}")
        raise
    bar.close()
    loop["seconds"] += time.perf_counter() - started
    if not loop["metrics"] or loop["metrics"][-1]["step"] != loop["step"]:
        evaluate_now()
    last = loop["metrics"][-1]
    if best_state is not None and loop["best_step"] != loop["step"]:
        model.load_state_dict(best_state, strict=False)
        log(f"restored the best weights: step {loop['best_step']}, val loss {loop['best_val']:.3f}")
    if tcfg.checkpoint_every:
        save_checkpoint()

    result = TrainResult(out, loop["step"], loop["tokens_seen"], loop["best_step"], loop["best_val"],
                         last["train_loss"], last["val_loss"], loop["stopped_early"], loop["seconds"], loop["metrics"])
    model = merged(model.float()).eval()  # merge adapters into fp32 weights
    meta = run_meta(run, result, precision, device, split, report)
    write_outputs(out, model, tokenizer, meta, result)
    if tcfg.generate_test and split.test:
        write_test_responses(out, model, tokenizer, template, split.test, tcfg.max_new_tokens, log)
    log(f"done: {result.steps} steps in {result.seconds:.1f}s; best val loss "
        + (f"{result.best_val_loss:.3f} at step {result.best_step}" if result.best_val_loss is not None else "n/a")
        + f"; model saved to {out}")
    return result
