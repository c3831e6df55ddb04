"""The data audit behind ``heed data check``: what training on this file would really see.

Counts duplicates (exact and near), conflicting answers, empty inputs, token lengths, over-long and
unsupervisable examples, the supervised-token share, and test prompts that also occur in training.
Every pass is linear in the records except the near-duplicate scan, which is near-linear
(``heed.data.near_dup``); records are tokenized once, in batches, keeping only their lengths.
"""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from heed.data.encode import EncodeReport, encode_records, eos_id, plain_ids, record_prompt_ids
from heed.data.near_dup import NEAR_DUPLICATE_JACCARD, near_duplicates, progress_bar
from heed.data.records import Record, Split
from heed.data.templates import Template

ENCODE_BATCH = 4096  # records tokenized per call: large enough for the tokenizer's threads, small in memory


def _normalize(text: str) -> str:
    """Lowercased, whitespace runs made one space, ends stripped (``str.split`` and ``\\s`` agree on spaces)."""
    return " ".join(text.lower().split())


def _prompt_key(record: Record) -> bytes:
    return _digest(_normalize(record.instruction) + "\x00" + _normalize(record.input))


def _digest(text: str) -> bytes:
    """16 bytes standing for ``text`` in the duplicate tables (a million records' text would fill memory)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


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
    max_length: int, policy: str, train_on_prompt: bool, source: str, progress: bool | None = None,
) -> Audit:
    """Audit ``records`` (all of them) and the training split that ``split`` would train on.

    ``progress``: None shows bars on a terminal when a pass takes more than two seconds; False never.
    """
    result = Audit(source, len(records), max_length, policy, split.sizes())
    prompt_keys, copies = _duplicates(result, records)
    result.near_duplicates = _near_duplicates([r for r, copy in zip(records, copies) if not copy], progress)
    train_prompts = {prompt_keys.get(id(r)) or _prompt_key(r) for r in split.train}
    result.test_in_train = [r.index for r in split.test if _prompt_key(r) in train_prompts]
    lengths = _token_lengths(records, template, tokenizer, train_on_prompt, progress)
    _length_findings(result, lengths, train_on_prompt)
    report, supervised, tokens = _encode_train(split.train, lengths, template, tokenizer, max_length=max_length,
                                               policy=policy, train_on_prompt=train_on_prompt, source=source)
    result.encode = report.to_dict()
    result.supervised_share = supervised / tokens if tokens else 0.0
    result.problems.extend(split.problems())  # the rule heed train applies
    _judge(result, report)
    return result


def _duplicates(result: Audit, records: Sequence[Record]) -> tuple[dict[int, bytes], list[bool]]:
    """Fill exact duplicates, conflicting outputs and empty inputs. Returns each record's prompt key
    (by ``id(record)``) and, per record, whether it is a later exact copy.

    Duplicates compare text lowercased with whitespace runs made one space; each later copy is paired
    with the first occurrence.
    """
    first_seen: dict[bytes, int] = {}
    first_prompt: dict[bytes, tuple[Record, bytes]] = {}
    prompt_keys: dict[int, bytes] = {}
    copies = []
    for record in records:
        key = _prompt_key(record)
        output = _digest(_normalize(record.output or ""))
        prompt_keys[id(record)] = key
        full = key + output
        copies.append(full in first_seen)
        if full in first_seen:
            result.exact_duplicates.append((first_seen[full], record.index))
        else:
            first_seen[full] = record.index
        earlier, earlier_output = first_prompt.setdefault(key, (record, output))
        if earlier is not record and earlier_output != output:
            result.conflicting_outputs.append((earlier.index, record.index))
        if not record.input.strip():
            result.empty_inputs += 1
    return prompt_keys, copies


def _near_duplicates(kept: Sequence[Record], progress: bool | None) -> list[tuple[int, int, float]]:
    """Near-duplicate pairs among ``kept``: the records that are not a later exact copy. A copy has its
    first occurrence's bigrams, so it would only repeat that record's pairs (and k copies would pair
    with each other k² times); the copies are listed under exact duplicates."""
    texts = _Texts(kept)
    return [(kept[i].index, kept[j].index, s) for i, j, s in near_duplicates(texts, progress=progress)]


class _Texts:
    """Each record's text for the near-duplicate scan, made as it is read (none are held)."""

    def __init__(self, records: Sequence[Record]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return (f"{r.instruction}\n{r.input}\n{r.output}" for r in self.records)


@dataclass
class _Lengths:
    """Per record (in file order): whole-example, prompt and supervised tokens; -1 where no example came out."""

    index: np.ndarray  # the records' indices
    position: dict[int, int]  # id(record) -> row
    tokens: np.ndarray
    prompt: np.ndarray
    supervised: np.ndarray


def _token_lengths(records: Sequence[Record], template: Template, tokenizer: Any, train_on_prompt: bool,
                   progress: bool | None) -> _Lengths:
    """Tokenize every record once, in batches, with no length limit, keeping only the lengths: the
    ids ``encode_records`` would build, without building its examples."""
    eos_id(tokenizer)  # the same error as encoding would give
    n = len(records)
    position = {id(r): row for row, r in enumerate(records)}
    prompt = np.zeros(n, np.int64)
    response = np.zeros(n, np.int64)
    with progress_bar(n, "token lengths", progress) as bar:
        for lo in range(0, n, ENCODE_BATCH):
            batch = [r for r in records[lo:lo + ENCODE_BATCH] if r.turns is None]
            prompts = record_prompt_ids(batch, tokenizer, template)  # as training encodes them
            responses = plain_ids([r.output or "" for r in batch], tokenizer)
            rows = [position[id(r)] for r in batch]
            prompt[rows] = [len(ids) for ids in prompts]
            response[rows] = [len(ids) + 1 for ids in responses]  # + EOS
            bar.update(len(records[lo:lo + ENCODE_BATCH]))
    supervised = supervised_from_lengths(prompt, response, train_on_prompt)
    conversations = [r for r in records if r.turns is not None]
    if conversations:  # several turns: their lengths are the examples' own
        examples, _ = encode_records(conversations, template, tokenizer, max_length=10**9, policy="drop",
                                     train_on_prompt=train_on_prompt)
        by_index = {r.index: r for r in conversations}
        for example in examples:
            row = position[id(by_index[example.index])]
            prompt[row], response[row] = example.prompt_length, len(example.input_ids) - example.prompt_length
            supervised[row] = example.supervised_tokens
    has = supervised > 0  # encode_records never yields an example with nothing to learn
    return _Lengths(np.array([r.index for r in records], dtype=np.int64),
                    position,
                    np.where(has, prompt + response, -1), np.where(has, prompt, -1), supervised)


def supervised_from_lengths(prompt: np.ndarray, response: np.ndarray, train_on_prompt: bool) -> np.ndarray:
    """``Example.supervised_tokens`` from lengths alone (``response`` counts the EOS): labels 1.. that
    are not -100, i.e. all but the first token with ``train_on_prompt``, else the response tokens less
    one when the prompt is empty (label 0 is never a target).

    >>> supervised_from_lengths(np.array([3, 0]), np.array([2, 2]), False).tolist()
    [2, 1]
    """
    if train_on_prompt:
        return prompt + response - 1
    return response - (prompt == 0)


def _length_findings(result: Audit, lengths: _Lengths, train_on_prompt: bool) -> None:
    """Length statistics, over-long records and records whose prompt alone fills the max length."""
    has = lengths.tokens >= 0
    ordered = np.sort(lengths.tokens[has]).tolist()
    result.lengths = {
        "min": ordered[0] if ordered else 0, "median": int(statistics.median(ordered)) if ordered else 0,
        "p95": _percentile(ordered, 0.95), "max": ordered[-1] if ordered else 0,
    }
    result.over_max_length = lengths.index[has & (lengths.tokens > result.max_length)].tolist()
    if not train_on_prompt:
        result.zero_supervised = lengths.index[has & (lengths.prompt >= result.max_length)].tolist()


def _encode_train(
    train: Sequence[Record], lengths: _Lengths, template: Template, tokenizer: Any, *,
    max_length: int, policy: str, train_on_prompt: bool, source: str,
) -> tuple[EncodeReport, int, int]:
    """What ``encode_records`` would report on the training split, with supervised and predicted tokens.

    An example within ``max_length`` is untouched by any length policy, so its unbounded lengths
    stand; only the rest (over-long, or not among the audited records) are encoded again under the policy.
    """
    effective = "drop" if policy == "error" else policy
    report = EncodeReport(total=len(train), max_length=max_length, policy=effective)
    supervised = tokens = 0
    again: list[Record] = []
    for record in train:
        row = lengths.position.get(id(record))
        if row is None or not 0 <= lengths.tokens[row] <= max_length:
            again.append(record)
            continue
        supervised += int(lengths.supervised[row])
        tokens += int(lengths.tokens[row]) - 1
    for lo in range(0, len(again), ENCODE_BATCH):
        examples, part = encode_records(again[lo:lo + ENCODE_BATCH], template, tokenizer, max_length=max_length,
                                        policy=effective, train_on_prompt=train_on_prompt, source=source)
        report.dropped_too_long += part.dropped_too_long
        report.truncated += part.truncated
        report.dropped_no_supervision += part.dropped_no_supervision
        supervised += sum(e.supervised_tokens for e in examples)
        tokens += sum(len(e.input_ids) - 1 for e in examples)
    return report, supervised, tokens


def _judge(result: Audit, report: EncodeReport) -> None:
    if result.policy == "error" and result.over_max_length:
        result.problems.append(
            f"{len(result.over_max_length)} record(s) are longer than {result.max_length} tokens and "
            f"--overlong is 'error' (first: record {result.over_max_length[0]}); use --overlong drop or truncate"
        )
    if not report.kept and result.split["train"]:
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
