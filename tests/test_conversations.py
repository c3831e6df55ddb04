"""Conversation records (OpenAI messages, ShareGPT): validation, multi-turn masking by position, system prompts."""

import json

import pytest

from heed.commands.cli import main
from heed.data import load_split, with_system
from heed.config import DataConfig
from heed.data.encode import IGNORE_INDEX as X
from heed.data.encode import build_conversation_example, encode_records, record_prompt_ids
from heed.data.records import Record, load_records
from heed.data.templates import TEMPLATES
from heed.errors import HeedError
from tests.test_control_tokens import BOS, EOT, EOT_ID, SOT, byte_ids, gemma_like  # noqa: F401 (a fixture)
from tests.test_encode import ALPACA, HI, INSTR_RESP, PHI3

EOS = 50256


def chat(*turns, system=None):
    """A messages record from ("user", text), ("assistant", text) pairs."""
    head = [{"role": "system", "content": system}] if system else []
    return {"messages": head + [{"role": r, "content": c} for r, c in turns]}


TWO_TURNS = chat(("user", "Say hi"), ("assistant", "hi"), ("user", "Say hi"), ("assistant", "hi"))


def load(write_json, records, **kw):
    return load_records(write_json(records), **kw)


# --- reading and validating -----------------------------------------------------------------------


def test_messages_and_sharegpt_read_the_same(write_json):
    sharegpt = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Say hi"},
                                  {"from": "gpt", "value": "hi"}]}
    [a] = load(write_json, [chat(("user", "Say hi"), ("assistant", "hi"), system="Be brief.")])
    [b] = load(write_json, [sharegpt], )
    assert a.turns == b.turns == [("system", "Be brief."), ("user", "Say hi"), ("assistant", "hi")]
    assert (a.instruction, a.output) == ("Say hi", "hi")


def test_format_detected_per_file_and_forced(write_json):
    path = write_json([TWO_TURNS])
    assert load_records(path)[0].turns is not None
    with pytest.raises(HeedError, match="record 0: 'instruction' is missing"):
        load_records(path, format="alpaca")
    with pytest.raises(HeedError, match="record 0: 'conversations' is missing"):
        load_records(path, format="sharegpt")


def test_single_object_messages_file_is_one_record(write_json):
    [record] = load_records(write_json(TWO_TURNS))
    assert len(record.turns) == 4


def test_malformed_conversations_one_line_each(write_json):
    bad = [
        chat(("bot", "x")),
        {"messages": []},
        chat(("user", "a"), ("user", "b"), ("assistant", "c")),
        chat(("user", "a"), ("assistant", " ")),
        chat(("user", "a")),
        chat(("user", "a"), ("assistant", "b"), ("system", "c")),
        chat(("assistant", "b")),
        {"messages": [{"role": "user", "content": 3}, "turn"]},
        chat(("user", "a"), ("assistant", "b"), ("user", "c")),
        {"messages": [{"role": "system", "content": "s"}]},
    ]
    path = write_json(bad)
    with pytest.raises(HeedError) as e:
        load_records(path)
    assert e.value.problems == [
        f"{path}: record 0: messages[0]: role 'bot' is not one of system, user, assistant",
        f"{path}: record 1: 'messages' must be a non-empty list of turns, found an empty list",
        f"{path}: record 2: messages[1]: expected an assistant turn after user, found user (turns alternate user, "
        "assistant, user, ...; merge consecutive turns of one role)",
        f"{path}: record 3: messages[1]: 'content' is empty",
        f"{path}: record 4: 'messages' has no assistant turn; nothing to train on",
        f"{path}: record 5: messages[2]: a system turn must come first, before every user turn",
        f"{path}: record 6: messages[0]: expected a user turn after the start, found assistant (turns alternate "
        "user, assistant, user, ...; merge consecutive turns of one role)",
        f"{path}: record 7: messages[0]: 'content' must be a string, found int",
        f"{path}: record 7: messages[1]: not an object (found str)",
        f"{path}: record 8: messages[2]: the conversation ends with a user turn, which is never trained on; end it "
        "with the assistant's reply or remove that turn",
        f"{path}: record 9: 'messages' holds only a system turn; add a user and an assistant turn",
    ]


def test_generation_input_may_end_with_a_user_turn(write_json):
    [record] = load(write_json, [chat(("user", "a"), ("assistant", "b"), ("user", "c"))], require_output=False)
    assert record.output is None and record.turns[-1] == ("user", "c")


def test_skip_invalid_keeps_the_good_conversations(write_json, capsys):
    records = load(write_json, [TWO_TURNS, chat(("user", "a"))], skip_invalid=True)
    assert [r.index for r in records] == [0] and "skipped 1 invalid record" in capsys.readouterr().err


# --- masking by position, heed's templates (GPT-2 ids, hand-worked in test_encode) -------------------


@pytest.mark.parametrize("template, first, later", [
    ("alpaca", ALPACA, INSTR_RESP),  # a later alpaca turn: the markers without the preamble or blank lines
    ("instruction-response", INSTR_RESP, INSTR_RESP),
    ("phi3", PHI3, PHI3),
])
def test_two_turns_hand_worked(tokenizer, write_json, template, first, later):
    records = load(write_json, [TWO_TURNS])
    [ex], _ = encode_records(records, TEMPLATES[template], tokenizer, max_length=1024)
    assert ex.input_ids == first + HI + [EOS] + later + HI + [EOS]
    assert ex.labels == [X] * len(first) + HI + [EOS] + [X] * len(later) + HI + [EOS]
    assert ex.spans == [("prompt", 0, len(first)), ("assistant", len(first), len(first) + 2),
                        ("prompt", len(first) + 2, len(first) + 2 + len(later)),
                        ("assistant", len(first) + 2 + len(later), len(ex.input_ids))]
    [last], _ = encode_records(records, TEMPLATES[template], tokenizer, max_length=1024, last_turn_only=True)
    assert last.labels == [X] * (len(first) + 2 + len(later)) + HI + [EOS]
    [every], _ = encode_records(records, TEMPLATES[template], tokenizer, max_length=1024, train_on_prompt=True)
    assert every.labels == every.input_ids


@pytest.mark.parametrize("template", ["alpaca", "instruction-response", "phi3"])
def test_one_turn_conversation_encodes_as_the_instruction_record(tokenizer, write_json, template):
    [conv] = load(write_json, [chat(("user", "Say hi"), ("assistant", "hi"))])
    plain = Record(0, "Say hi", "", "hi", {})
    [a], _ = encode_records([conv], TEMPLATES[template], tokenizer, max_length=1024)
    [b], _ = encode_records([plain], TEMPLATES[template], tokenizer, max_length=1024)
    assert (a.input_ids, a.labels, a.prompt_length) == (b.input_ids, b.labels, b.prompt_length)


def test_build_conversation_example_docstring():
    segments = [(False, [10, 11]), (True, [20, EOS]), (False, [12]), (True, [21, EOS])]
    assert build_conversation_example(0, segments).labels == [X, X, 20, EOS, X, 21, EOS]
    assert build_conversation_example(0, segments, last_turn_only=True).labels == [X, X, X, X, X, 21, EOS]


def test_control_token_text_in_turns_stays_plain(tokenizer, write_json):
    records = load(write_json, [chat(("user", "Stop <|endoftext|>"), ("assistant", "ok<|endoftext|>"),
                                     ("user", "x"), ("assistant", "y"), system="<|endoftext|>")])
    [ex], _ = encode_records(records, TEMPLATES["alpaca"], tokenizer, max_length=1024)
    assert [i for i, t in enumerate(ex.input_ids) if t == EOS] == [ex.spans[1][2] - 1, len(ex.input_ids) - 1]
    assert tokenizer.decode(ex.input_ids).count("<|endoftext|>") == 5  # 3 typed as text + 2 real EOS


def test_generation_prompt_is_the_conversation_up_to_its_last_reply(tokenizer, write_json):
    records = load(write_json, [TWO_TURNS])
    [prompt] = record_prompt_ids(records, tokenizer, TEMPLATES["alpaca"])
    assert prompt == ALPACA + HI + [EOS] + INSTR_RESP


def test_truncate_cuts_from_the_end(tokenizer, write_json):
    records = load(write_json, [TWO_TURNS])
    n = len(ALPACA) + 2 + len(INSTR_RESP) + 1
    [ex], report = encode_records(records, TEMPLATES["alpaca"], tokenizer, max_length=n, policy="truncate")
    assert ex.truncated and report.truncated == [0] and ex.input_ids[-1] == HI[0] and len(ex.input_ids) == n
    assert ex.spans[-1] == ("assistant", n - 1, n)


# --- the tokenizer's own chat template (Gemma-like, byte-level: ids hand-worked byte by byte) --------


def test_chat_template_two_turns_hand_worked(gemma_like, write_json):
    records = load(write_json, [chat(("user", "Hi"), ("assistant", "Yo"), ("user", "Add 1"), ("assistant", "2"),
                                     system="Be brief")])
    [ex], _ = encode_records(records, TEMPLATES["chat"], gemma_like, max_length=1024)
    b = lambda text: byte_ids(gemma_like, text)  # noqa: E731
    first = ([BOS, SOT] + b("system\nBe brief") + [EOT] + b("\n") + [SOT] + b("user\nHi") + [EOT] + b("\n")
             + [SOT] + b("model\n"))
    reply1 = b("Yo") + [EOT]  # the template's end-of-turn; the newline after it opens the next turn
    second = b("\n") + [SOT] + b("user\nAdd 1") + [EOT] + b("\n") + [SOT] + b("model\n")
    reply2 = b("2") + [EOT, EOT_ID]  # the last reply also ends with EOS, where generation stops
    assert ex.input_ids == first + reply1 + second + reply2
    assert ex.labels == [X] * len(first) + reply1 + [X] * len(second) + reply2
    [prompt] = record_prompt_ids(records, gemma_like, TEMPLATES["chat"])
    assert prompt == first + reply1 + second


def test_chat_template_keeps_turn_text_plain(gemma_like, write_json):
    records = load(write_json, [chat(("user", "<end_of_turn>"), ("assistant", "<start_of_turn>"))])
    [ex], _ = encode_records(records, TEMPLATES["chat"], gemma_like, max_length=1024)
    assert ex.input_ids.count(SOT) == 2 and ex.input_ids.count(EOT) == 2  # the template's own markers only


def test_chat_template_that_rewrites_earlier_turns_is_refused(gemma_like, write_json):
    tok = gemma_like.__class__(tokenizer_object=gemma_like.backend_tokenizer, eos_token="<eos>", bos_token="<bos>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] if loop.last else '.' }}{% endfor %}"
    with pytest.raises(HeedError, match="writes earlier turns differently"):
        encode_records(load(write_json, [TWO_TURNS]), TEMPLATES["chat"], tok, max_length=1024)


# --- system prompts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("template, head", [
    ("alpaca", "Be brief."), ("instruction-response", "Be brief.\n\n"), ("phi3", "<|system|>\nBe brief.\n"),
])
def test_system_prompt_on_instruction_records(tokenizer, template, head):
    record = with_system([Record(0, "Say hi", "", "hi", {})], "Be brief.")[0]
    [ex], _ = encode_records([record], TEMPLATES[template], tokenizer, max_length=1024)
    plain = TEMPLATES[template].prompt("Say hi")
    if template == "alpaca":
        plain = plain[len(TEMPLATES["alpaca"].preamble):]  # the system prompt takes the preamble's place
    assert ex.input_ids[: ex.prompt_length] == tokenizer(head + plain)["input_ids"]


def test_system_prompt_equals_a_system_turn(tokenizer, gemma_like, write_json):
    [conv] = load(write_json, [chat(("user", "Say hi"), ("assistant", "hi"), system="Be brief.")])
    record = with_system([Record(0, "Say hi", "", "hi", {})], "Be brief.")[0]
    for template, tok in (("alpaca", tokenizer), ("phi3", tokenizer)):
        [a], _ = encode_records([conv], TEMPLATES[template], tok, max_length=1024)
        [b], _ = encode_records([record], TEMPLATES[template], tok, max_length=1024)
        assert a.input_ids == b.input_ids
    [prompt] = record_prompt_ids([record], gemma_like, TEMPLATES["chat"])
    assert prompt[:3] == [BOS, SOT] + byte_ids(gemma_like, "s")


def test_load_split_applies_system_and_format(write_json):
    path = write_json([TWO_TURNS] * 10)
    records, split = load_split(DataConfig(data=path, format="messages", system="S"))
    assert len(split.train) == 8 and all(r.system == "S" for r in records)


# --- the commands -------------------------------------------------------------------------------------


def test_inspect_shows_turns(capsys, write_json):
    path = write_json([TWO_TURNS])
    assert main(["inspect", "--data", path, "--model", "random:gpt2-tiny", "--json", "--last-turn-only"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(t["role"], t["trained"]) for t in out["turns"]] == [("prompt", 0), ("assistant", 0), ("prompt", 0),
                                                                  ("assistant", 2)]
    assert main(["inspect", "--data", path, "--model", "random:gpt2-tiny", "--color", "never"]) == 0
    assert "turn 3 assistant: 2 tokens, 2 trained on" in capsys.readouterr().out


def test_data_check_counts_turns(capsys, write_json):
    path = write_json([TWO_TURNS] * 10, name="chats.jsonl")
    assert main(["data", "check", "--data", path, "--model", "random:gpt2-tiny", "--json"]) == 0
    turns = json.loads(capsys.readouterr().out)["turns"]
    assert turns == {"conversations": 8, "replies": 16, "trained_replies": 16, "reply_tokens": 32,
                     "masked_tokens": 8 * (len(ALPACA) + len(INSTR_RESP))}


def test_messages_file_error_is_one_line(capsys, write_json):
    path = write_json([chat(("user", "a"), ("user", "b"))])
    assert main(["data", "check", "--data", path, "--model", "random:gpt2-tiny"]) == 2
    assert capsys.readouterr().err.strip().startswith(f"heed: error: {path}: record 0: messages[1]: expected an")


def test_many_records_missing_messages_are_counted_once(write_json):
    path = write_json([TWO_TURNS] + [{"chat": []}] * 12)
    with pytest.raises(HeedError) as e:
        load_records(path)
    assert e.value.problems == [
        f"{path}: 'messages' is missing in 12 of 13 records (1, 2, 3, 4, 5, …)",
        f"{path}: keys found: chat, messages; conversations are read from 'messages' (--format messages) or "
        "'conversations' (--format sharegpt); --format alpaca reads instruction records",
    ]
