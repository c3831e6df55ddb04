"""The data audit behind ``heed data check``: what training on this file would really see.

Counts duplicates (exact and near), conflicting answers, empty inputs, token lengths, over-long and
unsupervisable examples, the supervised-token share, and test prompts that also occur in training.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

from heed.data.encode import EncodeReport, Example, encode_records
from heed.data.records import Record, Split
from heed.data.templates import Template

NEAR_DUPLICATE_JACCARD = 0.9


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def _prompt_key(record: Record) -> str:
    return _normalize(record.instruction) + "\x00" + _normalize(record.input)


def _shingles(text: str) -> frozenset[str]:
    words = re.findall(r"\w+", text.lower())
    if len(words) < 2:
        return frozenset(words)
    return frozenset(" ".join(pair) for pair in zip(words, words[1:]))


def near_duplicates(texts: Sequence[str], threshold: float = NEAR_DUPLICATE_JACCARD) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, jaccard)`` of texts whose word-bigram sets overlap by at least ``threshold``.

    Texts are visited by set size: a pair can only reach the threshold when the smaller set holds at
    least ``threshold`` times as many bigrams as the larger, which bounds the inner loop.
    """
    sets = [_shingles(t) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(sets[i]))
    pairs = []
    for pos, i in enumerate(order):
        a = sets[i]
        if not a:
            continue
        for j in order[pos + 1:]:
            b = sets[j]
            if len(a) < threshold * len(b):
                break
            common = len(a & b)
            score = common / (len(a) + len(b) - common)
            if score >= threshold:
                pairs.append((min(i, j), max(i, j), round(score, 3)))
    return sorted(pairs)


def _percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


@dataclass
class Audit:
    source: str
    records: int
    max_length: int
    policy: str
    split: dict[str, int]
    exact_duplicates: list[tuple[int, int]] = field(default_factory=list)
    near_duplicates: list[tuple[int, int, float]] = field(default_factory=list)
    conflicting_outputs: list[tuple[int, int]] = field(default_factory=list)
    test_in_train: list[int] = field(default_factory=list)
    empty_inputs: int = 0
    lengths: dict[str, int] = field(default_factory=dict)
    over_max_length: list[int] = field(default_factory=list)
    zero_supervised: list[int] = field(default_factory=list)
    encode: dict[str, Any] = field(default_factory=dict)
    supervised_share: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def trainable(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()} | {"trainable": self.trainable}


def audit(
    records: Sequence[Record], split: Split, template: Template, tokenizer: Any, *,
    max_length: int, policy: str, train_on_prompt: bool, source: str,
) -> Audit:
    """Audit ``records`` (all of them) and the training split that ``split`` would train on."""
    result = Audit(source, len(records), max_length, policy, split.sizes())

    first_seen: dict[str, int] = {}
    first_prompt: dict[str, Record] = {}
    for record in records:
        full = _prompt_key(record) + "\x00" + _normalize(record.output or "")
        if full in first_seen:
            result.exact_duplicates.append((first_seen[full], record.index))
        else:
            first_seen[full] = record.index
        key = _prompt_key(record)
        earlier = first_prompt.setdefault(key, record)
        if earlier is not record and _normalize(earlier.output or "") != _normalize(record.output or ""):
            result.conflicting_outputs.append((earlier.index, record.index))
        if not record.input.strip():
            result.empty_inputs += 1
    texts = [f"{r.instruction}\n{r.input}\n{r.output}" for r in records]
    exact = {(a, b) for a, b in result.exact_duplicates}
    result.near_duplicates = [
        (records[i].index, records[j].index, s) for i, j, s in near_duplicates(texts)
        if (records[i].index, records[j].index) not in exact
    ]
    train_prompts = {_prompt_key(r) for r in split.train}
    result.test_in_train = [r.index for r in split.test if _prompt_key(r) in train_prompts]

    # Full lengths, before any length policy.
    unbounded, _ = encode_records(records, template, tokenizer, max_length=10**9, policy="drop",
                                  train_on_prompt=train_on_prompt, source=source)
    lengths = sorted(len(e.input_ids) for e in unbounded)
    result.lengths = {
        "min": lengths[0] if lengths else 0, "median": int(statistics.median(lengths)) if lengths else 0,
        "p95": _percentile(lengths, 0.95), "max": lengths[-1] if lengths else 0,
    }
    result.over_max_length = [e.index for e in unbounded if len(e.input_ids) > max_length]
    result.zero_supervised = [e.index for e in unbounded if e.prompt_length >= max_length and not train_on_prompt]

    effective = "drop" if policy == "error" else policy
    examples, report = encode_records(split.train, template, tokenizer, max_length=max_length, policy=effective,
                                      train_on_prompt=train_on_prompt, source=source)
    result.encode = report.to_dict()
    result.supervised_share = _supervised_share(examples)
    result.problems.extend(split.problems())  # the rule heed train applies
    _judge(result, report, examples)
    return result


def _supervised_share(examples: Sequence[Example]) -> float:
    tokens = sum(len(e.input_ids) - 1 for e in examples)
    return sum(e.supervised_tokens for e in examples) / tokens if tokens else 0.0


def _judge(result: Audit, report: EncodeReport, examples: list[Example]) -> None:
    if result.policy == "error" and result.over_max_length:
        result.problems.append(
            f"{len(result.over_max_length)} record(s) are longer than {result.max_length} tokens and "
            f"--overlong is 'error' (first: record {result.over_max_length[0]}); use --overlong drop or truncate"
        )
    if not examples and result.split["train"]:
        result.problems.append(
            f"no training example survives: {report.summary()}; raise --max-length or use --overlong truncate"
        )


def render(result: Audit) -> str:
    """A short human-readable report."""
    lines = [f"{result.source}: {result.records} records "
             f"(train {result.split['train']} / test {result.split['test']} / val {result.split['val']})"]
    lengths = result.lengths
    lines.append(f"  tokens per example: min {lengths['min']}, median {lengths['median']}, "
                 f"p95 {lengths['p95']}, max {lengths['max']} (max length {result.max_length})")
    lines.append(f"  over max length: {len(result.over_max_length)} (policy: {result.policy})"
                 + _first(result.over_max_length))
    lines.append(f"  zero supervised tokens: {len(result.zero_supervised)}" + _first(result.zero_supervised))
    lines.append(f"  training examples kept: {result.encode['kept']}/{result.encode['total']}; "
                 f"supervised-token share {result.supervised_share:.1%}")
    lines.append(f"  empty inputs: {result.empty_inputs}")
    lines.append(f"  exact duplicates: {len(result.exact_duplicates)}"
                 + _pairs(result.exact_duplicates))
    lines.append(f"  near duplicates (word-bigram Jaccard >= {NEAR_DUPLICATE_JACCARD}): "
                 f"{len(result.near_duplicates)}" + _pairs([(a, b) for a, b, _ in result.near_duplicates]))
    lines.append(f"  same prompt, different output: {len(result.conflicting_outputs)}"
                 + _pairs(result.conflicting_outputs))
    lines.append(f"  test prompts also in train: {len(result.test_in_train)}" + _first(result.test_in_train))
    if result.problems:
        lines.append("not trainable:")
        lines.extend(f"  - {p}" for p in result.problems)
    else:
        lines.append("trainable: yes")
    return "\n".join(lines)


def _first(indices: list[int], k: int = 5) -> str:
    if not indices:
        return ""
    more = f", … +{len(indices) - k}" if len(indices) > k else ""
    return " (records " + ", ".join(map(str, indices[:k])) + more + ")"


def _pairs(pairs: list[tuple[int, int]], k: int = 3) -> str:
    if not pairs:
        return ""
    more = f", … +{len(pairs) - k}" if len(pairs) > k else ""
    return " (" + ", ".join(f"{a}~{b}" for a, b in pairs[:k]) + more + ")"
