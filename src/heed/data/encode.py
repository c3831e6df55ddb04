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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from heed.data.records import Record
from heed.data.templates import Template
from heed.errors import HeedError

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


def special_prefix(tokenizer: Any) -> list[int]:
    """The ids a tokenizer puts before text on its own (a BOS for Gemma/Llama, nothing for GPT-2)."""
    with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start:start + len(plain)] == plain:
            return with_special[:start]
    return []


def eos_id(tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise HeedError("the tokenizer has no end-of-text token (eos_token); set one in its tokenizer_config.json")
    return int(eos)


def prompt_ids(prompts: Sequence[str], tokenizer: Any, template: Template) -> list[list[int]]:
    """Token ids of prompt texts, with the tokenizer's BOS exactly once."""
    prefix = special_prefix(tokenizer)
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    out = []
    for ids in encoded:
        if prefix and ids[: len(prefix)] == prefix:  # a chat template renders its own BOS
            out.append(list(ids))
        else:
            out.append(prefix + list(ids))
    return out


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


def encode_records(
    records: Sequence[Record],
    template: Template,
    tokenizer: Any,
    *,
    max_length: int,
    policy: str = "drop",
    train_on_prompt: bool = False,
    source: str = "data",
) -> tuple[list[Example], EncodeReport]:
    """Tokenize records into examples and apply the over-length policy.

    ``max_length`` bounds the whole example (prompt + response + EOS). Policies:
    ``drop`` skips over-long examples; ``truncate`` keeps the prompt and cuts the response (the EOS
    survives only if the response was not cut; a prompt longer than ``max_length`` is dropped);
    ``error`` raises, listing every over-long record.
    An example left with no supervised token never comes out.
    """
    if policy not in OVERLONG_POLICIES:
        raise HeedError(f"unknown over-length policy {policy!r}; choose one of: {', '.join(OVERLONG_POLICIES)}")
    if max_length < 2:
        raise HeedError(f"--max-length must be at least 2 (got {max_length})")
    eos = eos_id(tokenizer)
    prompts = prompt_ids([template.prompt(r.instruction, r.input, tokenizer) for r in records], tokenizer, template)
    responses = tokenizer([r.output or "" for r in records], add_special_tokens=False)["input_ids"]
    report = EncodeReport(total=len(records), max_length=max_length, policy=policy)
    examples: list[Example] = []
    too_long: list[str] = []
    for record, prompt, response in zip(records, prompts, responses):
        response = list(response) + [eos]
        truncated = False
        if len(prompt) + len(response) > max_length:
            if policy == "error":
                too_long.append(f"{source}: record {record.index}: {len(prompt) + len(response)} tokens, "
                                f"longer than --max-length {max_length} "
                                "(use --overlong drop or --overlong truncate to keep going)")
                continue
            if policy == "drop" or len(prompt) > max_length:  # truncation keeps the whole prompt
                report.dropped_too_long.append(record.index)
                continue
            response = response[: max_length - len(prompt)]
            truncated = True
        example = build_example(record.index, prompt, response, train_on_prompt=train_on_prompt, truncated=truncated)
        # Label 0 is never a target (nothing predicts the first token), so this also drops
        # one-token examples and prompt-masked examples whose response was cut away entirely.
        if example.supervised_tokens == 0:
            report.dropped_no_supervision.append(record.index)
            continue
        if truncated:
            report.truncated.append(record.index)
        examples.append(example)
    if too_long:
        raise HeedError(*too_long)
    return examples, report
