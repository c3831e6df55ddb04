"""The mask inspector behind ``heed inspect``: one example, each token marked trained-on or not.

Trained-on tokens (label != -100) print green, masked ones grey; neighbouring tokens alternate
brightness so token boundaries stay visible. ``--json`` gives the same facts to scripts.
"""

from __future__ import annotations

from typing import Any

from heed.data.encode import IGNORE_INDEX, Example

GREEN, BRIGHT_GREEN, GREY, DIM_WHITE, RESET = "\033[32m", "\033[92m", "\033[90m", "\033[37;2m", "\033[0m"


def token_texts(example: Example, tokenizer: Any) -> list[str]:
    """The decoded text of each token (a byte-level piece of a character decodes to '�')."""
    return [tokenizer.decode([token_id]) for token_id in example.input_ids]


def as_json(example: Example, tokenizer: Any) -> dict[str, Any]:
    """``labels[i]`` says whether token i is a target (the model predicts it from tokens < i)."""
    return {
        "index": example.index,
        "tokens": token_texts(example, tokenizer),
        "input_ids": example.input_ids,
        "labels": example.labels,
        "prompt_length": example.prompt_length,
        "truncated": example.truncated,
        "totals": totals(example),
        "turns": turns(example),
    }


def turns(example: Example) -> list[dict[str, Any]]:
    """A conversation's turns: role ("prompt" for system/user turns, "assistant"), token span, tokens trained on."""
    return [{"role": role, "start": start, "end": end,
             "trained": sum(1 for i in range(max(start, 1), end) if example.labels[i] != IGNORE_INDEX)}
            for role, start, end in example.spans]


def totals(example: Example) -> dict[str, int]:
    supervised = example.supervised_tokens
    return {"tokens": len(example.input_ids), "supervised": supervised,
            "masked": len(example.input_ids) - supervised}


def render(example: Example, tokenizer: Any, *, color: bool = True) -> str:
    """Terminal view. Without colour, trained-on tokens are wrapped in ``[[`` ``]]``."""
    pieces = []
    texts = token_texts(example, tokenizer)
    in_span = False
    for i, (text, label) in enumerate(zip(texts, example.labels)):
        trained = label != IGNORE_INDEX and i > 0
        shown = text.replace("\n", "↵\n")
        if color:
            code = (GREEN if i % 2 else BRIGHT_GREEN) if trained else (GREY if i % 2 else DIM_WHITE)
            pieces.append(code + shown + RESET)
        else:
            if trained and not in_span:
                pieces.append("[[")
            if not trained and in_span:
                pieces.append("]]")
            pieces.append(shown)
            in_span = trained
    if in_span and not color:
        pieces.append("]]")
    t = totals(example)
    share = t["supervised"] / t["tokens"] if t["tokens"] else 0.0
    legend = (f"{GREEN}trained on{RESET} / {GREY}masked{RESET}" if color else "[[trained on]] / masked")
    footer = (f"\n\nrecord {example.index}: {t['tokens']} tokens, {t['supervised']} trained on ({share:.1%}), "
              f"{t['masked']} masked; prompt {example.prompt_length} tokens"
              + (", response truncated" if example.truncated else "") + f"   [{legend}]")
    for n, turn in enumerate(turns(example)):
        size = turn["end"] - turn["start"]
        footer += f"\n  turn {n} {turn['role']}: {size} tokens, {turn['trained']} trained on"
    return "".join(pieces) + footer
