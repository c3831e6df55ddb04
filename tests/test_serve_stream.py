"""heed serve's streamed text: pieces sent as tokens are decoded join to exactly the whole answer; a character
split across tokens, a template marker or a stop string is never sent in part."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heed.data.templates import TEMPLATES
from heed.serve.stream import TextStream, answer_text, settled_text

ALPACA = TEMPLATES["alpaca"]


def stream(tokenizer, ids, template, stop, sizes=None):
    """The pieces a stream sends for ``ids`` fed ``sizes`` tokens at a time (one by default), its last piece
    included; and the whole answer."""
    s = TextStream(tokenizer, template, stop)
    pieces, at = [], 0
    for n in sizes or [1] * len(ids):
        if at >= len(ids):
            break
        pieces.append(s.push(ids[at:at + n]))
        at += n
    rest, whole, _ = s.finish(ids)
    return pieces + [rest], whole


def test_a_character_split_across_tokens_waits_for_its_last_byte(tokenizer):
    ids = tokenizer("Answer: 世界 café")["input_ids"]
    assert len(ids) > len("Answer: 世界 café".split())  # 世 and 界 are two tokens each
    pieces, whole = stream(tokenizer, ids, None, ())
    assert "".join(pieces) == whole == "Answer: 世界 café"
    assert not any("\ufffd" in p for p in pieces)
    assert sum(1 for p in pieces if p) > 3


def test_template_markers_and_stop_strings_are_never_sent_in_part(tokenizer):
    text = "### Response:\n 5, so\n\n### Instruction:\nAdd 1"  # a base model's run-on, marker repeated
    ids = tokenizer(text)["input_ids"]
    pieces, whole = stream(tokenizer, ids, ALPACA, ())
    assert whole == "5, so" and "".join(pieces) == whole
    assert not any("#" in p for p in pieces) and sum(1 for p in pieces if p) > 2
    # a stop string of the request: " so" is held while it may be the start of "so\n", then dropped
    pieces, whole = stream(tokenizer, tokenizer(" 5, so\nmore")["input_ids"], ALPACA, ("so\n",))
    assert whole == "5, " and pieces == ["5", ",", " ", "", "", ""]


def test_settled_text_holds_what_a_continuation_may_change():
    assert settled_text("Paris\n\n### Inst", ALPACA, ()) == "Paris"  # may become "### Instruction"
    assert settled_text("Paris ###", None, ()) == "Paris ###"  # raw: the template's markers do not apply
    assert settled_text("Paris ##", None, ("###",)) == "Paris "
    assert settled_text("### Resp", ALPACA, ()) == ""  # may become a repeated response marker
    assert settled_text("### Response: 5 ", ALPACA, ()) == "5"
    assert settled_text("caf\ufffd", None, ()) == "caf"


PARTS = ["5", " ", "\n", "\n\n", "#", "###", " Instruction", "Instruction", ":", "### Response:", "Response", "é",
         "世", "Below is an", " instruction", "STOP", "ST", "OP", "<|user|>", "<|", "user", "a", " b", "."]


@settings(max_examples=150, deadline=None)
@given(parts=st.lists(st.sampled_from(PARTS), max_size=14),
       template=st.sampled_from([None, "alpaca", "instruction-response", "phi3"]),
       stop=st.sampled_from([(), ("STOP",), ("\n\n", "OP")]),
       sizes=st.lists(st.integers(1, 3), min_size=1, max_size=30))
def test_pieces_join_to_the_whole_answer(tokenizer, parts, template, stop, sizes):
    ids = tokenizer("".join(parts))["input_ids"]
    chosen = TEMPLATES[template] if template else None
    pieces, whole = stream(tokenizer, ids, chosen, stop, sizes * (len(ids) // len(sizes) + 1))
    assert "".join(pieces) == whole == answer_text(tokenizer, ids, chosen, stop)[0]


@pytest.fixture(scope="module")
def tokenizer():
    from heed.model import gpt2_tokenizer

    return gpt2_tokenizer()
