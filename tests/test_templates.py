import pytest

from heed.data.templates import ALPACA_PREAMBLE, TEMPLATES, extract_response, get_template
from heed.errors import HeedError


def test_alpaca_is_the_original_text():
    t = TEMPLATES["alpaca"]
    assert t.prompt("Do X.", "") == ALPACA_PREAMBLE + "\n\n### Instruction:\nDo X.\n\n### Response:\n"
    assert t.prompt("Do X.", "data") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nDo X.\n\n### Input:\ndata\n\n### Response:\n"
    )


def test_instruction_response_and_phi3():
    assert TEMPLATES["instruction-response"].prompt("Do X.", "d") == "### Instruction:\nDo X.\n\n### Input:\nd\n\n### Response:\n"
    assert TEMPLATES["phi3"].prompt("Do X.", "") == "<|user|>\nDo X.\n<|assistant|>\n"
    assert TEMPLATES["phi3"].prompt("Do X.", "d") == "<|user|>\nDo X.\nd\n<|assistant|>\n"


def test_chat_uses_the_tokenizers_template(tokenizer):
    tok = type(tokenizer).from_pretrained  # noqa: F841 (the session tokenizer must stay unchanged)
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert TEMPLATES["chat"].prompt("Do X.", "d", tok) == "<user>Do X.\n\nd</user><assistant>"
    with pytest.raises(HeedError, match="needs a tokenizer that ships a chat template"):
        TEMPLATES["chat"].prompt("Do X.", "", tokenizer)


def test_unknown_template_lists_choices():
    with pytest.raises(HeedError, match="choose one of: alpaca, instruction-response, phi3, chat"):
        get_template("vicuna")


@pytest.mark.parametrize("generated, expected", [
    ("  Paris.  ", "Paris."),
    ("### Response:\nParis.", "Paris."),
    ("Paris.\n\n### Instruction:\nName a city.", "Paris."),
    ("Paris.\n\nBelow is an instruction that describes a task. Write", "Paris."),
])
def test_extract_response(generated, expected):
    assert extract_response(generated, TEMPLATES["alpaca"]) == expected


def test_extract_response_phi3():
    assert extract_response("Paris<|user|>\nmore", TEMPLATES["phi3"]) == "Paris"
