"""``heed train``: settings from flags, a ``--config`` file and ``KEY=VALUE`` overrides; then the finetune job."""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from heed.commands.data import data_flags
from heed.commands.options import add_config_args, add_flags, check_overrides, configure, dest, given
from heed.config import (DataConfig, LoraConfig, RunConfig, TrainConfig, apply_override, flag_name, load_file,
                         validate)
from heed.errors import HeedError


def run_config(args: argparse.Namespace) -> RunConfig:
    """The run's settings: defaults ← ``--config`` file ← flags given ← ``KEY=VALUE`` overrides; validated."""
    check_overrides(args.overrides)
    run = RunConfig.from_dict(load_file(args.config), args.config) if args.config else RunConfig()
    data = configure(DataConfig, args, run.data)
    train = configure(TrainConfig, args, run.train)
    lora_flags = given(LoraConfig, args)
    if args.use_lora or lora_flags:
        if not (args.use_lora or train.lora):
            flags = {f.name: flag_name(f) for f in fields(LoraConfig)}
            raise HeedError(f"{', '.join(flags[f] for f in lora_flags)} needs --lora")
        train.lora = configure(LoraConfig, args, train.lora or LoraConfig())
    run = RunConfig(data, train)
    for assignment in args.overrides:
        run = apply_override(run, assignment)
    validate(run)
    return run


# What may change when a run is resumed: how long it goes on and what it does at the end. Everything
# else shaped the optimizer state and the data order already, so changing it would not be a resume.
RESUMABLE = ("epochs", "max_steps", "checkpoint_every", "generate_test", "max_new_tokens", "gen_batch_size",
             "sample_every_epoch", "audit", "device", "fsdp")


def resume_config(args: argparse.Namespace, state: dict[str, Any], run_dir: Path) -> RunConfig:
    """The checkpoint's settings, in ``run_dir``, with the flags that may change on a resume applied; a flag
    that would change anything else is refused, one that repeats the stored value is accepted."""
    check_overrides(args.overrides)
    stored = stored_config(state, run_dir)
    train = configure(TrainConfig, args, stored.train)
    if args.use_lora or given(LoraConfig, args):
        train = replace(train, lora=configure(LoraConfig, args, stored.train.lora or LoraConfig()))
    run = RunConfig(configure(DataConfig, args, stored.data), train)
    for assignment in args.overrides:
        run = apply_override(run, assignment)
    refused = [name for name, path in _given(args) if path[-1] not in RESUMABLE
               and _changed(stored, run, path, run_dir)] + (["--config"] if args.config else [])
    if refused:
        raise HeedError(f"--resume {args.resume}: {', '.join(refused)} cannot change when a run is resumed (only "
                        f"{', '.join('--' + f.replace('_', '-') for f in RESUMABLE[:3])} and what happens after "
                        "training can); start a new run with --out instead")
    run = RunConfig(run.data, replace(run.train, out=str(run_dir)))
    validate(run)
    loop = state["loop"]
    if state["finished"] or loop["stopped_early"]:
        more = (run.train.epochs > loop["epoch"] and (run.train.max_steps or 10**12) > loop["step"]
                and not loop["stopped_early"])
        if not more:
            why = (f"stopped early at step {loop['step']}" if loop["stopped_early"]
                   else f"finished after {_length(loop)}")
            raise HeedError(f"--resume {args.resume}: that run {why}; there is nothing to resume. To train it "
                            "further, raise --epochs or --max-steps with --resume")
    return run


def stored_config(state: dict[str, Any], run_dir: Path) -> RunConfig:
    """The run's settings as the checkpoint holds them; settings that do not validate are a damaged checkpoint."""
    from heed.train.checkpoint import CHECKPOINT
    from heed.train.checkpoint_check import DAMAGED, STATE

    try:
        stored = RunConfig.from_dict(state["config"], "config")
        validate(stored)
    except HeedError as e:
        more = f" (and {len(e.problems) - 1} more)" if len(e.problems) > 1 else ""
        raise HeedError(f"{run_dir / CHECKPOINT / STATE}: 'config': {e.problems[0]}{more}; {DAMAGED}") from None
    return stored


def _given(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """Each setting the command line gives, as (what the user wrote, its path in ``RunConfig.to_dict()``)."""
    found = [(flag_name(f), [section, f.name]) for cls, section in ((DataConfig, "data"), (TrainConfig, "train"))
             for f in fields(cls) if f.name in given(cls, args)]
    found += [(flag_name(f), ["train", "lora", f.name]) for f in fields(LoraConfig)
              if f.name in given(LoraConfig, args)]
    found += [("--lora", ["train", "lora"])] if args.use_lora else []
    return found + [(o.partition("=")[0], o.partition("=")[0].strip().split(".")) for o in args.overrides]


def _changed(stored: RunConfig, run: RunConfig, path: list[str], run_dir: Path) -> bool:
    """Whether the setting at ``path`` differs between the stored run and the resumed one (paths compared as
    the files they name; --out as the run directory)."""
    from heed.train.loop import absolute_paths

    if path == ["train", "out"]:
        return Path(run.train.out or ".").expanduser().resolve() != run_dir.resolve()
    if path == ["train", "lora"]:
        return (stored.train.lora is None) != (run.train.lora is None)
    before, after = absolute_paths(stored).to_dict(), absolute_paths(run).to_dict()
    for key in path:
        before = before.get(key) if isinstance(before, dict) else None
        after = after.get(key) if isinstance(after, dict) else None
    return before != after


def _length(loop: dict[str, Any]) -> str:
    """``9 steps (3 epochs)``: the epochs only when the run ended at an epoch's end."""
    steps, epochs = loop["step"], loop["epoch"]
    whole = f" ({epochs} epoch{'s' if epochs != 1 else ''})" if epochs and not loop["batch_in_epoch"] else ""
    return f"{steps} step{'s' if steps != 1 else ''}{whole}"


def cmd_train(args: argparse.Namespace) -> int:
    from heed.commands.finetune import finetune
    from heed.train import checkpoint

    from heed.runtime import distributed

    try:
        if args.resume:
            where = checkpoint.find(args.resume)
            state = checkpoint.load(where)
            finetune(resume_config(args, state, where.parent), resume=state)
            return 0
        run = run_config(args)
        missing = [flag for flag, value in (("--model", run.train.model), ("--data", run.data.data)) if not value]
        if missing:
            raise HeedError(f"heed train needs {' and '.join(missing)} (or --resume DIR, or --config FILE)")
        finetune(run)
        return 0
    finally:
        distributed.finish()


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="finetune a model on instruction records",
                       description="Finetune a causal LM on instruction records; writes the model, heed.json, "
                                   "run.yaml, metrics.jsonl, loss.png and test-set responses to --out. Settings "
                                   "come from flags, a --config file, and KEY=VALUE overrides, in that order "
                                   "of precedence from last to first.")
    add_config_args(p)
    p.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR (its settings are used)")
    add_flags(p, TrainConfig, only=("model", "out", "overwrite"))
    g = p.add_argument_group("optimisation")
    add_flags(g, TrainConfig, only=("lr", "weight_decay", "batch_size", "grad_accum", "tokens_per_step",
                                    "group_by_length", "pack", "pack_length", "epochs", "max_steps", "time_budget",
                                    "clip", "warmup_steps", "schedule", "precision", "compile", "seed", "shuffle", "device",
                                    "fsdp"))
    g = p.add_argument_group("evaluation and early stopping")
    add_flags(g, TrainConfig, only=("eval_every", "eval_batches", "patience", "min_delta", "checkpoint_every",
                                    "sample_every_epoch", "generate_test", "audit", "max_new_tokens",
                                    "gen_batch_size"))
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora", dest="use_lora", action="store_true", help=TrainConfig.__dataclass_fields__["lora"].metadata["help"])
    add_flags(g, LoraConfig)
    add_flags(g, TrainConfig, only=("merge",))
    data_flags(p)
    for action in p._actions:  # --data may come from --config or --resume
        if action.dest == dest(DataConfig, "data"):
            action.required = False
    p.set_defaults(func=cmd_train)
