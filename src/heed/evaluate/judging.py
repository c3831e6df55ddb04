"""``heed judge`` and ``heed compare``: prompts, reply parsing, concurrency and summaries.

Accepted score replies (case-insensitive, surrounding whitespace and a final full stop ignored):
``85``, ``Score: 85``, ``85/100``, ``85 / 100``. Anything else is re-asked once with a stricter
reminder; what still fails is counted and listed as failed, never silently skipped.
"""

from __future__ import annotations

import random
import re
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def render(self, judge: str) -> str:
        if not self.scored:
            return f"judge {judge}: no record could be scored ({len(self.failed)} failed)"
        lines = [f"judge {judge}: {self.scored}/{self.total} scored, mean {self.mean:.1f} "
                 f"(95% CI {self.ci95[0]:.1f}–{self.ci95[1]:.1f}), median {self.median:g}"]
        if self.empty_responses:
            lines.append(f"  {self.empty_responses} empty responses scored 0 without asking")
        if self.failed:
            lines.append(f"  {len(self.failed)} unparseable after a second ask: records "
                         + ", ".join(map(str, self.failed[:20])) + (" …" if len(self.failed) > 20 else ""))
        return "\n".join(lines)


def judge_records(records: Sequence[dict[str, Any]], template: Template, ask: Callable[[str], str], *,
                  concurrency: int = 1, progress: Callable[[int], None] | None = None) -> tuple[list[dict[str, Any]], JudgeSummary]:
    """Score each record's ``model_response`` against its ``output``; returns records with
    ``judge_score`` (None when unparseable) and ``judge_replies``, and the summary."""

    def one(record: dict[str, Any]) -> dict[str, Any]:
        response = (record.get("model_response") or "").strip()
        if not response:
            return record | {"judge_score": 0, "judge_replies": [], "judge_note": "empty response"}
        prompt = score_prompt(template.prompt(record.get("instruction", ""), record.get("input") or ""),
                              str(record.get("output", "")), response)
        value, replies = _ask_parsed(ask, prompt, parse_score, STRICT_SCORE)
        return record | {"judge_score": value, "judge_replies": replies}

    judged = _map(one, records, concurrency, progress)
    scores = [r["judge_score"] for r in judged if r["judge_score"] is not None]
    summary = JudgeSummary(total=len(judged), scored=len(scores),
                           failed=[i for i, r in enumerate(judged) if r["judge_score"] is None],
                           empty_responses=sum(1 for r in judged if r.get("judge_note") == "empty response"))
    if scores:
        summary.mean = sum(scores) / len(scores)
        summary.ci95 = bootstrap_ci(scores)
        summary.median = statistics.median(scores)
    return judged, summary


def _map(fn: Callable[[dict[str, Any]], dict[str, Any]], records: Sequence[dict[str, Any]], concurrency: int,
         progress: Callable[[int], None] | None) -> list[dict[str, Any]]:
    if concurrency < 1:
        raise HeedError(f"--concurrency must be at least 1 (got {concurrency})")
    results: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for result in pool.map(fn, records):  # keeps input order; the first HeedError stops the run
            results.append(result)
            if progress:
                progress(1)
    return results


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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def render(self, a: str, b: str) -> str:
        if self.win_rate is None:
            return f"{a} vs {b}: no pair could be judged ({len(self.failed)} failed)"
        line = (f"{a} vs {b}: win {self.wins} / tie {self.ties} / loss {self.losses} for A; "
                f"A's win rate {self.win_rate:.1%} (95% CI {self.ci95[0]:.1%}–{self.ci95[1]:.1%}); "
                f"{self.inconsistent} verdicts changed with the order")
        if self.failed:
            line += f"; {len(self.failed)} unparseable: records " + ", ".join(map(str, self.failed[:20]))
        return line


def compare_records(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], template: Template,
                    ask: Callable[[str], str], *, concurrency: int = 1,
                    progress: Callable[[int], None] | None = None) -> tuple[list[dict[str, Any]], CompareSummary]:
    """Pairwise verdicts, each pair asked in both orders. Outcome for A: 1 win, 0.5 tie, 0 loss.

    A pair whose two verdicts disagree (e.g. the judge always prefers the first answer) counts as a
    tie and as order-inconsistent.
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
    verdicts = _map(one, [{"a": ra, "b": rb} for ra, rb in zip(a, b)], concurrency, progress)
    summary = CompareSummary(total=len(verdicts))
    outcomes = []
    for i, v in enumerate(verdicts):
        if v["outcome"] is None:
            summary.failed.append(i)
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
            for ra, rb, v in zip(a, b, verdicts)]
    return rows, summary
