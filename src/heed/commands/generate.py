"""``heed generate`` and ``heed chat``: responses from a model with its saved template."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from heed.commands.options import add_flags, validated
from heed.config import DataConfig, GenerateConfig, ModelConfig
from heed.errors import HeedError

# What ``heed generate`` reads of the data settings: the rest (splits, lengths) is about training.
READ_FIELDS = ("fields", "skip_invalid")


def saved_system(model: str) -> str | None:
    """The system prompt a heed-trained model was trained with (heed.json), else None."""
    from heed.model import read_meta

    system = read_meta(model).get("system")
    return system if isinstance(system, str) else None


def load_generator(spec: str, template: str | None = None, device: str = "auto") -> tuple[Any, Any, Any]:
    """Model, tokenizer and template for generation; the template is the model's own (heed.json) unless given."""
    from heed.data.templates import get_template
    from heed.model import load_model, load_tokenizer, saved_template
    from heed.runtime.device import choose_device

    template = get_template(saved_template(spec, template))
    tokenizer = load_tokenizer(spec)
    model = load_model(spec).to(choose_device(device))
    return model, tokenizer, template


def cmd_generate(args: argparse.Namespace) -> int:
    from heed.data.records import FieldMap, Record
    from heed.data.sources import read_records
    from heed.generate import generate_responses, responses_path, with_responses
    from heed.io import write_json
    from heed.runtime.progress import progress

    chosen, cfg, data = validated(args, ModelConfig, GenerateConfig, DataConfig)
    if bool(args.data) == bool(args.instruction):
        raise HeedError("heed generate needs either --data FILE or --instruction TEXT")
    from heed.data import with_system

    records = (read_records(args.data, FieldMap.parse(data.fields), require_output=False,
                            skip_invalid=data.skip_invalid) if args.data
               else [Record(0, args.instruction, args.input or "", None, {})])
    with_system(records, saved_system(chosen.model))
    model, tokenizer, template = load_generator(chosen.model, chosen.template, chosen.device)
    stats: dict[str, float] = {}
    if args.instruction:
        print(generate_responses(model, tokenizer, template, records, cfg, stats=stats)[0])
        report_speed(stats, cfg, model)
        return 0
    with progress(len(records), "generate", "record") as bar:
        responses = generate_responses(model, tokenizer, template, records, cfg, progress=bar.update, stats=stats)
    report_speed(stats, cfg, model)
    path = Path(args.out) if args.out else responses_path(args.data)
    write_json(path, with_responses(records, responses))
    print(f"wrote {len(records)} responses to {path}")
    return 0


def report_speed(stats: dict[str, float], cfg: GenerateConfig, model: Any) -> None:
    """New tokens per second on stderr (stdout keeps only the answer), compiling included."""
    from heed.generate.responses import resolve_cache

    cache = resolve_cache(cfg.cache, next(model.parameters()).device)
    seconds = max(stats.get("seconds", 0.0), 1e-9)
    print(f"generated {int(stats.get('tokens', 0))} tokens in {seconds:.1f}s: "
          f"{stats.get('tokens', 0) / seconds:,.1f} tokens/s (cache {cache}, batch {cfg.batch_size})", file=sys.stderr)


def cmd_chat(args: argparse.Namespace) -> int:
    from heed.data.records import Record
    from heed.generate import generate_responses

    chosen, cfg = validated(args, ModelConfig, GenerateConfig)
    model, tokenizer, template = load_generator(chosen.model, chosen.template, chosen.device)
    system = saved_system(chosen.model)
    print(f"heed chat with {chosen.model} (template {template.name}); an empty line or Ctrl-D ends it", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip():
            break
        record = Record(0, line, "", None, {}, system=system)
        print(generate_responses(model, tokenizer, template, [record], cfg)[0], flush=True)
    return 0


def _model_flags(p: argparse.ArgumentParser) -> None:
    add_flags(p, ModelConfig, required=("model",))
    add_flags(p, GenerateConfig)


def register(sub: Any) -> None:
    p = sub.add_parser("generate", help="responses for a data file or one instruction",
                       description="Write <data>-with-response.json (records + model_response), or print one answer.")
    _model_flags(p)
    p.add_argument("--data", metavar="FILE", help="records to answer (instruction, optional input)")
    add_flags(p, DataConfig, only=READ_FIELDS)
    p.add_argument("--out", metavar="FILE", help="where to write (default: <data>-with-response.json beside it)")
    p.add_argument("--instruction", help="answer this one instruction and print the response")
    p.add_argument("--input", help="optional input for --instruction")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="a small interactive loop over a model")
    _model_flags(p)
    p.set_defaults(func=cmd_chat)
