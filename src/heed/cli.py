"""The ``heed`` command: argparse front. Each subcommand parses, builds configs, and calls one function."""

from __future__ import annotations

import argparse
import json
import os
import sys

from heed import __version__
from heed.config import DataConfig
from heed.errors import HeedError


def _data_args(p: argparse.ArgumentParser, *, split: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, metavar="FILE", help="instruction records (JSON array or JSON Lines)")
    g.add_argument("--fields", metavar="MAP",
                   help="column names if not instruction/input/output, e.g. 'instruction=prompt,output=completion'")
    g.add_argument("--template", help="prompt template: alpaca (default), instruction-response, phi3, chat; "
                   "a heed-trained model's own template is the default for it")
    g.add_argument("--max-length", type=int, metavar="N",
                   help="longest example in tokens (default: the model's context length)")
    g.add_argument("--overlong", choices=("drop", "truncate", "error"), default="drop",
                   help="examples longer than --max-length: drop (default), truncate the response, or error")
    g.add_argument("--train-on-prompt", action="store_true",
                   help="train on prompt tokens too (default: loss on the response and EOS only)")
    g.add_argument("--skip-invalid", action="store_true",
                   help="drop invalid records (their count and numbers in one line) instead of refusing the file")
    if split:
        g.add_argument("--train-frac", type=float, default=0.85, help="share of records for training (0.85)")
        g.add_argument("--test-frac", type=float, default=0.10, help="share for the test set (0.10); rest is validation")
        g.add_argument("--shuffle", action="store_true", help="shuffle records before splitting")
        g.add_argument("--split-seed", type=int, default=123, help="seed of --shuffle (123)")
        g.add_argument("--val-file", metavar="FILE", help="validation records from this file instead of the split")
        g.add_argument("--test-file", metavar="FILE", help="test records from this file instead of the split")


def data_config(args: argparse.Namespace) -> DataConfig:
    return DataConfig(
        data=args.data, fields=args.fields, template=args.template or "alpaca", max_length=args.max_length,
        overlong=args.overlong, train_on_prompt=args.train_on_prompt,
        train_frac=getattr(args, "train_frac", 0.85), test_frac=getattr(args, "test_frac", 0.10),
        shuffle=getattr(args, "shuffle", False), split_seed=getattr(args, "split_seed", 123),
        val_file=getattr(args, "val_file", None), test_file=getattr(args, "test_file", None),
        skip_invalid=args.skip_invalid,
    )


def resolve_data_config(args: argparse.Namespace, model: str) -> DataConfig:
    """Fill the template and max length from a heed-trained model's heed.json, else the defaults."""
    from heed.model import context_length, model_config, read_meta

    cfg = data_config(args)
    meta = read_meta(model)
    cfg.template = args.template or meta.get("template") or "alpaca"
    if cfg.max_length is None:
        cfg.max_length = meta.get("max_length") or context_length(model_config(model))
    return cfg


def _use_color(choice: str) -> bool:
    if choice == "always":
        return True
    if choice == "never":
        return False
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def cmd_inspect(args: argparse.Namespace) -> int:
    from heed.data.encode import encode_records
    from heed.data.maskview import as_json, render
    from heed.data.records import FieldMap, load_records
    from heed.data.templates import get_template
    from heed.model import load_tokenizer

    cfg = resolve_data_config(args, args.model)
    template = get_template(cfg.template)
    records = load_records(cfg.data, FieldMap.parse(cfg.fields), skip_invalid=cfg.skip_invalid)
    record = next((r for r in records if r.index == args.index), None)  # numbers count skipped records too
    if record is None:
        last = records[-1].index
        raise HeedError(f"{cfg.data}: --index {args.index} is " + ("out of range; the file has records 0 to "
                        f"{last}" if not 0 <= args.index <= last else "an invalid record, skipped by --skip-invalid"))
    tokenizer = load_tokenizer(args.model)
    policy = "drop" if cfg.overlong == "error" else cfg.overlong
    examples, report = encode_records([record], template, tokenizer, max_length=cfg.max_length, policy=policy,
                                      train_on_prompt=cfg.train_on_prompt, source=cfg.data)
    note = ""
    if not examples:  # show the example whole, and say what training does with it
        examples, _ = encode_records([record], template, tokenizer, max_length=10**9,
                                     train_on_prompt=cfg.train_on_prompt, source=cfg.data)
        note = f"training skips this record ({report.summary()}; --overlong {cfg.overlong})"
    example = examples[0]
    if args.json:
        out = as_json(example, tokenizer) | {"template": template.name, "max_length": cfg.max_length}
        if note:
            out["note"] = note
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(render(example, tokenizer, color=_use_color(args.color)))
        if note:
            print(f"note: {note}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from heed.data import load_split
    from heed.data.audit import audit, render
    from heed.data.templates import get_template
    from heed.model import load_tokenizer

    cfg = resolve_data_config(args, args.model)
    template = get_template(cfg.template)
    records, split = load_split(cfg)
    tokenizer = load_tokenizer(args.model)
    result = audit(records, split, template, tokenizer, max_length=cfg.max_length, policy=cfg.overlong,
                   train_on_prompt=cfg.train_on_prompt, source=cfg.data)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        print(render(result))
    return 0 if result.trainable else 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heed", description="Instruction finetuning for pretrained causal language models.")
    parser.add_argument("--version", action="version", version=f"heed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("inspect", help="show one formatted example with the tokens that are trained on",
                       description="Show one formatted example, each token coloured by whether the loss sees it.")
    p.add_argument("--model", required=True, help="a model directory, hub id, or random:<preset> (only its tokenizer is used)")
    _data_args(p, split=False)
    p.add_argument("--index", type=int, default=0, help="record to show, counted from 0 (default 0)")
    p.add_argument("--json", action="store_true", help="print {tokens, input_ids, labels, ...} as JSON")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("data", help="data tools (data check)")
    data_sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    p = data_sub.add_parser("check", help="audit a data file before training",
                            description="Audit a data file: duplicates, lengths, masking, split leakage. "
                                        "Exit 0 when trainable, 2 with reasons when not.")
    p.add_argument("--model", required=True, help="a model directory, hub id, or random:<preset> (only its tokenizer is used)")
    _data_args(p)
    p.add_argument("--json", action="store_true", help="print the audit as JSON")
    p.set_defaults(func=cmd_data_check)

    from heed import cli_eval, cli_models

    cli_models.register(sub)
    cli_eval.register(sub)
    return parser


def entry() -> None:
    """The ``heed`` console script: model-running commands re-execute once under mimalloc on Linux."""
    from heed.allocator import maybe_reexec

    maybe_reexec(sys.argv[1:])
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HeedError as e:
        for problem in e.problems:
            print(f"heed: error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("heed: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
