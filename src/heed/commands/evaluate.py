"""Subcommands that make tasks and evaluate: tasks make, score, judge, compare, report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from heed.errors import HeedError


def cmd_tasks_make(args: argparse.Namespace) -> int:
    from heed.data.tasks import FAMILIES, make_tasks
    from heed.io import write_json

    families = [f.strip() for f in args.families.split(",")] if args.families else None
    unknown = [f for f in families or [] if f not in FAMILIES]
    if unknown:
        raise HeedError(f"--families: unknown {', '.join(unknown)}; choose from: {', '.join(FAMILIES)}")
    if args.n < 1:
        raise HeedError(f"--n must be at least 1 (got {args.n})")
    try:
        records = make_tasks(args.n, args.seed, families)
    except ValueError as e:
        raise HeedError(f"--n {args.n}: {e}") from None
    write_json(args.out, records)
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


def _judge(args: argparse.Namespace) -> Any:
    from heed.evaluate.judge import Judge, JudgeSpec

    return Judge(JudgeSpec.parse(args.judge, args.url, timeout=args.timeout, retries=args.retries,
                                 deadline=args.deadline))


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
    from heed.evaluate.judging import judge_records, raise_if_stopped, run_key
    from heed.evaluate.plot import plot_histogram
    from heed.io import write_json
    from heed.runtime.progress import progress

    records = _load_responses(args.responses)
    judge = _judge(args)
    source = Path(args.responses)
    stem = source.stem.removesuffix("-with-response")
    out = Path(args.out) if args.out else source.with_name(f"{stem}-judged.json")
    key = run_key(judge.spec.identity(), args.template, records)
    done = _resume(out, key, len(records), args.fresh)
    with progress(len(records), "judge", "record", initial=len(done)) as bar:
        judged, summary = judge_records(records, get_template(args.template), judge.ask,
                                        concurrency=args.concurrency, progress=bar.update, done=done)
    if not any(r.get("judge_replies") for r in judged):  # the judge answered nothing: leave any earlier file alone
        raise_if_stopped(summary, None, "records")
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
    from heed.evaluate.judging import compare_records, raise_if_stopped, run_key
    from heed.io import write_json
    from heed.runtime.progress import progress

    a, b = _load_responses(args.a), _load_responses(args.b)
    judge = _judge(args)
    out = Path(args.out) if args.out else Path(args.a).with_name(f"{Path(args.a).stem}-vs-{Path(args.b).stem}.json")
    key = run_key(judge.spec.identity(), args.template, a, b)
    done = _resume(out, key, len(a), args.fresh) if len(a) == len(b) else {}
    with progress(len(a), "compare", "pair", initial=len(done)) as bar:
        rows, summary = compare_records(a, b, get_template(args.template), judge.ask, concurrency=args.concurrency,
                                        progress=bar.update, done=done)
    if not any(r.get("judge_replies") for r in rows):  # the judge answered nothing: leave any earlier file alone
        raise_if_stopped(summary, None, "pairs")
    write_json(out, {"a": args.a, "b": args.b} | key | {"url": judge.spec.url, "complete": summary.stopped is None,
                                                         "summary": summary.to_dict(), "records": rows})
    print(summary.render(args.a, args.b))
    print(f"wrote {out}")
    raise_if_stopped(summary, out, "pairs")
    return 0


def _judge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judge", default="ollama:llama3", help="ollama:MODEL (default ollama:llama3) or openai:MODEL")
    p.add_argument("--url", help="server URL (Ollama default http://localhost:11434; for openai: the /v1 base URL; "
                                 "http://USER:PASSWORD@HOST sends basic auth); "
                                 "the API key comes from $HEED_JUDGE_API_KEY or $OPENAI_API_KEY")
    p.add_argument("--template", default="alpaca", help="template used to show the task to the judge (alpaca)")
    p.add_argument("--concurrency", type=int, default=1, help="requests in flight (servers that batch: 4-8)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds for a whole request: connect, send and the full reply, streamed or not (120)")
    p.add_argument("--retries", type=int, default=3, help="retries after a timeout, 5xx or malformed reply, "
                                                          "with backoff (3)")
    p.add_argument("--deadline", type=float, metavar="SECONDS",
                   help="stop the whole run after this long, saving what was judged (default: no limit)")
    p.add_argument("--fresh", action="store_true",
                   help="judge every record again, even where the output file holds an unfinished run to resume")
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
    p.add_argument("--n", type=int, default=1000, help="number of records (1000)")
    p.add_argument("--seed", type=int, default=123, help="seed (123)")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--families", help="comma-separated subset of families")
    p.set_defaults(func=cmd_tasks_make)

    p = sub.add_parser("score", help="exact match, ROUGE-L and per-family task accuracy of a responses file")
    p.add_argument("--responses", required=True, help="a *-with-response.json file")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.add_argument("--per-record", action="store_true", help="with --json, include each record's scores")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("judge", help="score responses 0-100 with an LLM judge (Ollama or OpenAI-compatible)",
                       description="Writes <name>-judged.json with per-record scores and raw replies, a histogram "
                                   "PNG beside it, and prints n scored, mean with a 95%% bootstrap CI and median.")
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
