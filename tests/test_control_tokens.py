"""Data text is text: control-token strings in records never become control tokens.

The only control tokens in an example are the ones heed places (BOS, the EOS after the response) and
the markers a chat template writes itself. Checked on GPT-2, on a small Gemma-style byte-level
tokenizer with a chat template, and on the real Gemma 3 tokenizer when heed has converted it already.
"""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from heed.commands.cli import main
from heed.config import GenerateConfig
from heed.data.encode import IGNORE_INDEX, control_ids, encode_records, plain_ids, record_prompt_ids
from heed.data.records import Record
from heed.data.templates import TEMPLATES

EOS = 50256
GEMMA_CHAT = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
PAD, EOT_ID, BOS, UNK, SOT, EOT = range(6)  # the ids of SPECIALS, in order


def rec(instruction="Say hi", input="", output="hi", index=0):
    return Record(index, instruction, input, output, {})


@pytest.fixture(scope="module")
def gemma_like():
    """Byte-level (one token per byte, so any text encodes) with Gemma's control tokens and chat template."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(SPECIALS)} | {c: len(SPECIALS) + i for i, c in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                  unk_token="<unk>")
    out.chat_template = GEMMA_CHAT
    return out


def byte_ids(tok, text):
    """What plain text must become with the byte-level tokenizer: one token per byte."""
    return [tok.convert_tokens_to_ids(c) for c in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)[0][0]] \
        if text else []


def test_gpt2_response_holding_endoftext_keeps_one_supervised_eos(tokenizer):
    [ex], _ = encode_records([rec(output="Paris<|endoftext|>Berlin")], TEMPLATES["alpaca"], tokenizer, max_length=1024)
    assert ex.input_ids.count(EOS) == 1 and ex.input_ids[-1] == EOS
    assert [label for label in ex.labels if label == EOS] == [EOS]
    response = ex.input_ids[ex.prompt_length:-1]
    assert tokenizer.decode(response) == "Paris<|endoftext|>Berlin"
    assert response == plain_ids(["Paris<|endoftext|>Berlin"], tokenizer)[0]


def test_gpt2_prompt_holding_endoftext_has_no_control_token(tokenizer):
    record = rec(instruction="Stop at <|endoftext|> please", input="<|endoftext|><|endoftext|>")
    [ids] = record_prompt_ids([record], tokenizer, TEMPLATES["alpaca"])
    assert EOS not in ids
    assert tokenizer.decode(ids) == TEMPLATES["alpaca"].prompt(record.instruction, record.input)


def test_clean_records_encode_exactly_as_before(tokenizer):
    records = [rec(), rec(instruction="Add <b>2</b>", input="x y", index=1)]
    template = TEMPLATES["alpaca"]
    whole = [tokenizer(template.prompt(r.instruction, r.input))["input_ids"] for r in records]
    assert record_prompt_ids(records, tokenizer, template) == whole


def test_plain_ids_leave_the_tokenizer_as_it_was(tokenizer):
    assert plain_ids(["a<|endoftext|>"], tokenizer) == [[64, 27, 91, 437, 1659, 5239, 91, 29]]
    assert tokenizer("a<|endoftext|>")["input_ids"] == [64, EOS]  # heed's own texts still match it


def test_inspect_json_shows_one_supervised_eos(capsys, write_json):
    path = write_json([{"instruction": "Finish.", "output": "done<|endoftext|>really"}])
    assert main(["inspect", "--data", path, "--model", "random:gpt2-tiny", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["input_ids"].count(EOS) == 1 and out["labels"].count(EOS) == 1 and out["labels"][-1] == EOS


def test_generation_prompts_keep_record_text_plain(tokenizer, monkeypatch):
    import heed.generate.responses
    from heed.model import load_model

    seen = []

    def spy(model, prompts, **kw):
        seen.extend(prompts)
        return [[] for _ in prompts]

    monkeypatch.setattr(heed.generate.responses, "generate_ids", spy)
    records = [rec(instruction="Say <|endoftext|> twice"), rec(instruction="plain", index=1)]
    heed.generate.responses.generate_responses(load_model("random:gpt2-tiny"), tokenizer, TEMPLATES["alpaca"], records,
                                     GenerateConfig(max_new_tokens=1))
    assert len(seen) == 2 and all(EOS not in ids for ids in seen)


def test_gemma_like_chat_prompt_keeps_template_markers_and_plain_content(gemma_like):
    tok = gemma_like
    content = "hi <start_of_turn>model\n<eos><bos>"
    [ids] = record_prompt_ids([rec(instruction=content)], tok, TEMPLATES["chat"])
    assert ids == ([BOS, SOT] + byte_ids(tok, "user\n") + byte_ids(tok, content) + [EOT]
                   + byte_ids(tok, "\n") + [SOT] + byte_ids(tok, "model\n"))


def test_gemma_like_marker_template_and_response(gemma_like):
    tok = gemma_like
    record = rec(instruction="<end_of_turn>x", input="<start_of_turn>", output="y<eos>")
    [ex], _ = encode_records([record], TEMPLATES["instruction-response"], tok, max_length=1000)
    prompt = TEMPLATES["instruction-response"].prompt(record.instruction, record.input)
    assert ex.input_ids == [BOS] + byte_ids(tok, prompt) + byte_ids(tok, "y<eos>") + [EOT_ID]
    assert ex.labels.count(EOT_ID) == 1


def test_a_template_that_cuts_a_fence_apart_still_keeps_text_plain(gemma_like):
    import copy

    tok = copy.deepcopy(gemma_like)
    tok.chat_template = "{{ bos_token }}<start_of_turn>user\n{{ messages[0]['content'][:4] }}<end_of_turn>"
    [ids] = record_prompt_ids([rec(instruction="ab<eos>cd")], tok, TEMPLATES["chat"])
    assert ids == [BOS, SOT] + byte_ids(tok, "user\nab<") + [EOT]  # "ab" + fence + "<": the fence is cut


def test_sentencepiece_style_tokenizer_gets_no_space_inside_a_prompt():
    """Metaspace with prepend_scheme 'first' starts each encoded text with '▁'; a piece encoded on its
    own in the middle of a prompt must not get one."""
    chars = ["▁", "\n"] + [chr(c) for c in range(33, 127)]
    vocab = {t: i for i, t in enumerate(SPECIALS)} | {c: len(SPECIALS) + i for i, c in enumerate(chars)}
    tok = Tokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")
    record = rec(instruction="say <eos>hi", input="<bos>")
    template = TEMPLATES["instruction-response"]
    [ids] = record_prompt_ids([record], tok, template)
    assert not control_ids(tok).intersection(ids) and UNK not in ids
    assert tok.decode(ids) == template.prompt(record.instruction, record.input)


HOSTILE = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(SPECIALS + ["<|endoftext|>", "\n", " "])),
                   max_size=8).map("".join)


def placed_control_ids(tok, template):
    """The control ids heed and the template place in an example whose text holds none."""
    [ex], _ = encode_records([rec()], template, tok, max_length=10**6)
    control = control_ids(tok)
    return [i for i in ex.input_ids if i in control]


@pytest.mark.parametrize("template", ["alpaca", "phi3", "chat"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(instruction=HOSTILE, input=HOSTILE, output=HOSTILE)
def test_property_gemma_like_only_placed_control_tokens(gemma_like, template, instruction, input, output):
    tok, tmpl = gemma_like, TEMPLATES[template]
    record = rec(instruction=instruction or "x", input=input, output=output or "y")
    [ex], _ = encode_records([record], tmpl, tok, max_length=10**6)
    control = control_ids(tok)
    assert [i for i in ex.input_ids if i in control] == placed_control_ids(tok, tmpl)
    prompt_text = tmpl.prompt(record.instruction, record.input, tok)
    assert tok.decode(ex.input_ids[:ex.prompt_length]) == "<bos>" + prompt_text.removeprefix("<bos>")
    assert sum(1 for label in ex.labels if label == EOT_ID) == 1


@settings(max_examples=60, deadline=None)
@given(instruction=HOSTILE, input=HOSTILE, output=HOSTILE)
def test_property_gpt2_only_the_final_eos(tokenizer, instruction, input, output):
    record = rec(instruction=instruction or "x", input=input, output=output or "y")
    [ex], _ = encode_records([record], TEMPLATES["alpaca"], tokenizer, max_length=10**6)
    assert [i for i, t in enumerate(ex.input_ids) if t == EOS] == [len(ex.input_ids) - 1]
    assert sum(1 for label in ex.labels if label != IGNORE_INDEX and label == EOS) == 1
    assert tokenizer.decode(ex.input_ids) == (TEMPLATES["alpaca"].prompt(record.instruction, record.input)
                                              + record.output + "<|endoftext|>")


# --- the real Gemma 3 tokenizer, when heed has converted the Gemma 3 270M GGUF model before -----------


@pytest.fixture(scope="module")
def gemma3():
    from heed.model import load_tokenizer
    from heed.model.gguf import COMPLETE, cache_dir

    candidates = [cache_dir() / "models" / "gemma-3-270m", *sorted((cache_dir() / "gguf").glob("gemma-3-270m*"))]
    found = next((d for d in candidates if (d / COMPLETE).is_file() and (d / "tokenizer.json").is_file()), None)
    if found is None:
        pytest.skip(f"no converted Gemma 3 tokenizer under {cache_dir()} (heed converts the GGUF model on first "
                    "use, test_gguf.py does; converting here would take a minute)")
    tok = load_tokenizer(str(found))
    tok.chat_template = tok.chat_template or GEMMA_CHAT
    return tok


@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_gemma3_record_text_is_plain(gemma3, template):
    tok, tmpl = gemma3, TEMPLATES[template]
    ids = {name: tok.convert_tokens_to_ids(name) for name in ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>")}
    record = rec(instruction="Stop <eos> here <start_of_turn>model\n", input="<bos><end_of_turn>",
                 output="fine<eos><start_of_turn>")
    [ex], _ = encode_records([record], tmpl, tok, max_length=10**6)
    placed = [i for i in ex.input_ids if i in ids.values()]
    if template == "alpaca":
        assert placed == [ids["<bos>"], ids["<eos>"]]
    else:
        assert placed == [ids["<bos>"], ids["<start_of_turn>"], ids["<end_of_turn>"], ids["<start_of_turn>"],
                          ids["<eos>"]]
    assert tok.decode(ex.input_ids[:ex.prompt_length]).endswith(
        tmpl.prompt(record.instruction, record.input, tok).removeprefix("<bos>"))
    assert tok.decode(ex.input_ids[ex.prompt_length:]) == "fine<eos><start_of_turn><eos>"
