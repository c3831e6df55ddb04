"""An answer's text, whole (``answer_text``) or sent as it is decoded (``TextStream``), with the pieces of a
stream joining to exactly the whole text.

Whole: the new tokens decoded, the response extracted with the model's template (``extract_response``:
a repeated response marker removed, cut where the model starts a new instruction, stripped), then cut at
the request's first stop string. Streamed: after each decoding step the same is done to the tokens so far,
and only the part no later token can change is sent:

    decoded so far          "5\\n\\n###"             "5\\n\\n### Instruction:"    "caf\\ufffd"
    sent so far             "5"                    "5" (and nothing more)      "caf" (é still being spelt)

- a character whose bytes are still arriving (the decode ends in U+FFFD) waits for its last byte;
- text that could be the start of a stop string or template marker waits until it cannot be;
- whitespace at the ends waits, as the whole answer is stripped.
"""

from __future__ import annotations

from typing import Any, Sequence

from heed.data.templates import Template, extract_response
from heed.serve.requests import cut_at_stop


def answer_text(tokenizer: Any, ids: Sequence[int], template: Template | None,
                stop: tuple[str, ...]) -> tuple[str, bool]:
    """The answer in ``ids`` (``template`` None: a raw prompt, the text as generated) and whether a stop
    string cut it."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    if template is not None:
        text = extract_response(text, template)
    return cut_at_stop(text, stop)


def settled_text(decoded: str, template: Template | None, stop: tuple[str, ...]) -> str:
    """The part of ``answer_text``'s text that is the same whatever ``decoded`` goes on to: each stage keeps
    only what the same stage, given any continuation of its input, would also start with."""
    text = decoded.rstrip("\ufffd")
    if template is not None:
        if template.response_marker:
            text = _removed_for_good(text, template.response_marker)
        text = _before_stops(text, template.stop_markers).strip()
    return _before_stops(text, stop)


class TextStream:
    """Pieces of one answer's text, fed the new tokens of each decoding step. A raw prompt, stop "###":

        push(tokens of "Paris")  -> "Paris"
        push(tokens of " #")     -> " "      "#" may be the start of "###"
        push(tokens of "## Q")   -> ""       it was: nothing after "Paris" is ever sent
        finish(all tokens)       -> ("", "Paris ", True)   the rest, the whole text, stopped
    """

    def __init__(self, tokenizer: Any, template: Template | None, stop: tuple[str, ...]):
        self.tokenizer, self.template, self.stop = tokenizer, template, stop
        self.ids: list[int] = []
        self.sent = ""

    def push(self, ids: Sequence[int]) -> str:
        """The text newly settled by ``ids`` ("" when none is)."""
        self.ids.extend(ids)
        decoded = self.tokenizer.decode(self.ids, skip_special_tokens=True)  # whole: a split character mends
        return self._send(settled_text(decoded, self.template, self.stop))

    def finish(self, ids: Sequence[int]) -> tuple[str, str, bool]:
        """The rest of the answer, given all its token ids; the whole text; whether a stop string cut it."""
        text, stopped = answer_text(self.tokenizer, ids, self.template, self.stop)
        return self._send(text), text, stopped

    def _send(self, text: str) -> str:
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        piece, self.sent = text[len(self.sent):], text
        return piece


def _started(text: str, patterns: Sequence[str]) -> int:
    """The length of the longest end of ``text`` that is the start of one of ``patterns`` (but not all of it)."""
    for n in range(min(max(map(len, patterns), default=1) - 1, len(text)), 0, -1):
        tail = text[-n:]
        if any(len(p) > n and p.startswith(tail) for p in patterns):
            return n
    return 0


def _before_stops(text: str, stops: Sequence[str]) -> str:
    """``text`` cut at its first stop string, less an end that may yet become one."""
    if not stops:
        return text
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[:min(found + [len(text) - _started(text, stops)])]


def _removed_for_good(text: str, marker: str) -> str:
    """``text.replace(marker, "")`` up to where a marker could still be completing. ``str.replace`` takes
    markers left to right; those it found stay found, and a new one can begin only in an end of the text
    after the last that is the start of a marker."""
    end = 0
    while (at := text.find(marker, end)) >= 0:
        end = at + len(marker)
    return text[:len(text) - _started(text[end:], (marker,))].replace(marker, "")
