"""What a request asks for, read from its JSON body: the prompt, the token limit, sampling and stop strings.

Every problem is a ``BadRequest`` with the HTTP status and one line naming the field; the app answers it
as JSON in the dialect of the endpoint (OpenAI ``{"error": {"message": ...}}``, Ollama ``{"error": ...}``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from heed.config import ServeConfig
from heed.data.conversations import validate_turns
from heed.serve.batcher import Sampling


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Ask:
    """One request, read: ``text`` (or a chat's ``turns``) goes through the model's template unless ``raw``."""

    text: str
    raw: bool
    max_new_tokens: int
    sampling: Sampling
    stop: tuple[str, ...]
    stream: bool
    turns: list[tuple[str, str]] | None = None  # a chat request's conversation; ``text`` is its last user message


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def _number(value: Any, name: str, *, integer: bool = False, low: float | None = None,
            high: float | None = None) -> Any:
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or (not integer and not math.isfinite(value)):
        raise BadRequest(f"'{name}' must be {'an integer' if integer else 'a number'} (got {value!r})")
    if (low is not None and value < low) or (high is not None and value > high):
        raise BadRequest(f"'{name}' must be between {low:g} and {high:g} (got {value})" if high is not None
                         else f"'{name}' must be at least {low:g} (got {value})")
    return value


def _max_tokens(value: Any, name: str, cfg: ServeConfig) -> int:
    n = _number(value, name, integer=True, low=1)
    if n is None:
        return cfg.max_new_tokens
    if n > cfg.max_new_tokens:
        raise BadRequest(f"'{name}' is {n}; this server allows at most {cfg.max_new_tokens} new tokens "
                         "(heed serve --max-new-tokens)")
    return n


def _stop(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or len(items) > 8 or not all(isinstance(s, str) and s for s in items):
        raise BadRequest(f"'{name}' must be a non-empty string or a list of at most 8 of them")
    return tuple(items)


def _text(value: Any, name: str) -> str:
    """A message's content: a string, or OpenAI's list of parts, of which the text parts count."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        if any(p.get("type") != "text" or not isinstance(p.get("text"), str) for p in value):
            raise BadRequest(f"'{name}': only text parts are supported")
        return "".join(p["text"] for p in value)
    raise BadRequest(f"'{name}' must be a string")


def chat_turns(messages: Any, cfg: ServeConfig) -> list[tuple[str, str]]:
    """A chat request's conversation as ``[(role, content)]``, checked as heed checks a training record's
    turns (a system message first, at most once; then user and assistant alternating from a user
    message), ending with the user message the answer replies to. OpenAI's ``developer`` role is a
    system message; text parts of a content list are joined."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list of {role, content} objects")
    if len(messages) > cfg.max_messages:
        raise BadRequest(f"'messages' holds {len(messages)} messages; this server takes at most {cfg.max_messages} "
                         "(heed serve --max-messages)", 413)
    plain = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"'messages[{i}]' must be an object with a string 'role'")
        if m["role"] not in ("system", "developer", "user", "assistant"):
            raise BadRequest(f"'messages[{i}].role' {m['role']!r}: expected system, user or assistant")
        role = "system" if m["role"] == "developer" else m["role"]
        plain.append({"role": role, "content": _text(m.get("content"), f"messages[{i}].content")})
    turns, problems = validate_turns({"messages": plain}, "messages", require_output=False)
    if problems:
        raise BadRequest(problems[0])  # validate_turns names the message: messages[N]: ...
    if turns[-1][0] != "user":
        raise BadRequest("the last message must be a user message: the answer replies to it")
    return turns


def _flag(value: Any, name: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be true or false")
    return value


def openai_ask(data: dict[str, Any], cfg: ServeConfig, *, chat: bool) -> Ask:
    turns = None
    if chat:
        turns, raw = chat_turns(data.get("messages"), cfg), False
        text = turns[-1][1]
    else:
        prompt = data.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' must be a string (one prompt per request)")
        text, raw = prompt, True
    n = data.get("max_completion_tokens", data.get("max_tokens"))
    if data.get("n") not in (None, 1) or data.get("n") is True:
        raise BadRequest("'n' must be 1: one answer per request")
    return Ask(text, raw, _max_tokens(n, "max_tokens", cfg), _sampling(data, ""),
               _stop(data.get("stop"), "stop"), _flag(data.get("stream"), "stream", False), turns)


def ollama_ask(data: dict[str, Any], cfg: ServeConfig, *, chat: bool) -> Ask:
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'options' must be an object")
    turns = None
    if chat:
        turns, raw = chat_turns(data.get("messages"), cfg), False
        text = turns[-1][1]
    else:
        text = data.get("prompt")
        if not isinstance(text, str):
            raise BadRequest("'prompt' must be a string")
        raw = _flag(data.get("raw"), "raw", False)
    n = options.get("num_predict")
    n = None if n is not None and isinstance(n, int) and not isinstance(n, bool) and n < 0 else n  # -1: no limit
    return Ask(text, raw, _max_tokens(n, "options.num_predict", cfg), _sampling(options, "options."),
               _stop(options.get("stop"), "options.stop"), _flag(data.get("stream"), "stream", True), turns)


def _sampling(values: dict[str, Any], prefix: str) -> Sampling:
    temperature = _number(values.get("temperature"), prefix + "temperature", low=0, high=100)
    top_p = _number(values.get("top_p"), prefix + "top_p", low=0, high=1)
    top_k = _number(values.get("top_k"), prefix + "top_k", integer=True, low=0)
    seed = _number(values.get("seed"), prefix + "seed", integer=True)
    # OpenAI's default temperature is 1, Ollama's 0.8; heed serves greedy unless asked, as heed generate does.
    temperature = float(temperature or 0.0)
    if temperature == 0:
        return Sampling()
    return Sampling(temperature, top_k or None, top_p if top_p not in (None, 0) else None,
                    123 if seed is None else seed)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)
