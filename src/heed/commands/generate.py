"""``heed generate`` and ``heed chat``: responses from a model with its saved template."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

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


def load_generator(spec: str, template: str | None = None, device: str = "auto",
                   before_weights: Callable[[Any, Any], None] | None = None) -> tuple[Any, Any, Any]:
    """Model, tokenizer and template for generation; the template is the model's own (heed.json) unless given.
    ``before_weights(tokenizer, template)`` runs before the weights load: the place to refuse what cannot run."""
    from heed.data.templates import get_template
    from heed.model import load_model, load_tokenizer, saved_template
    from heed.runtime.device import choose_device

    template = get_template(saved_template(spec, template))
    tokenizer = load_tokenizer(spec)
    if before_weights is not None:
        before_weights(tokenizer, template)
    model = load_model(spec).to(choose_device(device))
    return model, tokenizer, template


def check_room(spec: str, records: list[Any], max_new_tokens: int, source: str | None) -> Callable[[Any, Any], None]:
    """A ``before_weights`` check: every prompt (``source``: the --data file; None: --instruction) plus
    ``--max-new-tokens`` must fit in the model's context, read from its config without its weights. A prompt
    that does not fit is refused, not cut short: nothing has been generated yet, and one flag fixes it."""
    from heed.data.encode import record_prompt_ids
    from heed.generate.responses import context_for, room

    context = context_for(spec, max_new_tokens)

    def check(tokenizer: Any, template: Any) -> None:
        lengths = [len(p) for p in record_prompt_ids(records, tokenizer, template)]
        limits = room(lengths, max_new_tokens, context)
        if min(limits, default=max_new_tokens) >= max_new_tokens:
            return
        overlong = [i for i, n in enumerate(limits) if n < 1]
        short = overlong or [i for i, n in enumerate(limits) if n < max_new_tokens]
        longest = max(lengths[i] for i in short)
        if source is None:
            who, them = f"the prompt of --instruction is {longest} tokens", "it"
        else:
            names = ", ".join(str(records[i].index) for i in short[:5])
            names += f" and {len(short) - 5} more" if len(short) > 5 else ""
            who = (f"{source}: record {names} has a prompt of {longest} tokens" if len(short) == 1 else
                   f"{source}: records {names} have prompts of up to {longest} tokens")
            them = "it" if len(short) == 1 else "them"
        if overlong:
            raise HeedError(f"{who}, as long as the model's context of {context} tokens or longer; shorten "
                            + (them if source is None else f"or remove {them}"))
        raise HeedError(f"--max-new-tokens {max_new_tokens}: {who}, and with {max_new_tokens} new tokens that "
                        f"exceeds the model's context of {context} tokens; lower --max-new-tokens to "
                        f"{context - longest} or less, or shorten {them}")

    return check


def cmd_generate(args: argparse.Namespace) -> int:
    from heed.data.records import FieldMap, Record
    from heed.data.sources import read_records
    from heed.generate import generate_responses, responses_path, with_responses
    from heed.io import check_out_file, write_json
    from heed.runtime.progress import progress

    chosen, cfg, data = validated(args, ModelConfig, GenerateConfig, DataConfig)
    if bool(args.data) == bool(args.instruction):
        raise HeedError("heed generate needs either --data FILE or --instruction TEXT")
    if args.instruction and args.out is not None:
        raise HeedError("--out writes the responses to --data; the answer to --instruction is printed")
    path = check_out_file(args.out if args.out is not None else responses_path(args.data)) if args.data else None
    from heed.data import with_system

    records = (read_records(args.data, FieldMap.parse(data.fields), require_output=False,
                            skip_invalid=data.skip_invalid) if args.data
               else [Record(0, args.instruction, args.input or "", None, {})])
    with_system(records, saved_system(chosen.model))
    fits = check_room(chosen.model, records, cfg.max_new_tokens, args.data)
    model, tokenizer, template = load_generator(chosen.model, chosen.template, chosen.device, fits)
    stats: dict[str, Any] = {}
    if args.instruction:
        print(generate_responses(model, tokenizer, template, records, cfg, stats=stats)[0])
        report_speed(stats, cfg, model)
        return 0
    with progress(len(records), "generate", "record") as bar:
        responses = generate_responses(model, tokenizer, template, records, cfg, progress=bar.update, stats=stats)
    report_speed(stats, cfg, model)
    write_json(path, with_responses(records, responses), what="--out")
    print(f"wrote {len(records)} responses to {path}")
    return 0


def report_speed(stats: dict[str, Any], cfg: GenerateConfig, model: Any) -> None:
    """New tokens per second on stderr (stdout keeps only the answer), compiling included."""
    from heed.generate.responses import resolve_cache

    cache = resolve_cache(cfg.cache, next(model.parameters()).device)
    seconds = max(stats.get("seconds", 0.0), 1e-9)
    print(f"generated {int(stats.get('tokens', 0))} tokens in {seconds:.1f}s: "
          f"{stats.get('tokens', 0) / seconds:,.1f} tokens/s (cache {cache}, batch {cfg.batch_size})", file=sys.stderr)


def cmd_chat(args: argparse.Namespace) -> int:
    from heed.data.records import Record
    from heed.generate import generate_responses

    from heed.generate.responses import context_for

    chosen, cfg = validated(args, ModelConfig, GenerateConfig)
    context = context_for(chosen.model, cfg.max_new_tokens)
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
        stats: dict[str, Any] = {}
        print(generate_responses(model, tokenizer, template, [record], cfg, stats=stats)[0], flush=True)
        if stats["cut"]:  # a long line: what is left of the context is less than --max-new-tokens
            print(f"heed: note: the answer was cut short to fit the model's context of {context} tokens",
                  file=sys.stderr)
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
