"""Offline reference metrics: per-family task accuracy, exact match and ROUGE-L F1.

Input is a responses file: records with ``model_response`` (and ``output`` as the reference;
``task`` for built-in task records).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

from heed.data.tasks import FAMILIES, normalize, verify


def rouge_l(reference: str, response: str) -> float:
    """ROUGE-L F1 from the ``rouge-score`` package (no stemming)."""
    from rouge_score import rouge_scorer

    return _scorer(rouge_scorer).score(reference, response)["rougeL"].fmeasure


_SCORER: Any = None


def _scorer(module: Any) -> Any:
    global _SCORER
    if _SCORER is None:
        _SCORER = module.RougeScorer(["rougeL"], use_stemmer=False)
    return _SCORER


@dataclass
class Scores:
    n: int = 0
    exact_match: float | None = None
    rouge_l: float | None = None
    task_accuracy: dict[str, dict[str, float | int]] = field(default_factory=dict)
    task_overall: float | None = None
    per_record: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, with_records: bool = False) -> dict[str, Any]:
        d = {"n": self.n, "exact_match": self.exact_match, "rouge_l": self.rouge_l,
             "task_overall": self.task_overall, "task_accuracy": self.task_accuracy}
        if with_records:
            d["per_record"] = self.per_record
        return d


def score(records: Sequence[dict[str, Any]]) -> Scores:
    """Score records that carry ``model_response``; those without a reference are counted but unscored."""
    result = Scores(n=len(records))
    em, rl = [], []
    by_task: dict[str, list[bool]] = defaultdict(list)
    for record in records:
        response = record.get("model_response") or ""
        reference = record.get("output", record.get("response"))
        row: dict[str, Any] = {}
        if isinstance(reference, str):
            row["exact_match"] = normalize(reference) == normalize(response)
            row["rouge_l"] = rouge_l(reference, response)
            em.append(row["exact_match"])
            rl.append(row["rouge_l"])
            task = record.get("task")
            if task in FAMILIES:
                row["correct"] = verify(task, reference, response)
                by_task[task].append(row["correct"])
        result.per_record.append(row)
    if em:
        result.exact_match = sum(em) / len(em)
        result.rouge_l = sum(rl) / len(rl)
    for task in sorted(by_task):
        hits = by_task[task]
        result.task_accuracy[task] = {"n": len(hits), "accuracy": sum(hits) / len(hits)}
    if by_task:
        everything = [h for hits in by_task.values() for h in hits]
        result.task_overall = sum(everything) / len(everything)
    return result


def render(scores: Scores, title: str = "") -> str:
    lines = [title] if title else []
    if scores.task_accuracy:
        width = max(len(t) for t in scores.task_accuracy)
        for task, row in scores.task_accuracy.items():
            lines.append(f"  {task:<{width}}  {row['accuracy']:6.1%}  (n={row['n']})")
        lines.append(f"  {'all tasks':<{width}}  {scores.task_overall:6.1%}")
    if scores.exact_match is not None:
        lines.append(f"  exact match {scores.exact_match:.1%}, ROUGE-L F1 {scores.rouge_l:.3f} over {scores.n} records")
    else:
        lines.append(f"  {scores.n} records, none with a reference output")
    return "\n".join(lines)
