"""The saved tokenizer carries heed's prompt format as a Jinja chat template: transformers'
apply_chat_template gives the same ids as heed's prompt encoding, for every heed template."""

import copy

import pytest

from heed.data.encode import record_prompt_ids, special_prefix
from heed.data.records import Record
from heed.data.templates import TEMPLATES
from tests.test_control_tokens import gemma_like  # noqa: F401 (a fixture)

CONVERSATIONS = [
    [("user", "Add 2 and 3.")],
    [("user", "Say hi"), ("assistant", "hi"), ("user", "Again, in French.")],
    [("system", "Answer briefly."), ("user", "Say hi"), ("assistant", "hi there"), ("user", "Count: a b c")],
]


def chat_ids(tokenizer, turns):
    out = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in turns], tokenize=True,
                                        add_generation_prompt=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("name", ["alpaca", "instruction-response", "phi3"])
@pytest.mark.parametrize("which", ["gpt2", "bos"])
@pytest.mark.parametrize("system", [None, "You are terse."])
def test_apply_chat_template_equals_heed_prompts(tokenizer, gemma_like, name, which, system):  # noqa: F811
    tok = copy.deepcopy(tokenizer if which == "gpt2" else gemma_like)
    template = TEMPLATES[name]
    tok.chat_template = template.chat_template(bos=bool(special_prefix(tok)), system=system)
    for turns in CONVERSATIONS:
        record = Record(0, turns[0][1], "", None, {}, turns=list(turns), system=system)
        [heed_ids] = record_prompt_ids([record], tok, template)
        assert chat_ids(tok, turns) == heed_ids, turns
    single = Record(0, "Add 2 and 3.", "", None, {}, system=system)  # an instruction record, as generation sees it
    assert chat_ids(tok, [("user", "Add 2 and 3.")]) == record_prompt_ids([single], tok, template)[0]


def test_chat_template_keeps_the_tokenizers_own():
    assert TEMPLATES["chat"].chat_template(bos=True) is None
