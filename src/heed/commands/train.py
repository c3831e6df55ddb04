"""``heed train``: settings from flags, a ``--config`` file and ``KEY=VALUE`` overrides; then the finetune job."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from heed.commands.data import data_flags
from heed.commands.options import add_config_args, add_flags, check_overrides, configure, dest, given
from heed.config import DataConfig, LoraConfig, RunConfig, TrainConfig, apply_override, load_file, validate
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
            raise HeedError(f"{', '.join('--lora-' + f.replace('target_modules', 'targets') for f in lora_flags)}"
                            " needs --lora")
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
    """The checkpoint's settings, in ``run_dir``, with the flags that may change on a resume applied."""
    check_overrides(args.overrides)
    run = RunConfig.from_dict(state["config"], f"{run_dir}: checkpoint config")
    refused = [f for f in given(DataConfig, args) + given(TrainConfig, args) + given(LoraConfig, args)
               if f not in RESUMABLE] + (["lora"] if args.use_lora else []) + (["config"] if args.config else [])
    refused += [o.partition("=")[0] for o in args.overrides
                if o.partition("=")[0].split(".")[-1] not in RESUMABLE]
    if refused:
        names = ", ".join(n if "." in n else "--" + n.replace("_", "-") for n in refused)
        raise HeedError(f"--resume {args.resume}: {names} cannot change when a run is resumed (only "
                        f"{', '.join('--' + f.replace('_', '-') for f in RESUMABLE[:3])} and what happens after "
                        "training can); start a new run with --out instead")
    train = replace(configure(TrainConfig, args, run.train), out=str(run_dir))
    run = RunConfig(run.data, train)
    for assignment in args.overrides:
        run = apply_override(run, assignment)
    validate(run)
    loop = state["loop"]
    if state["finished"] or loop["stopped_early"]:
        more = (run.train.epochs > loop["epoch"] and (run.train.max_steps or 10**12) > loop["step"]
                and not loop["stopped_early"])
        if not more:
            why = "stopped early" if loop["stopped_early"] else f"finished after {loop['epoch']} epochs"
            raise HeedError(f"--resume {args.resume}: that run {why} (step {loop['step']}); there is nothing to "
                            "resume. To train it further, raise --epochs or --max-steps with --resume")
    return run


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
                                    "group_by_length", "pack", "pack_length", "epochs", "max_steps", "clip",
                                    "warmup_steps", "schedule", "precision", "compile", "seed", "shuffle", "device",
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
