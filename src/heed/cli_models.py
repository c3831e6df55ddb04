"""Subcommands that load a model: ``heed train``, ``heed generate``, ``heed chat``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from heed.config import GenerateConfig, LoraConfig, RunConfig, TrainConfig
from heed.errors import HeedError


def _train_args(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--model", help="model to finetune: hub id, directory, .gguf file or random:<preset>")
    p.add_argument("--out", default=d.out, help=f"output directory (default {d.out})")
    p.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR (its settings are used)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate ({d.lr})")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"AdamW weight decay ({d.weight_decay})")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help=f"examples per step ({d.batch_size})")
    g.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per step (1)")
    g.add_argument("--pack", action="store_true",
                   help="pack each micro-batch into padding-free rows of at most --pack-length tokens "
                   "(attention never crosses examples; same loss and gradients as padding)")
    g.add_argument("--pack-length", type=int, default=d.pack_length, metavar="N",
                   help=f"longest packed row ({d.pack_length}; on CPU longer rows cost more attention than they save)")
    g.add_argument("--epochs", type=int, default=d.epochs, help=f"passes over the training split ({d.epochs})")
    g.add_argument("--max-steps", type=int, help="stop after this many steps")
    g.add_argument("--clip", type=float, default=d.clip, help="gradient-norm clipping, 0 = off (1.0)")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warmup steps (0)")
    g.add_argument("--schedule", choices=("constant", "cosine"), default=d.schedule, help="after warmup (constant)")
    g.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=d.precision,
                   help="auto: bf16 autocast on CUDA and bf16-capable CPUs, fp32 weights (auto)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model with batch shapes bucketed (widths to multiples of 64; with --pack, "
                   "full rows, row counts bucketed), so it compiles a few times, not every step; compiling takes "
                   "seconds to a minute up front (see BENCHMARKS.md for what it gains)")
    g.add_argument("--seed", type=int, default=d.seed, help=f"seed ({d.seed})")
    g.add_argument("--no-shuffle", action="store_true", help="keep the training order fixed")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N (auto)")
    g = p.add_argument_group("evaluation and early stopping")
    g.add_argument("--eval-every", type=int, default=d.eval_every, help=f"evaluate every N steps ({d.eval_every})")
    g.add_argument("--eval-batches", type=int, default=d.eval_batches, help=f"batches per evaluation ({d.eval_batches})")
    g.add_argument("--patience", type=int, help="stop after N evaluations without validation improvement and "
                   "restore the best weights (default: off)")
    g.add_argument("--min-delta", type=float, default=d.min_delta, help="smallest improvement that counts (0)")
    g.add_argument("--checkpoint-every", type=int, help="write a resumable checkpoint every N steps")
    g.add_argument("--no-sample", action="store_true", help="no greedy sample at the end of each epoch")
    g.add_argument("--no-generate", action="store_true", help="skip responses for the test split")
    g.add_argument("--no-audit", action="store_true",
                   help="skip the data audit (audit.json); it re-encodes every record, noticeable on very large files")
    g.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="for the test responses (256)")
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora", action="store_true", help="train LoRA adapters (merged into the saved model)")
    g.add_argument("--lora-r", type=int, default=LoraConfig.r, help="adapter rank (16)")
    g.add_argument("--lora-alpha", type=int, default=LoraConfig.alpha, help="adapter alpha (32)")
    g.add_argument("--lora-dropout", type=float, default=LoraConfig.dropout, help="adapter dropout (0.05)")
    g.add_argument("--lora-targets", help="comma-separated module names, or all-linear (default: peft's choice for the model)")


def cmd_train(args: argparse.Namespace) -> int:
    from heed import checkpoint
    from heed.cli import data_config
    from heed.train import train

    if args.resume:
        state = checkpoint.load(args.resume)
        run = RunConfig.from_dict(state["config"])
        train(run, resume=state)
        return 0
    missing = [flag for flag, value in (("--model", args.model), ("--data", args.data)) if not value]
    if missing:
        raise HeedError(f"heed train needs {' and '.join(missing)} (or --resume DIR)")
    lora = None
    if args.lora:
        targets: list[str] | str | None = None
        if args.lora_targets:
            targets = [t.strip() for t in args.lora_targets.split(",")]
            targets = "all-linear" if targets == ["all-linear"] else targets
        lora = LoraConfig(args.lora_r, args.lora_alpha, args.lora_dropout, targets)
    run = RunConfig(data_config(args), TrainConfig(
        model=args.model, out=args.out, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
        grad_accum=args.grad_accum, pack=args.pack, pack_length=args.pack_length, epochs=args.epochs,
        max_steps=args.max_steps, eval_every=args.eval_every,
        eval_batches=args.eval_batches, patience=args.patience, min_delta=args.min_delta, clip=args.clip or None,
        warmup_steps=args.warmup_steps, schedule=args.schedule, precision=args.precision, seed=args.seed,
        shuffle=not args.no_shuffle, checkpoint_every=args.checkpoint_every, sample_every_epoch=not args.no_sample,
        generate_test=not args.no_generate, audit=not args.no_audit, max_new_tokens=args.max_new_tokens,
        lora=lora, device=args.device, compile=args.compile,
    ))
    train(run)
    return 0


def _generate_args(p: argparse.ArgumentParser) -> None:
    d = GenerateConfig()
    p.add_argument("--model", required=True, help="a model directory (heed-trained: its template is used)")
    p.add_argument("--template", help="override the template (default: the model's heed.json, else alpaca)")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="per response (256)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, help="nucleus sampling threshold")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="prompts per batch (8)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for sampling (123)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                   help="fp32 (default), or bf16 autocast: faster on CUDA and AMX CPUs, tokens may differ slightly")
    p.add_argument("--cache", choices=("dynamic", "static", "compiled"), default=d.cache,
                   help="KV cache: dynamic (default), static (preallocated), or compiled (static, the decoding step "
                        "compiled with torch.compile; CUDA graphs on CUDA; the first batch pays the compile)")


def _generate_config(args: argparse.Namespace) -> GenerateConfig:
    if args.max_new_tokens < 1:
        raise HeedError(f"--max-new-tokens must be at least 1 (got {args.max_new_tokens})")
    return GenerateConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p, max(1, args.batch_size),
                          args.seed, args.precision, args.cache)


def _load_for_generation(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from heed.data.templates import get_template
    from heed.device import choose_device
    from heed.model import load_model, load_tokenizer, read_meta

    template = get_template(args.template or read_meta(args.model).get("template") or "alpaca")
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model).to(choose_device(args.device))
    return model, tokenizer, template


def cmd_generate(args: argparse.Namespace) -> int:
    from heed.data.records import FieldMap, Record, load_records
    from heed.generate import generate_responses, responses_path, with_responses
    from heed.io import write_json

    cfg = _generate_config(args)
    if bool(args.data) == bool(args.instruction):
        raise HeedError("heed generate needs either --data FILE or --instruction TEXT")
    records = (load_records(args.data, FieldMap.parse(args.fields), require_output=False, skip_invalid=args.skip_invalid) if args.data
               else [Record(0, args.instruction, args.input or "", None, {})])
    model, tokenizer, template = _load_for_generation(args)
    if args.instruction:
        print(generate_responses(model, tokenizer, template, records, cfg)[0])
        return 0
    from tqdm import tqdm

    with tqdm(total=len(records), desc="generate", unit="record", disable=None, file=sys.stderr) as bar:
        responses = generate_responses(model, tokenizer, template, records, cfg, progress=bar.update)
    path = Path(args.out) if args.out else responses_path(args.data)
    write_json(path, with_responses(records, responses))
    print(f"wrote {len(records)} responses to {path}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from heed.data.records import Record
    from heed.generate import generate_responses

    cfg = _generate_config(args)
    model, tokenizer, template = _load_for_generation(args)
    print(f"heed chat with {args.model} (template {template.name}); an empty line or Ctrl-D ends it", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip():
            break
        print(generate_responses(model, tokenizer, template, [Record(0, line, "", None, {})], cfg)[0], flush=True)
    return 0


def register(sub: Any) -> None:
    from heed.cli import _data_args

    p = sub.add_parser("train", help="finetune a model on instruction records",
                       description="Finetune a causal LM on instruction records; writes the model, heed.json, "
                                   "metrics.jsonl, loss.png and test-set responses to --out.")
    _train_args(p)
    _data_args(p)
    p.set_defaults(func=cmd_train)
    for action in p._actions:  # --data is needed unless --resume
        if action.dest == "data":
            action.required = False

    p = sub.add_parser("generate", help="responses for a data file or one instruction",
                       description="Write <data>-with-response.json (records + model_response), or print one answer.")
    _generate_args(p)
    p.add_argument("--data", metavar="FILE", help="records to answer (instruction, optional input)")
    p.add_argument("--fields", metavar="MAP", help="column names, as for heed train")
    p.add_argument("--skip-invalid", action="store_true", help="drop invalid records instead of refusing the file")
    p.add_argument("--out", metavar="FILE", help="where to write (default: <data>-with-response.json beside it)")
    p.add_argument("--instruction", help="answer this one instruction and print the response")
    p.add_argument("--input", help="optional input for --instruction")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="a small interactive loop over a model")
    _generate_args(p)
    p.set_defaults(func=cmd_chat)
