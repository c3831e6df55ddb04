"""Subcommands that make tasks and evaluate: tasks make, score, judge, compare, report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from heed.commands.options import add_flags, validated
from heed.config import JudgeConfig, TasksConfig
from heed.errors import HeedError


def cmd_tasks_make(args: argparse.Namespace) -> int:
    from heed.data.tasks import make_tasks
    from heed.io import check_out_file, write_json

    (cfg,) = validated(args, TasksConfig)
    check_out_file(args.out)
    try:
        records = make_tasks(cfg.n, cfg.seed, cfg.families)
    except ValueError as e:
        raise HeedError(f"--n {cfg.n}: {e}") from None
    write_json(args.out, records, what="--out")
    print(f"wrote {len(records)} task records to {args.out}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from heed.evaluate.metrics import render, score

    records = _load_responses(args.responses)
    scores = score(records)
    if args.json:
        print(json.dumps(scores.to_dict(with_records=args.per_record)))
    else:
        print(render(scores, f"{args.responses}:"))
    return 0


def _load_responses(path: str) -> list[dict[str, Any]]:
    """Records with a string ``model_response``, validated like any data file."""
    from heed.data.records import load_records

    records = [r.raw for r in load_records(path, require_output=False)]
    missing = [i for i, r in enumerate(records) if not isinstance(r.get("model_response"), str)]
    if missing:
        raise HeedError(*(f"{path}: record {i}: 'model_response' is missing or not a string "
                          "(make it with heed generate)" for i in missing[:20]))
    return records


def _judge_spec(args: argparse.Namespace) -> tuple[JudgeConfig, Any]:
    """The judge settings, validated, and the judge they name, before any record is read or request sent."""
    from heed.evaluate.judge import JudgeSpec

    (cfg,) = validated(args, JudgeConfig)
    return cfg, JudgeSpec.parse(cfg.judge, cfg.url, timeout=cfg.timeout, retries=cfg.retries, deadline=cfg.deadline)


def _resume(out: Path, key: dict[str, Any], total: int, fresh: bool) -> dict[int, dict[str, Any]]:
    from heed.evaluate.judging import resumable

    if fresh:
        return {}
    done, note = resumable(out, key, total)
    if note:
        print(f"heed: note: {note}", file=sys.stderr)
    elif done:
        print(f"heed: resuming {out}: {len(done)} of {total} already judged", file=sys.stderr)
    return done


def cmd_judge(args: argparse.Namespace) -> int:
    from heed.data.templates import get_template
    from heed.evaluate.judge import Judge
    from heed.evaluate.judging import judge_records, raise_if_stopped, run_key
    from heed.evaluate.plot import plot_histogram
    from heed.io import check_out_file, write_json
    from heed.runtime.progress import progress

    cfg, spec = _judge_spec(args)
    records = _load_responses(args.responses)
    judge = Judge(spec)  # its --deadline counts from here
    source = Path(args.responses)
    stem = source.stem.removesuffix("-with-response")
    out = check_out_file(args.out if args.out is not None else source.with_name(f"{stem}-judged.json"))
    if out.suffix == ".png":
        raise HeedError(f"--out {out}: the histogram is written beside it as {out.name}; give a .json path")
    check_out_file(out.with_suffix(".png"), "--out (its histogram)")
    key = run_key(judge.spec.identity(), cfg.template, records)
    done = _resume(out, key, len(records), cfg.fresh)
    with progress(len(records), "judge", "record", initial=len(done)) as bar:
        judged, summary = judge_records(records, get_template(cfg.template), judge.ask,
                                        concurrency=cfg.concurrency, progress=bar.update, done=done)
    if not any(r.get("judge_replies") for r in judged):  # the judge answered nothing: leave any earlier file alone
        raise_if_stopped(summary, None, "records", out)
    name = judge.spec.name
    write_json(out, key | {"url": judge.spec.url, "complete": summary.stopped is None, "summary": summary.to_dict(),
                           "records": judged})
    scores = [r["judge_score"] for r in judged if r["judge_score"] is not None]
    if scores:
        plot_histogram(scores, out.with_suffix(".png"), title=f"{stem}: {name}, mean {summary.mean:.1f}")
    print(summary.render(name))
    print(f"wrote {out}")
    raise_if_stopped(summary, out, "records")
    return 0 if summary.scored else 2


def cmd_compare(args: argparse.Namespace) -> int:
    from heed.data.templates import get_template
    from heed.evaluate.judge import Judge
    from heed.evaluate.judging import compare_records, raise_if_stopped, run_key
    from heed.io import check_out_file, write_json
    from heed.runtime.progress import progress

    cfg, spec = _judge_spec(args)
    a, b = _load_responses(args.a), _load_responses(args.b)
    judge = Judge(spec)  # its --deadline counts from here
    out = check_out_file(args.out if args.out is not None
                         else Path(args.a).with_name(f"{Path(args.a).stem}-vs-{Path(args.b).stem}.json"))
    key = run_key(judge.spec.identity(), cfg.template, a, b)
    done = _resume(out, key, len(a), cfg.fresh) if len(a) == len(b) else {}
    with progress(len(a), "compare", "pair", initial=len(done)) as bar:
        rows, summary = compare_records(a, b, get_template(cfg.template), judge.ask, concurrency=cfg.concurrency,
                                        progress=bar.update, done=done)
    if not any(r.get("judge_replies") for r in rows):  # the judge answered nothing: leave any earlier file alone
        raise_if_stopped(summary, None, "pairs", out)
    write_json(out, {"a": args.a, "b": args.b} | key | {"url": judge.spec.url, "complete": summary.stopped is None,
                                                         "summary": summary.to_dict(), "records": rows})
    print(summary.render(args.a, args.b))
    print(f"wrote {out}")
    raise_if_stopped(summary, out, "pairs")
    return 0


def _judge_args(p: argparse.ArgumentParser) -> None:
    add_flags(p, JudgeConfig)
    p.add_argument("--out", help="output file")


def cmd_report(args: argparse.Namespace) -> int:
    from heed.evaluate.report import write_report

    html_path, md_path = write_report(args.run_dir)
    print(f"wrote {html_path} and {md_path}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("tasks", help="built-in verifiable tasks (tasks make)")
    tasks_sub = p.add_subparsers(dest="tasks_command", metavar="SUBCOMMAND", required=True)
    p = tasks_sub.add_parser("make", help="write task records with checkable answers",
                             description="Write Alpaca-format records (plus a 'task' field) from 14 families "
                                         "whose answers can be verified exactly.")
    add_flags(p, TasksConfig, only=("n", "seed"))
    p.add_argument("--out", required=True, help="JSON file to write")
    add_flags(p, TasksConfig, only=("families",))
    p.set_defaults(func=cmd_tasks_make)

    p = sub.add_parser("score", help="exact match, ROUGE-L and per-family task accuracy of a responses file")
    p.add_argument("--responses", required=True, help="a *-with-response.json file")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.add_argument("--per-record", action="store_true", help="with --json, include each record's scores")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("judge", help="score responses 0-100 with an LLM judge (Ollama or OpenAI-compatible)",
                       description="Writes <name>-judged.json with per-record scores and raw replies, a histogram "
                                   "PNG beside it, and prints n scored, mean with a 95% bootstrap CI and median.")
    p.add_argument("--responses", required=True, help="a *-with-response.json file")
    _judge_args(p)
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser("compare", help="pairwise judge: which of two response files is better, per record",
                       description="Each pair is judged in both orders to cancel position bias.")
    p.add_argument("a", help="responses A (e.g. the finetuned model)")
    p.add_argument("b", help="responses B (e.g. the base model)")
    _judge_args(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="a self-contained HTML (and Markdown) page for a training run")
    p.add_argument("run_dir", help="a directory written by heed train")
    p.set_defaults(func=cmd_report)
