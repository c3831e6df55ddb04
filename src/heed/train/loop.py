"""Stage: the training loop — set up, fit (step, evaluate, early stop, checkpoint), finish.

Reads top to bottom like nanoGPT's train.py; each helper does one thing. The loss is plain
cross-entropy between ``logits[:, t]`` and ``targets[:, t]`` because collate already shifted.
``train`` returns the trained model with its result; writing it out, generating the test split's
responses and scoring them is the finetune job's (``heed.commands.finetune``).

Beside it: ``state`` (what the loop carries: ``Setup``, ``LoopState``, ``Trained``), ``schedule`` (the
examples of each step, the learning rate) and ``finish`` (the end of a run). Here: ``setup``, one step
(``train_step``), the held-out loss (``evaluate``), the loop (``Loop.fit``) and ``train``, which runs them.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from heed.config import FastPath, RunConfig, validate
from heed.data import load_split, with_system
from heed.data.batch import batch_order, iter_batches, length_grouped_order, make_batch, token_budget_order
from heed.data.encode import Example, encode_records
from heed.data.templates import get_template
from heed.errors import HeedError
from heed.model import load_model, load_tokenizer, resolve_data
from heed.model.attention import attention_backends
from heed.model.lora import add_adapters
from heed.runtime import allocator, distributed
from heed.runtime.compile import BUCKET
from heed.runtime.device import choose_device, resolve_precision
from heed.runtime.progress import log as _log
from heed.runtime.progress import progress
from heed.train import checkpoint, checkpoint_check
from heed.train.finish import finish, unsharded
from heed.train.budget import Pace
from heed.train.loss import compile_body, loss_sum
from heed.train.optim import clipped_step, make_optimizer
from heed.train.parallel import DataParallel, Sharded
from heed.train.save import check_out, clear_out
from heed.train.schedule import lr_lambda, step_order
from heed.train.state import LoopState, Setup, Trained, TrainResult

# Names this module held before state, schedule and finish moved out stay importable from here; the
# orders step_order picks from (heed.data.batch) too.
__all__ = ["Loop", "LoopState", "NonFiniteLoss", "Setup", "Trained", "TrainResult", "absolute_paths", "batch_order",
           "evaluate", "finish", "length_grouped_order", "lr_lambda", "setup", "step_order", "token_budget_order",
           "train", "train_step", "unsharded"]

Log = Callable[[str], None]


def _silent(_: str) -> None:
    pass


class NonFiniteLoss(Exception):
    """A step's loss is not finite (``train_step`` raises it before the weights change)."""

    def __init__(self, loss: float):
        super().__init__(f"the training loss is {loss}")
        self.loss = loss


@torch.no_grad()
def evaluate(model: Any, examples: Sequence[Example], *, batch_size: int, pad_id: int, num_batches: int,
             precision: str, device: torch.device, static: bool = False, fast: FastPath = FastPath(),
             parallel: DataParallel | None = None) -> float | None:
    """Mean loss per supervised token over the first ``num_batches`` batches (None without examples)."""
    if not examples:
        return None
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    bucket = BUCKET if static else None
    world = distributed.world()
    batches = list(itertools.islice(iter_batches(examples, batch_size, pad_id, pad_to_multiple_of=bucket),
                                    num_batches))
    sharded = isinstance(parallel, Sharded)
    rounds = math.ceil(len(batches) / world.size)
    for i in range(world.rank, rounds * world.size if sharded else len(batches), world.size):
        # under torchrun each rank evaluates its share of the batches; sharded, every rank runs as many
        # forwards as the others (each gathers weights from all), the last ones on a batch it does not count
        batch = batches[i] if i < len(batches) else batches[0]
        with attention_backends(device, static):
            b = batch.to(device)
            loss = parallel.loss(b) if sharded else loss_sum(model, b, precision, device, fast)
        if i < len(batches):
            total += float(loss)
            tokens += batch.supervised_tokens
    model.train(was_training)
    total, tokens = distributed.all_sum([total, tokens], device)
    return total / tokens


def train_step(model: Any, optimizer: Any, scheduler: Any, examples: Sequence[Example], *, grad_accum: int,
               pad_id: int, clip: float | None, precision: str, device: torch.device,
               pack_capacity: int | None = None, static: bool = False, fast: FastPath = FastPath(),
               parallel: DataParallel | None = None) -> float:
    """One optimizer step over ``examples`` split into ``grad_accum`` micro-batches; the mean loss.

    Each micro-batch's summed loss is divided by the supervised tokens of the whole step, so the
    gradient is the per-token mean over the step — not a mean of micro-batch means. With
    ``pack_capacity`` each micro-batch is packed into padding-free rows of at most that many tokens;
    ``static`` buckets batch shapes for a compiled model (``make_batch``). A loss that is not finite
    raises ``NonFiniteLoss`` before the weights change. With ``parallel`` (under torchrun) this rank
    takes its shard of ``examples`` and the gradients are those of the whole step over all ranks.
    """
    if parallel is not None:
        with attention_backends(device, static):
            total, supervised = parallel.backward(examples, grad_accum=grad_accum, pad_id=pad_id, device=device,
                                                  pack_capacity=pack_capacity, static=static)
    else:
        supervised = sum(e.supervised_tokens for e in examples)
        size = math.ceil(len(examples) / grad_accum)
        total = 0.0
        for start in range(0, len(examples), size):
            micro = examples[start:start + size]
            batch = make_batch(micro, pad_id, pack_capacity=pack_capacity, static=static).to(device)
            with attention_backends(device, static):  # the forward picks the kernel; its backward follows
                loss = loss_sum(model, batch, precision, device, fast)
            (loss / supervised).backward()
            total += float(loss.detach())
    if not math.isfinite(total):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLoss(total / supervised)
    clipped_step(optimizer, [p for p in model.parameters() if p.requires_grad], clip, fold=fast.fold_clip)
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total / supervised


def absolute_paths(run: RunConfig) -> RunConfig:
    """``run`` with its input files and a local model as absolute paths, so that a checkpoint or run.yaml
    resumes and reproduces from any working directory."""
    def absolute(path: str | None) -> str | None:
        return str(Path(path).expanduser().resolve()) if path else path

    data = replace(run.data, data=absolute(run.data.data), val_file=absolute(run.data.val_file),
                   test_file=absolute(run.data.test_file))
    model = run.train.model
    if model and not model.startswith("random:") and Path(model).expanduser().exists():
        model = absolute(model)
    return RunConfig(data, replace(run.train, model=model))


def setup(run: RunConfig, *, fast: FastPath = FastPath(), log: Log = _log, resuming: bool = False,
          resume: dict[str, Any] | None = None) -> Setup:
    """Validate the configuration, load and encode the data, then load the model and make the optimizer.

    Everything about the data is checked before the model loads, and a checkpoint to ``resume`` from
    (``checkpoint.load``) against the model, optimizer and schedule before anything in --out changes.
    """
    resuming = resuming or resume is not None
    validate(run)
    tcfg = run.train
    if not tcfg.model:
        raise HeedError("heed train needs --model (or --resume DIR)")
    if not run.data.data:
        raise HeedError("heed train needs --data (or --resume DIR)")
    out = Path(tcfg.out)
    check_out(out, overwrite=tcfg.overwrite, resuming=resuming)
    world, device_name = distributed.init(tcfg.device)
    if not world.main:  # under torchrun rank 0 speaks for all
        log = _silent
    random.seed(tcfg.seed)
    torch.manual_seed(tcfg.seed)
    device = choose_device(device_name)
    precision = resolve_precision(tcfg.precision, device)

    records, split = load_split(run.data)
    split.check(needs_val=tcfg.patience is not None)  # the rule `heed data check` applies, before any model loads
    run = absolute_paths(RunConfig(resolve_data(run.data, tcfg.model), tcfg))  # what heed.json and run.yaml record
    dcfg, tcfg = run.data, run.train
    with_system(records, dcfg.system)  # a heed-trained model's own system prompt, when --system is not given
    template = get_template(dcfg.template)
    tokenizer = load_tokenizer(tcfg.model)
    encode = dict(template=template, tokenizer=tokenizer, max_length=dcfg.max_length, policy=dcfg.overlong,
                  train_on_prompt=dcfg.train_on_prompt, last_turn_only=dcfg.last_turn_only, source=dcfg.data)
    train_examples, report = encode_records(split.train, **encode)
    val_examples, _ = encode_records(split.val, **encode)
    if not train_examples:
        raise HeedError(f"{dcfg.data}: no training example survives ({report.summary()}); "
                        "check it with `heed data check`")
    if world.distributed and tcfg.tokens_per_step:
        raise HeedError("--tokens-per-step does not run under torchrun yet (a step could leave a process without "
                        "an example); use --batch-size with torchrun")
    per_rank = min(tcfg.batch_size, len(train_examples)) // world.size
    if world.distributed and per_rank < tcfg.grad_accum:
        raise HeedError(f"--batch-size {tcfg.batch_size} over {world.size} processes leaves {per_rank} examples a "
                        f"step per process, fewer than --grad-accum {tcfg.grad_accum}; raise --batch-size")
    audit = None
    if tcfg.audit:
        from heed.data.audit import audit as run_audit

        audit = run_audit(records, split, template, tokenizer, max_length=dcfg.max_length, policy=dcfg.overlong,
                          train_on_prompt=dcfg.train_on_prompt, source=dcfg.data).to_dict()
    log(f"data: {len(split.train)} train / {len(split.val)} val / {len(split.test)} test records; "
        f"train {report.summary()}")

    model = load_model(tcfg.model, seed=tcfg.seed, fast=fast)
    if tcfg.lora:
        if precision == "bf16":
            # Frozen weights need no fp32 master copy: holding them in bf16 saves autocast's cast of
            # every weight on every step. Adapters stay fp32.
            model = model.to(torch.bfloat16)
        model = add_adapters(model, tcfg.lora)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}  # as a checkpoint holds them
    trained = [(name, tuple(p.shape)) for name, p in model.named_parameters() if p.requires_grad]
    sharding = world.distributed and tcfg.fsdp
    if not sharding:  # sharded, each rank's shards go to its device, never the whole model
        model.to(device)
    model.train()
    if tcfg.compile:
        compile_body(model)
    parallel = None
    if world.distributed:
        parallel = (Sharded if sharding else DataParallel)(model, precision, device, fast)
    elif tcfg.fsdp:
        log("--fsdp: one process, nothing to shard; training unsharded (start heed with torchrun to shard)")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, tcfg.lr, tcfg.weight_decay, fused=fast.fused_adamw)
    drop_last = len(train_examples) >= tcfg.batch_size
    steps_per_epoch = len(step_order(train_examples, tcfg, shuffle=False, seed=0, drop_last=drop_last))
    total_steps = steps_per_epoch * tcfg.epochs
    if tcfg.max_steps:
        total_steps = min(total_steps, tcfg.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tcfg.warmup_steps, total_steps, tcfg.schedule))
    if resume is not None:
        checkpoint_check.check_fits(resume, weights=shapes, trained=trained, optimizer=optimizer, scheduler=scheduler)
    if world.main:
        clear_out(out, overwrite=tcfg.overwrite and not resuming)  # inputs are good: the earlier run's files go
    distributed.barrier()
    log(f"model: {tcfg.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"{sum(p.numel() for p in trainable) / 1e6:.2f}M trained) on {device}, {precision}"
        + (", mimalloc" if device.type == "cpu" and allocator.loaded() else "")
        + (f", {'sharded (FSDP)' if tcfg.fsdp else 'data parallel'} over {world.size} processes"
           if world.distributed else "") + "; "
        f"{total_steps} steps")
    return Setup(run, device, precision, template, tokenizer, split, records, report, train_examples, val_examples,
                 model, optimizer, scheduler, total_steps, drop_last, fast, audit, parallel)


class Loop:
    """The loop over one run's steps; ``state`` is all that changes, and all a checkpoint needs."""

    def __init__(self, s: Setup, state: LoopState, best: dict[str, torch.Tensor] | None, log: Log,
                 on_step: Callable[[LoopState], None] | None, on_epoch_end: Callable[[Setup, int], None] | None,
                 saved_step: int | None = None):
        self.s, self.state, self.best = s, state, best
        self.saved_step = saved_step  # the step of the checkpoint in --out (None: there is none)
        self.evaluated: int | None = None  # the step whose weights the last evaluation found finite
        self.log = log if distributed.world().main else _silent
        self.on_step, self.on_epoch_end = on_step, on_epoch_end
        self.cfg = s.run.train
        self.out = Path(self.cfg.out)
        self.pace = Pace.for_run(self.cfg.time_budget, self.cfg.warmup_steps, state.step)
        self.run_budget = self.cfg.time_budget  # the saved settings drop it once it has fixed the length
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return self.state.seconds + time.perf_counter() - self.started

    def save_checkpoint(self, finished: bool = False) -> Path:
        """Rank 0 writes (under torchrun every rank holds the same weights and optimizer state; sharded, they
        are gathered onto rank 0 first, so the checkpoint is the one a single process writes)."""
        s = self.s
        if self.evaluated != self.state.step:
            self.check_finite()
        weights = moments = None
        if isinstance(s.parallel, Sharded):
            weights, moments = s.parallel.full_state(s.optimizer)
        if distributed.world().main:
            checkpoint.save(self.out, model=s.model, optimizer=s.optimizer, scheduler=s.scheduler,
                            loop=asdict(self.state), config=s.run.to_dict(), best_state=self.best, finished=finished,
                            weights=weights, optimizer_state=moments)
        distributed.barrier()
        self.saved_step = self.state.step
        return self.out / checkpoint.CHECKPOINT

    def kept(self) -> str:
        """What a stopped run leaves to resume from."""
        if self.saved_step is None:
            return "no checkpoint was written"
        return f"the last checkpoint (step {self.saved_step}, in {self.out / checkpoint.CHECKPOINT}) is kept"

    def diverged(self, what: str) -> HeedError:
        return HeedError(f"step {self.state.step}: {what}: the weights have diverged; training stopped without "
                         f"saving them and {self.kept()}. Lower --lr (now {self.cfg.lr})")

    def eval_kw(self, num_batches: int) -> dict[str, Any]:
        s, cfg = self.s, self.cfg
        return dict(batch_size=cfg.batch_size, pad_id=s.tokenizer.pad_token_id, num_batches=num_batches,
                    precision=s.precision, device=s.device, static=cfg.compile, fast=s.fast, parallel=s.parallel)

    def check_finite(self) -> None:
        """Before a checkpoint of weights no evaluation has seen: they are finite, and so is the loss of one
        batch (held-out if there is one), so that no checkpoint holds a diverged state."""
        s = self.s
        local = [p.to_local() if hasattr(p, "to_local") else p for p in s.model.parameters()]  # sharded: this rank's
        finite = bool(torch.stack([torch.isfinite(p).all() for p in local]).all()) if local else True
        if distributed.all_sum([0.0 if finite else 1.0], s.device)[0]:
            raise self.diverged("the weights are no longer finite")
        held_out = bool(s.val_examples)
        loss = evaluate(s.model, s.val_examples or s.train_examples, **self.eval_kw(1))
        if not math.isfinite(loss):
            raise self.diverged(f"the loss of one {'validation' if held_out else 'training'} batch is {loss}")
        self.evaluated = self.state.step

    def evaluate(self) -> dict[str, Any]:
        """Evaluate, log and track the best; a loss that is not finite stops the run (the weights have diverged:
        they are not saved, nor is any later state)."""
        s, cfg, state = self.s, self.cfg, self.state
        kw = self.eval_kw(cfg.eval_batches)
        row = {"step": state.step, "epoch": min(state.epoch + 1, cfg.epochs), "tokens_seen": state.tokens_seen,
               "train_loss": evaluate(s.model, s.train_examples, **kw), "val_loss": evaluate(s.model, s.val_examples, **kw),
               "lr": s.scheduler.get_last_lr()[0], "seconds": round(self.elapsed(), 2)}
        val = row["val_loss"]
        self.log(f"ep {row['epoch']} step {row['step']:>5}: train loss {row['train_loss']:.3f}, "
                 + (f"val loss {val:.3f}" if val is not None else "no val") + f", tokens seen {row['tokens_seen']:,}")
        for key, name in (("val_loss", "the validation loss"), ("train_loss", "the loss on the training examples")):
            if row[key] is not None and not math.isfinite(row[key]):
                raise self.diverged(f"{name} is {row[key]}")
        self.evaluated = state.step
        state.metrics.append(row)
        if val is not None and (state.best_val is None or val < state.best_val - cfg.min_delta):
            state.best_val, state.best_step, state.bad_evals = val, state.step, 0
            if cfg.patience and isinstance(s.parallel, Sharded):
                self.best = s.parallel.gathered(trained_only=True)
            elif cfg.patience:
                self.best = {n: p.detach().cpu().clone() for n, p in s.model.named_parameters() if p.requires_grad}
        elif val is not None:
            state.bad_evals += 1
        return row

    def step(self, examples: list[Example]) -> float:
        s, cfg, state = self.s, self.cfg, self.state
        pack = min(cfg.pack_length, s.run.data.max_length) if cfg.pack else None
        try:
            loss = self.train_step(examples, pack)
        except NonFiniteLoss as e:
            raise HeedError(f"step {state.step + 1}: {e}; training stopped before the weights changed and "
                            f"{self.kept()}. Lower --lr (now {cfg.lr}) or check the data") from None
        state.step += 1
        state.batch_in_epoch += 1
        state.tokens_seen += sum(len(e.input_ids) - 1 for e in examples)
        return loss

    def train_step(self, examples: list[Example], pack: int | None) -> float:
        s, cfg = self.s, self.cfg
        return train_step(s.model, s.optimizer, s.scheduler, examples, grad_accum=cfg.grad_accum,
                          pad_id=s.tokenizer.pad_token_id, clip=cfg.clip, precision=s.precision, device=s.device,
                          pack_capacity=pack, static=cfg.compile, fast=s.fast, parallel=s.parallel)

    def run_epoch(self, bar: Any) -> None:
        s, cfg, state = self.s, self.cfg, self.state
        order = step_order(s.train_examples, cfg, shuffle=cfg.shuffle, seed=cfg.seed + state.epoch,
                           drop_last=s.drop_last)
        while state.batch_in_epoch < len(order) and state.step < s.total_steps:
            started = time.perf_counter()
            loss = self.step([s.train_examples[i] for i in order[state.batch_in_epoch]])
            if self.pace is not None:
                self.pace.observe(time.perf_counter() - started)
                if self.pace.due(state.step):
                    self.fit_budget(bar)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            if state.step == 1 or state.step % cfg.eval_every == 0:
                self.evaluate()
                if cfg.patience and state.bad_evals >= cfg.patience:
                    state.stopped_early = True
                    self.log(f"early stop at step {state.step}: no validation improvement in {cfg.patience} "
                             f"evaluations (best {state.best_val:.3f} at step {state.best_step})")
                    return
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if self.on_step:
                self.on_step(state)
        if state.batch_in_epoch >= len(order):
            state.epoch += 1
            state.batch_in_epoch = 0
            if self.on_epoch_end:
                self.on_epoch_end(s, state.epoch)

    def fit_budget(self, bar: Any) -> None:
        """Fix the run's length to the steps that fit in --time-budget (every rank takes rank 0's count),
        and the schedule and the saved settings with it, so a resumed run keeps that length; later checks
        only shorten it."""
        s, pace = self.s, self.pace
        assert pace is not None
        per_step, fit = pace.per_step(), distributed.broadcast(pace.steps())
        total = max(self.state.step, min(s.total_steps, fit))
        first, pace.decided = not pace.decided, True
        if total == s.total_steps and not first:
            return
        self.log(f"--time-budget {self.run_budget:g}s: {per_step:.2f}s a step here"
                 + (f" now; {total} steps instead of {s.total_steps}" if not first else
                    f", so {total} steps" + (f" (of {s.total_steps})" if total < s.total_steps else "")))
        s.total_steps = total
        factor = lr_lambda(self.cfg.warmup_steps, total, self.cfg.schedule)
        s.scheduler.lr_lambdas = [factor]
        # the next step's rate, already set from the old length (it differs only past warmup)
        for group, base in zip(s.optimizer.param_groups, s.scheduler.base_lrs):
            group["lr"] = base * factor(s.scheduler.last_epoch)
        s.scheduler._last_lr = [group["lr"] for group in s.optimizer.param_groups]
        # Saved as a fixed length: run.yaml trains the same steps again, a resume keeps them.
        s.run = replace(s.run, train=replace(s.run.train, max_steps=total, time_budget=None))
        self.cfg = s.run.train
        bar.total = total
        bar.refresh()

    def fit(self) -> None:
        state = self.state
        bar = progress(self.s.total_steps, "train", "step", initial=state.step)
        try:
            while state.epoch < self.cfg.epochs and state.step < self.s.total_steps and not state.stopped_early:
                self.run_epoch(bar)
        except KeyboardInterrupt:
            bar.close()
            state.seconds = self.elapsed()
            self.evaluated = None  # cut mid-step, the weights may be newer than the last evaluation
            path = self.save_checkpoint()
            self.log(f"interrupted at step {state.step}; checkpoint saved to {path}; "
                     f"continue with: heed train --resume {self.out}")
            raise
        finally:
            bar.close()
        state.seconds = self.elapsed()
        self.started = time.perf_counter()  # the final evaluation's row counts from here, not twice


def train(run: RunConfig, *, resume: dict[str, Any] | None = None, log: Log = _log, fast: FastPath = FastPath(),
          on_step: Callable[[LoopState], None] | None = None,
          on_epoch_end: Callable[[Setup, int], None] | None = None) -> Trained:
    """Finetune ``run.train.model`` on ``run.data``; the trained model and its result (nothing written
    but checkpoints). ``resume`` is a loaded checkpoint; ``on_step`` is called after every step (it may
    raise KeyboardInterrupt to stop the run with a checkpoint) and ``on_epoch_end(setup, epoch)`` after
    every epoch."""
    s = setup(run, fast=fast, log=log, resume=resume)
    state, best = LoopState(), None
    if resume:
        moments = checkpoint_check.optimizer_state(resume, s.optimizer)  # setup checked that it fits
        if isinstance(s.parallel, Sharded):  # every rank read the whole checkpoint; each keeps its shard
            s.parallel.load_full_state(s.optimizer, resume["model"], moments)
        else:
            s.model.load_state_dict(resume["model"])
            s.optimizer.load_state_dict(moments)
        s.scheduler.load_state_dict(resume["scheduler"])
        state, best = LoopState(**resume["loop"]), resume["best_state"]
        checkpoint.set_rng_state(resume["rng"])
        if distributed.world().main:
            log(f"resumed at step {state.step} (epoch {state.epoch + 1})")
    loop = Loop(s, state, best, log, on_step, on_epoch_end, saved_step=state.step if resume else None)
    loop.fit()
    return finish(s, loop)
