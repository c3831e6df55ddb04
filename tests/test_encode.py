import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from heed.data.encode import IGNORE_INDEX as X
from heed.data.encode import encode_records, special_prefix
from heed.data.records import Record
from heed.data.templates import TEMPLATES
from heed.errors import HeedError

EOS = 50256
HI = [5303]  # "hi"


def rec(instruction="Say hi", input="", output="hi", index=0):
    return Record(index, instruction, input, output, {})


def test_gpt2_tokenizer_ids(tokenizer):
    assert tokenizer("Hello, world!<|endoftext|>")["input_ids"] == [15496, 11, 995, 0, 50256]
    assert tokenizer.pad_token_id == 50256 and tokenizer.eos_token_id == 50256
    assert special_prefix(tokenizer) == []


# Hand-worked: the prompt ids of "Say hi" under each template, then "hi" and EOS.
ALPACA = [21106, 318, 281, 12064, 326, 8477, 257, 4876, 13, 19430, 257, 2882, 326, 20431, 32543, 262, 2581, 13,
          198, 198, 21017, 46486, 25, 198, 25515, 23105, 198, 198, 21017, 18261, 25, 198]
ALPACA_INPUT = ALPACA[:26] + [198, 198, 21017, 23412, 25, 198, 87, 331] + ALPACA[26:]
INSTR_RESP = [21017, 46486, 25, 198, 25515, 23105, 198, 198, 21017, 18261, 25, 198]
PHI3 = [27, 91, 7220, 91, 29, 198, 25515, 23105, 198, 27, 91, 562, 10167, 91, 29, 198]


@pytest.mark.parametrize("template, input, prompt", [
    ("alpaca", "", ALPACA),
    ("alpaca", "x y", ALPACA_INPUT),
    ("instruction-response", "", INSTR_RESP),
    ("phi3", "", PHI3),
])
@pytest.mark.parametrize("train_on_prompt", [False, True])
def test_hand_worked_labels(tokenizer, template, input, prompt, train_on_prompt):
    [ex], report = encode_records([rec(input=input)], TEMPLATES[template], tokenizer, max_length=1024,
                                  train_on_prompt=train_on_prompt)
    assert ex.input_ids == prompt + HI + [EOS]
    if train_on_prompt:
        assert ex.labels == prompt + HI + [EOS]
    else:
        assert ex.labels == [X] * len(prompt) + HI + [EOS]
    assert ex.prompt_length == len(prompt)
    assert report.kept == 1


def test_overlong_policies(tokenizer):
    long = rec(output="hi " * 40, index=3)
    t = TEMPLATES["instruction-response"]
    examples, report = encode_records([rec(), long], t, tokenizer, max_length=20)
    assert [e.index for e in examples] == [0] and report.dropped_too_long == [3]

    examples, report = encode_records([rec(), long], t, tokenizer, max_length=20, policy="truncate")
    cut = examples[1]
    assert len(cut.input_ids) == 20 and cut.truncated and report.truncated == [3]
    assert cut.input_ids[-1] != EOS  # the response was cut, so no EOS to learn
    assert cut.labels[:12] == [X] * 12 and all(v != X for v in cut.labels[12:])

    with pytest.raises(HeedError, match=r"data: record 3: 54 tokens, longer than --max-length 20"):
        encode_records([rec(), long], t, tokenizer, max_length=20, policy="error")


def test_truncate_keeps_eos_when_response_fits(tokenizer):
    [ex], report = encode_records([rec()], TEMPLATES["instruction-response"], tokenizer, max_length=14, policy="truncate")
    assert ex.input_ids[-1] == EOS and not ex.truncated and report.truncated == []


def test_prompt_filling_the_window_is_dropped_for_no_supervision(tokenizer):
    examples, report = encode_records([rec()], TEMPLATES["instruction-response"], tokenizer, max_length=12,
                                      policy="truncate")
    assert examples == [] and report.dropped_no_supervision == [0]
    assert "1 dropped with no supervised tokens" in report.summary()


def bos_tokenizer():
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "say", "hi", "###", "response"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_bos_exactly_once_and_never_before_the_response():
    tok = bos_tokenizer()
    assert special_prefix(tok) == [1]
    [ex], _ = encode_records([rec(instruction="say hi")], TEMPLATES["instruction-response"], tok, max_length=100)
    assert ex.input_ids.count(1) == 1 and ex.input_ids[0] == 1
    assert ex.input_ids[-2:] == [4, 2]  # "hi" </s>


def test_chat_template_rendering_its_own_bos_is_not_doubled():
    tok = bos_tokenizer()
    tok.chat_template = "<s>{% for m in messages %}{{ m['content'] }}{% endfor %} ### response"
    [ex], _ = encode_records([rec(instruction="say hi")], TEMPLATES["chat"], tok, max_length=100)
    assert ex.input_ids == [1, 3, 4, 5, 6, 4, 2]
    assert ex.labels == [X, X, X, X, X, 4, 2]
