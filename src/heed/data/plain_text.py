"""Data text as token ids: a record's text is always plain text, so ``<|endoftext|>`` typed into a record
is the characters it is made of, never the control token; the only control tokens are the ones heed
places (the BOS, the EOS after a response, a template's own markers). ``heed.data.encode`` and
``heed.data.segments`` build prompts and conversations from these pieces.

Where a template and a record's text must share one string, each control-token string of the text is
fenced by two private-use characters (``fencer``) and ``rendered_ids`` encodes the fenced pieces as plain
text and the rest normally.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from heed.errors import HeedError


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


def control_strings(tokenizer: Any) -> list[str]:
    """The strings of the tokenizer's control tokens (``control_ids``), in id order."""
    return tokenizer.convert_ids_to_tokens(sorted(control_ids(tokenizer)))


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


def with_prefix(ids: list[int], prefix: list[int]) -> list[int]:
    """``ids`` with the tokenizer's ``prefix`` (its BOS) in front, exactly once."""
    if prefix and ids[: len(prefix)] == prefix:  # a chat template renders its own BOS
        return list(ids)
    return prefix + list(ids)


def fencer(text: str, tokenizer: Any, strings: list[str]) -> tuple[Any, str, str]:
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


def rendered_ids(rendered: str, tokenizer: Any, start: str, end: str, *, first: bool) -> list[int]:
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
