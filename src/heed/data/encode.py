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
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

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


def control_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's control tokens (its special tokens: BOS, EOS, turn markers, ...).

    The unknown token is not one (plain text the vocabulary lacks becomes it), unless it doubles as
    BOS, EOS or padding, as GPT-2's ``<|endoftext|>`` does.
    """
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
    if tokenizer.unk_token_id not in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id):
        ids.discard(tokenizer.unk_token_id)
    return ids


def plain_ids(texts: Iterable[str], tokenizer: Any) -> list[list[int]]:
    """Token ids of data text as plain text: a control token's string in it is just characters.

    >>> plain_ids(["a<|endoftext|>"], gpt2)    # not [64, 50256]
    [[64, 27, 91, 437, 1659, 5239, 91, 29]]
    """
    texts = list(texts)
    if not texts:
        return []
    try:
        encoded = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    except (TypeError, ValueError, NotImplementedError):  # a tokenizer without the option (mistral-common)
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    control = control_ids(tokenizer)
    for ids in encoded:
        found = control.intersection(ids)
        if found:  # the tokenizer ignored split_special_tokens: refuse rather than train on a control token
            token = tokenizer.convert_ids_to_tokens(min(found))
            raise HeedError(f"the data holds the text {token!r}, which this tokenizer ({type(tokenizer).__name__}) "
                            "cannot encode as plain text; remove it from the records")
    return [list(ids) for ids in encoded]


def _with_prefix(ids: list[int], prefix: list[int]) -> list[int]:
    if prefix and ids[: len(prefix)] == prefix:  # a chat template renders its own BOS
        return list(ids)
    return prefix + list(ids)


def prompt_ids(prompts: Sequence[str], tokenizer: Any, template: Template) -> list[list[int]]:
    """Token ids of prompt texts heed wrote itself (control tokens in them count), BOS exactly once.

    Prompts made from records go through ``record_prompt_ids``, which keeps the records' text plain.
    """
    prefix = special_prefix(tokenizer)
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
    return [_with_prefix(ids, prefix) for ids in encoded]


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
        out[i] = _with_prefix(_fenced_ids(records[i], tokenizer, template, strings), prefix)
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
    fence, start, end = _fencer(text, tokenizer, strings)
    if fence is None:  # the tokenizer found a control token that is not written out (a normalized added token)
        raise HeedError(f"record {record.index}: its text turns into a control token of this tokenizer "
                        f"({type(tokenizer).__name__}) that heed cannot keep out; remove it from the record")
    system = None if record.system is None else fence(record.system)
    rendered = template.prompt(fence(record.instruction), fence(record.input), tokenizer, system)
    return _rendered_ids(rendered, tokenizer, start, end, first=True)


def _fencer(text: str, tokenizer: Any, strings: list[str]) -> tuple[Any, str, str]:
    """``fence(value)``: each control-token string of ``value`` put between two fence characters (private-use
    characters absent from ``text`` and the chat template); None when ``text`` holds no such string."""
    avoid = text + str(getattr(tokenizer, "chat_template", None) or "")
    start, end = next((chr(c), chr(c + 1)) for c in range(0xF0000, 0xFFFFD, 2)  # private-use characters
                      if chr(c) not in avoid and chr(c + 1) not in avoid)
    present = sorted((s for s in strings if s and s in text), key=len, reverse=True)
    if not present:
        return None, start, end
    pattern = re.compile("|".join(map(re.escape, present)))
    return (lambda value: pattern.sub(lambda m: start + m.group(0) + end, value)), start, end


def _rendered_ids(rendered: str, tokenizer: Any, start: str, end: str, *, first: bool) -> list[int]:
    """Ids of text rendered with fenced values: outside the fences normally (a template's markers stay
    control tokens), the fenced strings as plain text."""
    # [outside, fenced, outside, fenced, ..., outside]; a lone fence (the template cut a pair apart)
    # gives None as its fenced piece but still splits, so the text either side cannot join into a token.
    pieces = re.split(f"{start}(.*?){end}|[{start}{end}]", rendered, flags=re.DOTALL)
    ids: list[int] = []
    for n, piece in enumerate(pieces):
        if piece:
            ids += _piece_ids(piece, tokenizer, plain=n % 2 == 1, first=first and not ids)
    return ids


# ---------------------------------------------------------------------------------------------------
# Conversations: segments of ids, each a prompt (system/user turn and markers) or an assistant reply.


def conversation_segments(
    record: Record, template: Template, tokenizer: Any, known: tuple[list[str], list[int]] | None = None,
) -> list[tuple[bool, list[int]]]:
    """``[(is_reply, ids)]`` of a conversation record in order, BOS once at the start.

    With heed's templates every reply ends with EOS and the next user turn follows it (``turn_prompt``);
    with ``chat`` a reply is what the tokenizer's chat template writes for it (content and its end-of-turn
    marker, whitespace after the marker going to the next turn) and the last reply ends with EOS.
    The records' text stays plain text, as in ``record_prompt_ids``. ``known``: the tokenizer's
    ``(control_strings(tokenizer), special_prefix(tokenizer))``, when the caller has them already.
    """
    strings, prefix = known or (control_strings(tokenizer), special_prefix(tokenizer))
    turns = record.turns or []
    text = "".join(content for _, content in turns) + (record.system or "")
    fence, start, end = _fencer(text, tokenizer, strings)
    fence = fence or (lambda value: value)
    if template.uses_tokenizer:
        texts = _chat_texts(record, template, tokenizer, fence)
    else:
        texts = _turn_texts(record, template, fence)
    eos = eos_id(tokenizer)
    segments: list[tuple[bool, list[int]]] = []
    for n, (reply, rendered) in enumerate(texts):
        ids = _rendered_ids(rendered, tokenizer, start, end, first=n == 0 or reply)
        if reply and (not template.uses_tokenizer or n == len(texts) - 1) and ids[-1:] != [eos]:
            ids.append(eos)
        segments.append((reply, ids))
    segments[0] = (segments[0][0], _with_prefix(segments[0][1], prefix))
    return segments


def control_strings(tokenizer: Any) -> list[str]:
    return tokenizer.convert_ids_to_tokens(sorted(control_ids(tokenizer)))


def _turn_texts(record: Record, template: Template, fence: Any) -> list[tuple[bool, str]]:
    turns = list(record.turns or [])
    system = turns.pop(0)[1] if turns and turns[0][0] == "system" else record.system
    system = None if system is None else fence(system)
    return [(role == "assistant", fence(content) if role == "assistant"
             else template.turn_prompt(fence(content), first=n == 0, system=system))
            for n, (role, content) in enumerate(turns)]


def _chat_texts(record: Record, template: Template, tokenizer: Any, fence: Any) -> list[tuple[bool, str]]:
    """Each reply's text is where rendering the conversation through it extends rendering it up to it."""
    turns = list(record.turns or [])
    if record.system is not None and turns[0][0] != "system":
        turns.insert(0, ("system", record.system))
    messages = [{"role": role, "content": fence(content)} for role, content in turns]
    texts: list[tuple[bool, str]] = []
    done = ""
    ends = [k for k, (role, _) in enumerate(turns) if role == "assistant"]
    if turns[-1][0] != "assistant":
        ends.append(len(turns))
    for k in ends:
        before = template.render(messages[:k], tokenizer, generation=True)
        after = template.render(messages[: k + 1], tokenizer, generation=False) if k < len(turns) else before
        if not before.startswith(done) or not after.startswith(before):
            raise HeedError(f"record {record.index}: the tokenizer's chat template writes earlier turns differently "
                            "once later ones follow, so replies cannot be marked by position; choose a heed "
                            "template with --template")
        texts.append((False, before[len(done):]))
        if k < len(turns):
            reply = after[len(before):].rstrip()
            texts.append((True, reply))
            done = before + reply
    return [(reply, text) for reply, text in texts if text or reply]


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


def _piece_ids(piece: str, tokenizer: Any, *, plain: bool, first: bool) -> list[int]:
    """Ids of one piece of a prompt. With a tokenizer that starts every text with a space (SentencePiece
    ``▁``), a piece after the first is encoded behind a newline that is then removed, so that it does not."""
    def encode(text: str) -> list[int]:
        return plain_ids([text], tokenizer)[0] if plain else list(tokenizer(text, add_special_tokens=False)["input_ids"])

    if first or not _adds_prefix_space(tokenizer):
        return encode(piece)
    newline = list(tokenizer("\n", add_special_tokens=False)["input_ids"])
    ids = encode("\n" + piece)
    return ids[len(newline):] if ids[: len(newline)] == newline else encode(piece)


def _adds_prefix_space(tokenizer: Any) -> bool:
    """True when the tokenizer puts something before a text's first word ("a" → "▁a")."""
    tokens = "".join(tokenizer.convert_ids_to_tokens(tokenizer("a", add_special_tokens=False)["input_ids"]))
    return tokens != "a" and tokens.endswith("a")


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
