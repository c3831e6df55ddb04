"""A conversation record as segments of ids, each a prompt (system/user turns and the template's markers)
or an assistant reply, through heed's templates (``turn_prompt``) or the tokenizer's chat template.
``heed.data.encode`` builds a conversation's example and labels from them.
"""

from __future__ import annotations

from typing import Any

from heed.data.plain_text import control_strings, eos_id, fencer, rendered_ids, special_prefix, with_prefix
from heed.data.records import Record
from heed.data.templates import Template
from heed.errors import HeedError


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
    fence, start, end = fencer(text, tokenizer, strings)
    fence = fence or (lambda value: value)
    if template.uses_tokenizer:
        texts = _chat_texts(record, template, tokenizer, fence)
    else:
        texts = _turn_texts(record, template, fence)
    eos = eos_id(tokenizer)
    segments: list[tuple[bool, list[int]]] = []
    for n, (reply, rendered) in enumerate(texts):
        ids = rendered_ids(rendered, tokenizer, start, end, first=n == 0 or reply)
        if reply and (not template.uses_tokenizer or n == len(texts) - 1) and ids[-1:] != [eos]:
            ids.append(eos)
        segments.append((reply, ids))
    segments[0] = (segments[0][0], with_prefix(segments[0][1], prefix))
    return segments


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
