"""Stage 3: token ids and labels for each record.

The prompt and the response are tokenized separately and concatenated, so the prompt ids seen in
training are exactly the prompt ids seen at generation time. The end-of-text id follows the response.
Labels are built by position (never by comparing ids, which would mask a real EOS when pad == EOS):

    prompt  "### Instruction:\\nSay hi\\n\\n### Response:\\n"   response "hi"   + <|endoftext|>
    input_ids   p0    p1  ...  p9   | 5303  | 50256
    labels    -100  -100  ... -100  | 5303  | 50256        (default: loss on the response + EOS)
    labels      p0    p1  ...  p9   | 5303  | 50256        (--train-on-prompt)

Labels here are aligned with ``input_ids`` (label i is token i); the one shift happens in
``heed.data.batch.collate``.

Text from records is plain text: ``<|endoftext|>`` or ``<start_of_turn>`` typed into a record is encoded
as the characters it is made of, never as the control token. The only control tokens in an example are
the ones heed places: the BOS, the EOS after the response, and the markers a template writes itself.

Beside it: ``plain_text`` (record text as plain text; control tokens, BOS and EOS ids) and ``segments``
(a conversation's turns as ids, through heed's templates or the tokenizer's chat template).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from heed.data.plain_text import (
    control_ids,
    control_strings,
    eos_id,
    fencer,
    plain_ids,
    rendered_ids,
    special_prefix,
    with_prefix,
)
from heed.data.records import Record
from heed.data.segments import conversation_segments
from heed.data.templates import Template
from heed.errors import HeedError

__all__ = ["IGNORE_INDEX", "OVERLONG_POLICIES", "EncodeReport", "Example", "build_conversation_example",
           "build_example", "control_ids", "control_strings", "conversation_segments", "encode_records", "eos_id",
           "plain_ids", "prompt_ids", "record_prompt_ids", "special_prefix"]

IGNORE_INDEX = -100
OVERLONG_POLICIES = ("drop", "truncate", "error")


@dataclass
class Example:
    """One tokenized record: ``input_ids`` and position-aligned ``labels`` (-100 = not trained on)."""

    index: int
    input_ids: list[int]
    labels: list[int]
    prompt_length: int
    truncated: bool = False
    # A conversation's turns as ``(role, start, end)`` token spans, role "prompt" (system/user turns and
    # the template's markers) or "assistant"; empty for an instruction record.
    spans: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def supervised_tokens(self) -> int:
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


@dataclass
class EncodeReport:
    """What the length policy did: record indices that were dropped or truncated, and why."""

    total: int = 0
    max_length: int = 0
    policy: str = "drop"
    dropped_too_long: list[int] = field(default_factory=list)
    dropped_no_supervision: list[int] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return self.total - len(self.dropped_too_long) - len(self.dropped_no_supervision)

    def summary(self) -> str:
        parts = [f"{self.kept}/{self.total} examples kept"]
        if self.dropped_too_long:
            parts.append(f"{len(self.dropped_too_long)} dropped as longer than {self.max_length} tokens")
        if self.truncated:
            parts.append(f"{len(self.truncated)} truncated to {self.max_length} tokens")
        if self.dropped_no_supervision:
            parts.append(f"{len(self.dropped_no_supervision)} dropped with no supervised tokens")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total, "kept": self.kept, "max_length": self.max_length, "policy": self.policy,
            "dropped_too_long": self.dropped_too_long, "truncated": self.truncated,
            "dropped_no_supervision": self.dropped_no_supervision,
        }


def prompt_ids(prompts: Sequence[str], tokenizer: Any, template: Template) -> list[list[int]]:
    """Token ids of prompt texts heed wrote itself (control tokens in them count), BOS exactly once.

    Prompts made from records go through ``record_prompt_ids``, which keeps the records' text plain.
    """
    prefix = special_prefix(tokenizer)
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
    return [with_prefix(ids, prefix) for ids in encoded]


def record_prompt_ids(records: Sequence[Record], tokenizer: Any, template: Template) -> list[list[int]]:
    """Prompt ids of records, BOS exactly once: the template's markers (a chat template's
    ``<start_of_turn>``) are control tokens, the record's instruction and input are plain text.

    Records whose text holds no control-token string (nearly all) are encoded in one batch, exactly as
    the whole prompt text would be; the others are rendered with those strings fenced off and encoded
    piece by piece (``_fenced_ids``).
    """
    records = list(records)
    if not records:
        return []
    prefix = special_prefix(tokenizer)
    control = control_ids(tokenizer)
    strings = tokenizer.convert_ids_to_tokens(sorted(control))
    out: list[list[int]] = [[] for _ in records]
    chats = {i for i, r in enumerate(records) if r.turns is not None}
    for i in chats:  # the conversation up to its last reply (or all of it, when it ends with a user turn)
        segments = conversation_segments(records[i], template, tokenizer, (strings, prefix))
        if records[i].turns[-1][0] == "assistant":
            segments = segments[: max(n for n, (trained, _) in enumerate(segments) if trained)]
        out[i] = [t for _, ids in segments for t in ids]
    hostile = _hostile([r for i, r in enumerate(records) if i not in chats], tokenizer, control,
                       {s[0] for s in strings if s})
    rest = [i for i in range(len(records)) if i not in chats]
    hostile = {rest[i] for i in hostile}
    clean = [i for i in rest if i not in hostile]
    rendered = [template.prompt(records[i].instruction, records[i].input, tokenizer, records[i].system)
                for i in clean]
    for i, ids in zip(clean, prompt_ids(rendered, tokenizer, template)):
        out[i] = ids
    for i in sorted(hostile):
        out[i] = with_prefix(_fenced_ids(records[i], tokenizer, template, strings), prefix)
    return out


def _hostile(records: list[Record], tokenizer: Any, control: set[int], firsts: set[str]) -> set[int]:
    """Positions of records whose instruction or input the tokenizer would turn into a control token.
    Only text holding a first character of some control token's string (``<`` for most) is tokenized."""
    def text(r: Record) -> str:
        return r.instruction + "\n" + r.input + "\n" + (r.system or "")

    suspects = [i for i, r in enumerate(records) if any(c in text(r) for c in firsts)]
    if not suspects:
        return set()
    texts = [text(records[i]) for i in suspects]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return {i for i, ids in zip(suspects, encoded) if control.intersection(ids)}


def _fenced_ids(record: Record, tokenizer: Any, template: Template, strings: list[str]) -> list[int]:
    """Render the prompt with each control-token string of the record's text between two fence
    characters, then encode the text outside the fences normally (the template's own markers stay
    control tokens) and the fenced strings as plain text."""
    text = record.instruction + record.input + (record.system or "")
    fence, start, end = fencer(text, tokenizer, strings)
    if fence is None:  # the tokenizer found a control token that is not written out (a normalized added token)
        raise HeedError(f"record {record.index}: its text turns into a control token of this tokenizer "
                        f"({type(tokenizer).__name__}) that heed cannot keep out; remove it from the record")
    system = None if record.system is None else fence(record.system)
    rendered = template.prompt(fence(record.instruction), fence(record.input), tokenizer, system)
    return rendered_ids(rendered, tokenizer, start, end, first=True)


def build_example(
    index: int, prompt: list[int], response: list[int], *, train_on_prompt: bool = False,
    truncated: bool = False,
) -> Example:
    """Concatenate ids and build labels by position. ``response`` already ends with EOS if it should.

    >>> build_example(0, [10, 11, 12], [20, 50256]).labels
    [-100, -100, -100, 20, 50256]
    >>> build_example(0, [10, 11, 12], [20, 50256], train_on_prompt=True).labels
    [10, 11, 12, 20, 50256]
    """
    input_ids = list(prompt) + list(response)
    labels = list(input_ids)
    if not train_on_prompt:
        labels[: len(prompt)] = [IGNORE_INDEX] * len(prompt)
    return Example(index, input_ids, labels, len(prompt), truncated)


def build_conversation_example(
    index: int, segments: list[tuple[bool, list[int]]], *, train_on_prompt: bool = False,
    last_turn_only: bool = False,
) -> Example:
    """Concatenate a conversation's segments and build labels by position: replies trained on (each
    with its EOS or end-of-turn marker), system and user turns masked.

    >>> segments = [(False, [10, 11]), (True, [20, 50256]), (False, [12]), (True, [21, 50256])]
    >>> build_conversation_example(0, segments).labels
    [-100, -100, 20, 50256, -100, 21, 50256]
    >>> build_conversation_example(0, segments, last_turn_only=True).labels
    [-100, -100, -100, -100, -100, 21, 50256]
    """
    last = max((n for n, (reply, _) in enumerate(segments) if reply), default=-1)
    input_ids: list[int] = []
    labels: list[int] = []
    spans: list[tuple[str, int, int]] = []
    for n, (reply, ids) in enumerate(segments):
        trained = train_on_prompt or (reply and (not last_turn_only or n == last))
        spans.append(("assistant" if reply else "prompt", len(input_ids), len(input_ids) + len(ids)))
        input_ids += ids
        labels += ids if trained else [IGNORE_INDEX] * len(ids)
    return Example(index, input_ids, labels, len(segments[0][1]), spans=spans)


def _truncated(example: Example, max_length: int) -> Example:
    spans = [(role, start, min(end, max_length)) for role, start, end in example.spans if start < max_length]
    return Example(example.index, example.input_ids[:max_length], example.labels[:max_length],
                   example.prompt_length, True, spans)


def encode_records(
    records: Sequence[Record],
    template: Template,
    tokenizer: Any,
    *,
    max_length: int,
    policy: str = "drop",
    train_on_prompt: bool = False,
    last_turn_only: bool = False,
    source: str = "data",
) -> tuple[list[Example], EncodeReport]:
    """Tokenize records into examples and apply the over-length policy.

    ``max_length`` bounds the whole example (prompt + response + EOS). Policies:
    ``drop`` skips over-long examples; ``truncate`` keeps the prompt and cuts the response (the EOS
    survives only if the response was not cut; a prompt longer than ``max_length`` is dropped);
    ``error`` raises, listing every over-long record.
    An example left with no supervised token never comes out. Conversation records (``record.turns``)
    train on every reply (``last_turn_only``: the last one) and truncate from the end in the same way.
    """
    if policy not in OVERLONG_POLICIES:
        raise HeedError(f"unknown over-length policy {policy!r}; choose one of: {', '.join(OVERLONG_POLICIES)}")
    if max_length < 2:
        raise HeedError(f"--max-length must be at least 2 (got {max_length})")
    eos = eos_id(tokenizer)
    plain = [r for r in records if r.turns is None]
    known = (control_strings(tokenizer), special_prefix(tokenizer)) if len(plain) < len(records) else None
    prompts = iter(record_prompt_ids(plain, tokenizer, template))
    responses = iter(plain_ids((r.output or "" for r in plain), tokenizer))
    report = EncodeReport(total=len(records), max_length=max_length, policy=policy)
    examples: list[Example] = []
    too_long: list[str] = []
    for record in records:
        if record.turns is None:
            prompt, response = next(prompts), list(next(responses)) + [eos]
            example = build_example(record.index, prompt, response, train_on_prompt=train_on_prompt)
        else:
            segments = conversation_segments(record, template, tokenizer, known)
            example = build_conversation_example(record.index, segments, train_on_prompt=train_on_prompt,
                                                 last_turn_only=last_turn_only)
        if len(example.input_ids) > max_length:
            if policy == "error":
                too_long.append(f"{source}: record {record.index}: {len(example.input_ids)} tokens, "
                                f"longer than --max-length {max_length} "
                                "(use --overlong drop or --overlong truncate to keep going)")
                continue
            if policy == "drop" or example.prompt_length > max_length:  # truncation keeps the whole prompt
                report.dropped_too_long.append(record.index)
                continue
            example = _truncated(example, max_length)
        # Label 0 is never a target (nothing predicts the first token), so this also drops
        # one-token examples and prompt-masked examples whose response was cut away entirely.
        if example.supervised_tokens == 0:
            report.dropped_no_supervision.append(record.index)
            continue
        if example.truncated:
            report.truncated.append(record.index)
        examples.append(example)
    if too_long:
        raise HeedError(*too_long)
    return examples, report
