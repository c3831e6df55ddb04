"""``heed inspect`` and ``heed data check``: what the model is trained on, before any training."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from heed.commands.options import add_flags, validated
from heed.config import DataConfig, InspectConfig
from heed.errors import HeedError

SPLIT_FIELDS = ("train_frac", "test_frac", "shuffle", "split_seed", "val_file", "test_file")


def data_flags(p: argparse.ArgumentParser, *, split: bool = True) -> None:
    g = p.add_argument_group("data")
    add_flags(g, DataConfig, skip=() if split else SPLIT_FIELDS, required=("data",))


def data_config(args: argparse.Namespace, model: str, *more: type) -> list[Any]:
    """The data flags as a config, template and max length resolved for ``model``, then a config of each
    of ``more``; all validated together, so that every problem is listed at once."""
    from heed.model import resolve_data

    cfg, *rest = validated(args, DataConfig, *more)
    return [resolve_data(cfg, model), *rest]


def _use_color(choice: str) -> bool:
    if choice == "always":
        return True
    if choice == "never":
        return False
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def inspect_record(cfg: DataConfig, model: str, index: int = 0) -> tuple[Any, Any, dict[str, Any]]:
    """Record ``index`` of ``cfg.data`` encoded as training would: ``(example, tokenizer, facts)``, the facts
    being what ``heed inspect --json`` prints. ``cfg`` is resolved for ``model`` already (``data_config``)."""
    from heed.data import with_system
    from heed.data.encode import encode_records
    from heed.data.maskview import as_json
    from heed.data.records import FieldMap
    from heed.data.sources import read_records
    from heed.data.templates import get_template
    from heed.model import load_tokenizer

    template = get_template(cfg.template)
    records = with_system(read_records(cfg.data, FieldMap.parse(cfg.fields), skip_invalid=cfg.skip_invalid,
                                       format=cfg.format, split=cfg.split, config=cfg.data_config), cfg.system)
    record = next((r for r in records if r.index == index), None)  # numbers count skipped records too
    if record is None:
        last = records[-1].index
        raise HeedError(f"{cfg.data}: --index {index} is " + ("out of range; the file has records 0 to "
                        f"{last}" if not 0 <= index <= last else "an invalid record, skipped by --skip-invalid"))
    tokenizer = load_tokenizer(model)
    policy = "drop" if cfg.overlong == "error" else cfg.overlong
    encode = dict(train_on_prompt=cfg.train_on_prompt, last_turn_only=cfg.last_turn_only, source=cfg.data)
    examples, report = encode_records([record], template, tokenizer, max_length=cfg.max_length, policy=policy,
                                      **encode)
    note = ""
    if not examples:  # show the example whole, and say what training does with it
        examples, _ = encode_records([record], template, tokenizer, max_length=10**9, **encode)
        note = f"training skips this record ({report.summary()}; --overlong {cfg.overlong})"
    facts = as_json(examples[0], tokenizer) | {"template": template.name, "max_length": cfg.max_length}
    if note:
        facts["note"] = note
    return examples[0], tokenizer, facts


def cmd_inspect(args: argparse.Namespace) -> int:
    from heed.data.maskview import render

    data, shown = data_config(args, args.model, InspectConfig)
    example, tokenizer, facts = inspect_record(data, args.model, shown.index)
    if args.json:
        print(json.dumps(facts, ensure_ascii=False))
    else:
        print(render(example, tokenizer, color=_use_color(shown.color)))
        if "note" in facts:
            print(f"note: {facts['note']}")
    return 0


def check_data(cfg: DataConfig, model: str) -> tuple[Any, dict[str, int]]:
    """The audit of ``heed data check`` and its per-turn counts (empty without conversations)."""
    from heed.data import load_split
    from heed.data.audit import audit
    from heed.data.templates import get_template
    from heed.model import load_tokenizer

    template = get_template(cfg.template)
    records, split = load_split(cfg)
    tokenizer = load_tokenizer(model)
    result = audit(records, split, template, tokenizer, max_length=cfg.max_length, policy=cfg.overlong,
                   train_on_prompt=cfg.train_on_prompt, source=cfg.data)
    return result, turn_counts(split.train, template, tokenizer, cfg)


def cmd_data_check(args: argparse.Namespace) -> int:
    from heed.data.audit import render

    (data,) = data_config(args, args.model)
    result, turns = check_data(data, args.model)
    if args.json:
        print(json.dumps(result.to_dict() | ({"turns": turns} if turns else {}), ensure_ascii=False))
    else:
        print(render(result))
        if turns:
            print(f"conversations: {turns['conversations']} in the training split, {turns['replies']} assistant "
                  f"replies ({turns['trained_replies']} trained on), {turns['reply_tokens']} reply tokens trained "
                  f"on, {turns['masked_tokens']} system/user tokens masked")
    return 0 if result.trainable else 2


def turn_counts(records: list[Any], template: Any, tokenizer: Any, cfg: DataConfig) -> dict[str, int]:
    """Per-turn counts of the conversation records among ``records`` (empty when there are none)."""
    from heed.data.encode import IGNORE_INDEX, encode_records

    chats = [r for r in records if r.turns is not None]
    if not chats:
        return {}
    examples, _ = encode_records(chats, template, tokenizer, max_length=cfg.max_length, policy="truncate",
                                 train_on_prompt=cfg.train_on_prompt, last_turn_only=cfg.last_turn_only)
    counts = dict(conversations=len(chats), replies=0, trained_replies=0, reply_tokens=0, masked_tokens=0)
    for example in examples:
        for role, start, end in example.spans:
            trained = sum(1 for label in example.labels[start:end] if label != IGNORE_INDEX)
            if role == "assistant":
                counts["replies"] += 1
                counts["trained_replies"] += trained > 0
                counts["reply_tokens"] += trained
            else:
                counts["masked_tokens"] += (end - start) - trained
    return counts


MODEL_HELP = "a model directory, hub id, or random:<preset> (only its tokenizer is used)"


def register(sub: Any) -> None:
    p = sub.add_parser("inspect", help="show one formatted example with the tokens that are trained on",
                       description="Show one formatted example, each token coloured by whether the loss sees it.")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    data_flags(p, split=False)
    add_flags(p, InspectConfig, only=("index",))
    p.add_argument("--json", action="store_true", help="print {tokens, input_ids, labels, ...} as JSON")
    add_flags(p, InspectConfig, only=("color",))
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("data", help="data tools (data check)")
    data_sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    p = data_sub.add_parser("check", help="audit a data file before training",
                            description="Audit a data file: duplicates, lengths, masking, split leakage. "
                                        "Exit 0 when trainable, 2 with reasons when not.")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    data_flags(p)
    p.add_argument("--json", action="store_true", help="print the audit as JSON")
    p.set_defaults(func=cmd_data_check)
