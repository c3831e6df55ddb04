"""``heed judge`` and ``heed compare``: prompts, reply parsing, concurrency, summaries and resuming.

Accepted score replies (case-insensitive, surrounding whitespace and a final full stop ignored):
``85``, ``Score: 85``, ``85/100``, ``85 / 100``. Anything else is re-asked once with a stricter
reminder; what still fails is counted and listed as failed, never silently skipped.

When the judge fails for good part-way (``ask`` raises ``HeedError``), the run stops asking: records
already judged keep their results, the rest carry ``judge_error`` and are listed as not judged, and
``resumable`` lets the next run of the same judge on the same responses judge only those.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import statistics
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from heed.data.templates import Template
from heed.errors import HeedError

SCORE_REPLY = re.compile(r"^\s*(?:score\s*[:=]?\s*)?(\d{1,3})\s*(?:/\s*100)?\s*\.?\s*$", re.IGNORECASE)
VERDICT_REPLY = re.compile(r"^\s*(?:verdict\s*[:=]?\s*)?\[?\s*(A|B|tie)\s*\]?\s*\.?\s*$", re.IGNORECASE)


def score_prompt(prompt_text: str, reference: str, response: str) -> str:
    return (
        "You are grading a model's answer to a task.\n\n"
        f"Task (as the model saw it):\n{prompt_text}\n\n"
        f"Reference answer:\n{reference}\n\n"
        f"Model answer:\n{response}\n\n"
        "How good is the model answer compared with the reference? Give a score from 0 to 100, "
        "where 100 is best. Reply with the integer only."
    )


STRICT_SCORE = "\n\nYour previous reply could not be read. Reply with one integer from 0 to 100 and nothing else."


def compare_prompt(prompt_text: str, reference: str, first: str, second: str) -> str:
    return (
        "Two assistants answered the same task. Decide which answer is better.\n\n"
        f"Task:\n{prompt_text}\n\nReference answer:\n{reference}\n\n"
        f"Answer A:\n{first}\n\nAnswer B:\n{second}\n\n"
        "Reply with exactly one of: A, B, tie."
    )


STRICT_VERDICT = "\n\nYour previous reply could not be read. Reply with A, B or tie and nothing else."


def parse_score(reply: str) -> int | None:
    match = SCORE_REPLY.match(reply)
    if not match:
        return None
    value = int(match.group(1))
    return value if 0 <= value <= 100 else None


def parse_verdict(reply: str) -> str | None:
    match = VERDICT_REPLY.match(reply)
    return match.group(1).upper().replace("TIE", "tie") if match else None


def _ask_parsed(ask: Callable[[str], str], prompt: str, parse: Callable[[str], Any], strict: str) -> tuple[Any, list[str]]:
    replies = [ask(prompt)]
    value = parse(replies[0])
    if value is None:
        replies.append(ask(prompt + strict))
        value = parse(replies[-1])
    return value, replies


def bootstrap_ci(values: Sequence[float], *, rounds: int = 2000, seed: int = 123, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean."""
    if not values:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choice(values) for _ in range(n)) / n for _ in range(rounds))
    lo = means[int((1 - level) / 2 * rounds)]
    hi = means[min(rounds - 1, int((1 + level) / 2 * rounds))]
    return lo, hi


@dataclass
class JudgeSummary:
    total: int
    scored: int
    failed: list[int] = field(default_factory=list)
    mean: float | None = None
    ci95: tuple[float, float] | None = None
    median: float | None = None
    empty_responses: int = 0
    unjudged: list[int] = field(default_factory=list)  # not judged: the run stopped first
    stopped: str | None = None  # why the run stopped early

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def render(self, judge: str) -> str:
        if not self.scored:
            lines = [f"judge {judge}: no record could be scored ({len(self.failed)} unparseable, "
                     f"{len(self.unjudged)} not judged)"]
        else:
            lines = [f"judge {judge}: {self.scored}/{self.total} scored, mean {self.mean:.1f} "
                     f"(95% CI {self.ci95[0]:.1f}–{self.ci95[1]:.1f}), median {self.median:g}"]
        if self.empty_responses:
            lines.append(f"  {self.empty_responses} empty responses scored 0 without asking")
        if self.failed and self.scored:
            lines.append(f"  {len(self.failed)} unparseable after a second ask: records {_some(self.failed)}")
        if self.unjudged and self.scored:
            lines.append(f"  {len(self.unjudged)} not judged (the run stopped): records {_some(self.unjudged)}")
        return "\n".join(lines)


def _some(indices: list[int]) -> str:
    return ", ".join(map(str, indices[:20])) + (" …" if len(indices) > 20 else "")


def judge_records(records: Sequence[dict[str, Any]], template: Template, ask: Callable[[str], str], *,
                  concurrency: int = 1, progress: Callable[[int], None] | None = None,
                  done: dict[int, dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], JudgeSummary]:
    """Score each record's ``model_response`` against its ``output``; returns records with
    ``judge_score`` (None when unparseable or not judged) and ``judge_replies``, and the summary.

    ``done`` holds results by index from an earlier run (see ``resumable``); those are not asked again.
    Records the run could not judge because it stopped carry ``judge_error``.
    """

    def one(record: dict[str, Any]) -> dict[str, Any]:
        response = (record.get("model_response") or "").strip()
        if not response:
            return record | {"judge_score": 0, "judge_replies": [], "judge_note": "empty response"}
        prompt = score_prompt(template.prompt(record.get("instruction", ""), record.get("input") or ""),
                              str(record.get("output", "")), response)
        value, replies = _ask_parsed(ask, prompt, parse_score, STRICT_SCORE)
        return record | {"judge_score": value, "judge_replies": replies}

    def not_judged(record: dict[str, Any], error: str) -> dict[str, Any]:
        return record | {"judge_score": None, "judge_replies": [], "judge_error": error}

    judged, stopped = _map(one, records, concurrency, progress, done or {}, not_judged)
    scores = [r["judge_score"] for r in judged if r["judge_score"] is not None]
    summary = JudgeSummary(total=len(judged), scored=len(scores), stopped=stopped,
                           failed=[i for i, r in enumerate(judged)
                                   if r["judge_score"] is None and "judge_error" not in r],
                           unjudged=[i for i, r in enumerate(judged) if "judge_error" in r],
                           empty_responses=sum(1 for r in judged if r.get("judge_note") == "empty response"))
    if scores:
        summary.mean = sum(scores) / len(scores)
        summary.ci95 = bootstrap_ci(scores)
        summary.median = statistics.median(scores)
    return judged, summary


Row = dict[str, Any]


def _map(fn: Callable[[Row], Row], items: Sequence[Row], concurrency: int, progress: Callable[[int], None] | None,
         done: dict[int, Row], unfinished: Callable[[Row, str], Row]) -> tuple[list[Row], str | None]:
    """``fn`` over the items not ``done``, in input order. The first ``HeedError`` stops the run:
    items not yet started are not started, and each item without a result becomes
    ``unfinished(item, error)``. Returns the rows and the first error (None when all finished)."""
    if concurrency < 1:
        raise HeedError(f"--concurrency must be at least 1 (got {concurrency})")
    rows: list[Row | None] = [done.get(i) for i in range(len(items))]
    stopped: str | None = None
    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        futures = {i: pool.submit(fn, item) for i, item in enumerate(items) if rows[i] is None}
        for i, future in futures.items():
            try:
                rows[i] = future.result()
            except (HeedError, CancelledError) as e:
                stopped = stopped or str(e)
                for later in futures.values():
                    later.cancel()
                rows[i] = unfinished(items[i], str(e) if isinstance(e, HeedError) else f"not asked: {stopped}")
                continue
            if progress:
                progress(1)
    finally:  # whatever ends the loop (Ctrl-C too), items not yet started are not started
        pool.shutdown(wait=True, cancel_futures=True)
    return rows, stopped  # type: ignore[return-value]


@dataclass
class CompareSummary:
    total: int
    wins: int = 0
    ties: int = 0
    losses: int = 0
    inconsistent: int = 0
    failed: list[int] = field(default_factory=list)
    win_rate: float | None = None  # (wins + ties / 2) / decided, for A
    ci95: tuple[float, float] | None = None
    unjudged: list[int] = field(default_factory=list)  # not judged: the run stopped first
    stopped: str | None = None  # why the run stopped early

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def render(self, a: str, b: str) -> str:
        if self.win_rate is None:
            return (f"{a} vs {b}: no pair could be judged ({len(self.failed)} unparseable, "
                    f"{len(self.unjudged)} not judged)")
        line = (f"{a} vs {b}: win {self.wins} / tie {self.ties} / loss {self.losses} for A; "
                f"A's win rate {self.win_rate:.1%} (95% CI {self.ci95[0]:.1%}–{self.ci95[1]:.1%}); "
                f"{self.inconsistent} verdicts changed with the order")
        if self.failed:
            line += f"; {len(self.failed)} unparseable: records {_some(self.failed)}"
        if self.unjudged:
            line += f"; {len(self.unjudged)} not judged (the run stopped): records {_some(self.unjudged)}"
        return line


def compare_records(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], template: Template,
                    ask: Callable[[str], str], *, concurrency: int = 1,
                    progress: Callable[[int], None] | None = None,
                    done: dict[int, dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], CompareSummary]:
    """Pairwise verdicts, each pair asked in both orders. Outcome for A: 1 win, 0.5 tie, 0 loss.

    A pair whose two verdicts disagree (e.g. the judge always prefers the first answer) counts as a
    tie and as order-inconsistent. ``done``: output rows by index from an earlier run, not asked again;
    pairs the run could not judge because it stopped carry ``judge_error``.
    """

    def one(pair: dict[str, Any]) -> dict[str, Any]:
        ra, rb = pair["a"], pair["b"]
        prompt_text = template.prompt(ra.get("instruction", ""), ra.get("input") or "")
        reference = str(ra.get("output", ""))
        first, r1 = _ask_parsed(ask, compare_prompt(prompt_text, reference, ra["model_response"], rb["model_response"]),
                                parse_verdict, STRICT_VERDICT)
        second, r2 = _ask_parsed(ask, compare_prompt(prompt_text, reference, rb["model_response"], ra["model_response"]),
                                 parse_verdict, STRICT_VERDICT)
        if first is None or second is None:
            return {"outcome": None, "replies": r1 + r2}
        a_first = {"A": 1.0, "B": 0.0, "tie": 0.5}[first]
        a_second = {"A": 0.0, "B": 1.0, "tie": 0.5}[second]  # A is shown second here
        consistent = a_first == a_second
        return {"outcome": a_first if consistent else 0.5, "consistent": consistent, "replies": r1 + r2}

    if len(a) != len(b):
        raise HeedError(f"the two response files hold {len(a)} and {len(b)} records; compare needs the same records")
    for i, (ra, rb) in enumerate(zip(a, b)):
        if ra.get("instruction") != rb.get("instruction") or (ra.get("input") or "") != (rb.get("input") or ""):
            raise HeedError(f"record {i}: the two files differ in instruction or input; compare needs the same records")
    summary = CompareSummary(total=len(a))
    earlier = {i: {"outcome": row.get("outcome_for_a"), "consistent": row.get("order_consistent", True),
                   "replies": row.get("judge_replies", [])} for i, row in (done or {}).items()}
    verdicts, summary.stopped = _map(one, [{"a": ra, "b": rb} for ra, rb in zip(a, b)], concurrency, progress,
                                     earlier, lambda pair, error: {"outcome": None, "replies": [], "error": error})
    outcomes = []
    for i, v in enumerate(verdicts):
        if "error" in v:
            summary.unjudged.append(i)
        elif v["outcome"] is None:
            summary.failed.append(i)
        if v["outcome"] is None:
            continue
        outcomes.append(v["outcome"])
        summary.wins += v["outcome"] == 1.0
        summary.losses += v["outcome"] == 0.0
        summary.ties += v["outcome"] == 0.5
        summary.inconsistent += not v["consistent"]
    if outcomes:
        summary.win_rate = sum(outcomes) / len(outcomes)
        summary.ci95 = bootstrap_ci(outcomes)
    rows = [ra | {"response_b": rb["model_response"], "outcome_for_a": v["outcome"], "judge_replies": v["replies"]}
            | ({"order_consistent": v["consistent"]} if "consistent" in v else {})
            | ({"judge_error": v["error"]} if "error" in v else {})
            for ra, rb, v in zip(a, b, verdicts)]
    return rows, summary


def run_key(judge: dict[str, Any], template: str, *record_lists: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What a run's results depend on: the judge (``JudgeSpec.identity``), the template and the
    content of the responses (a hash of the records, whatever the file's layout)."""
    digest = hashlib.sha256()
    for records in record_lists:
        digest.update(json.dumps(records, sort_keys=True, ensure_ascii=False).encode())
    return judge | {"template": template, "responses_sha256": digest.hexdigest()}


def resumable(out: Path, key: dict[str, Any], total: int) -> tuple[dict[int, dict[str, Any]], str | None]:
    """Rows to keep from ``out`` when it holds an unfinished run (``"complete": false``) with the same
    ``key``: every row without ``judge_error``. A finished run is judged afresh. Returns the rows by
    index and, when ``out`` holds an unfinished run that cannot be reused, a note saying why."""
    try:
        old = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}, None
    if not isinstance(old, dict) or old.get("complete") is not False:
        return {}, None
    rows = old.get("records")
    if any(old.get(k) != v for k, v in key.items()) or not isinstance(rows, list) or len(rows) != total:
        return {}, (f"{out} holds an unfinished run of another judge, template or responses; "
                    "judging every record again")
    return {i: row for i, row in enumerate(rows) if isinstance(row, dict) and "judge_error" not in row}, None


def raise_if_stopped(summary: JudgeSummary | CompareSummary, out: Path | None, unit: str,
                     untouched: Path | None = None) -> None:
    """A run that stopped early ends with one line: why, what was kept in ``out`` and how to go on. ``out``
    None: nothing was judged, so nothing was written, and ``untouched`` (the output path) was left as it was:
    a file that held nothing judged would give a re-run nothing to reuse, and would replace an earlier run."""
    if not summary.stopped:
        return
    if out is None:
        where = f"; {untouched} was not written" if untouched is not None else ""
        raise HeedError(f"{summary.stopped}; no {unit[:-1]} was judged{where}; run the same command again "
                        "once the judge answers")
    left = len(summary.unjudged)
    raise HeedError(f"{summary.stopped}; {summary.total - left} of {summary.total} {unit} judged and saved in {out}; "
                    f"run the same command again to judge the other {left}")
