"""Stage 1, conversations: records that are whole chats rather than instruction/output pairs.

Two shapes are read, detected per file from its first record (or chosen with ``--format``):

    messages   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}   (OpenAI)
    sharegpt   {"conversations": [{"from": "system"|"human"|"gpt", "value": "..."}, ...]}

The rule for a valid conversation: an optional system turn first, then user and assistant turns
alternating, starting with a user turn; every content a non-empty string; at least one assistant turn
when the records are for training. Each problem is one line naming the record and the turn
(``record 3: messages[2]: role 'bot' is not one of system, user, assistant``).
"""

from __future__ import annotations

from typing import Any

FORMATS = ("auto", "alpaca", "messages", "sharegpt")
# format -> (list key, role key, content key, {role as written: role})
SHAPES: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "messages": ("messages", "role", "content", {"system": "system", "user": "user", "assistant": "assistant"}),
    "sharegpt": ("conversations", "from", "value", {"system": "system", "human": "human", "gpt": "gpt",
                                                    "user": "user", "assistant": "assistant"}),
}
ROLE_OF = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}


def detect_format(value: Any) -> str:
    """The format of a file from its first record: ``messages``, ``sharegpt`` or ``alpaca``."""
    if isinstance(value, dict):
        for name, (key, *_rest) in SHAPES.items():
            if key in value:
                return name
    return "alpaca"


def validate_turns(value: Any, fmt: str, *, require_output: bool) -> tuple[list[tuple[str, str]] | None, list[str]]:
    """The turns of one conversation record as ``[(role, content)]`` (roles system/user/assistant),
    or None and its problems, one line each."""
    key, role_key, content_key, roles = SHAPES[fmt]
    if not isinstance(value, dict):
        return None, [f"not an object (found {type(value).__name__}); each record must be a JSON object"]
    if key not in value:
        return None, [f"'{key}' is missing (expected a list of turns: "
                      f"{{\"{role_key}\": ..., \"{content_key}\": ...}})"]
    raw = value[key]
    if not isinstance(raw, list) or not raw:
        return None, [f"'{key}' must be a non-empty list of turns, found "
                      + (type(raw).__name__ if not isinstance(raw, list) else "an empty list")]
    problems: list[str] = []
    turns: list[tuple[str, str]] = []
    for n, turn in enumerate(raw):
        where = f"{key}[{n}]"
        if not isinstance(turn, dict):
            problems.append(f"{where}: not an object (found {type(turn).__name__})")
            continue
        role, content = turn.get(role_key), turn.get(content_key)
        if role_key not in turn:
            problems.append(f"{where}: '{role_key}' is missing")
        elif role not in roles:
            problems.append(f"{where}: {role_key} {role!r} is not one of {', '.join(roles)}")
        if content_key not in turn:
            problems.append(f"{where}: '{content_key}' is missing")
        elif not isinstance(content, str):
            problems.append(f"{where}: '{content_key}' must be a string, found {type(content).__name__}")
        elif not content.strip():
            problems.append(f"{where}: '{content_key}' is empty")
        if role in roles and isinstance(content, str):
            turns.append((ROLE_OF[role], content))
        else:
            turns.append(("?", ""))
    if problems:
        return None, problems
    problems += _order_problems(turns, key, require_output=require_output)
    return (None, problems) if problems else (turns, [])


def _order_problems(turns: list[tuple[str, str]], key: str, *, require_output: bool) -> list[str]:
    """System first (at most once), then user/assistant alternating from a user turn."""
    problems = []
    start = 1 if turns[0][0] == "system" else 0
    expected = "user"
    for n in range(start, len(turns)):
        role = turns[n][0]
        if role == "system":
            problems.append(f"{key}[{n}]: a system turn must come first, before every user turn")
            break
        if role != expected:
            before = turns[n - 1][0] if n > start else "the start"
            article = "an" if expected == "assistant" else "a"
            problems.append(f"{key}[{n}]: expected {article} {expected} turn after {before}, found {role} "
                            "(turns alternate user, assistant, user, ...; merge consecutive turns of one role)")
            break
        expected = "assistant" if role == "user" else "user"
    if not problems and len(turns) == start:
        problems.append(f"'{key}' holds only a system turn; add a user and an assistant turn")
    elif not problems and require_output and not any(role == "assistant" for role, _ in turns):
        problems.append(f"'{key}' has no assistant turn; nothing to train on")
    elif not problems and require_output and turns[-1][0] != "assistant":
        problems.append(f"{key}[{len(turns) - 1}]: the conversation ends with a user turn, which is never "
                        "trained on; end it with the assistant's reply or remove that turn")
    return problems
