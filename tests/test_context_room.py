"""Prompt plus --max-new-tokens against the model's context: refused before any weights load (heed
generate, heed chat) or before training (heed train); a test prompt that leaves too little room after
training is cut to fit, never a crash after the model was saved.

The model is GPT-2 with a 64-token context, where position 64 has no embedding (an IndexError before)."""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import heed.model
from heed.commands.cli import main
from heed.config import GenerateConfig
from heed.data.records import Record
from heed.data.templates import get_template
from heed.generate import generate_ids, generate_responses
from heed.model import gpt2_tokenizer
from tests.conftest import RECORDS

CONTEXT = 64


def small_model() -> GPT2LMHeadModel:
    torch.manual_seed(3)
    config = GPT2Config(vocab_size=50257, n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=50256, eos_token_id=50256, pad_token_id=50256)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "model"
    small_model().save_pretrained(path)
    gpt2_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def no_weights(monkeypatch):
    """Fail a test whose command loads a model's weights (the check must come first)."""
    def refuse(*_, **__):
        raise AssertionError("the weights were loaded before the check")
    monkeypatch.setattr(heed.model, "load_model", refuse)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_room_by_hand():
    from heed.generate.responses import room

    assert room([10, 1000, 1030], 100, 1024) == [100, 24, -6]


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_rows_are_cut_at_the_context_and_their_neighbours_are_not(cache):
    from heed.generate.responses import room

    model = small_model()
    long, short = list(range(100, 160)), list(range(200, 210))  # 60 and 10 tokens of a 64-token context
    cfg = GenerateConfig(max_new_tokens=20, cache=cache)
    together = generate_ids(model, [long, short], pad_id=50256, eos=-1, cfg=cfg, limits=room([60, 10], 20, CONTEXT))
    alone = generate_ids(model, [short], pad_id=50256, eos=-1, cfg=cfg)
    assert len(together[0]) == 4 and len(together[1]) == 20
    assert together[1] == alone[0], "a neighbour cut short changes nothing in this row"


def test_generate_responses_never_runs_past_the_context(tokenizer):
    model = small_model()
    records = [Record(0, "word " * 80, "", None, {}), Record(1, "Add 2 and 3.", "", None, {})]
    stats = {}
    out = generate_responses(model, tokenizer, get_template("alpaca"), records, GenerateConfig(max_new_tokens=40),
                             stats=stats)
    assert out[0] == "" and stats["cut"] == [0, 1]  # the first fills the context; the second leaves < 40


def test_generate_refuses_an_instruction_that_does_not_fit(model_dir, capsys, no_weights):
    code = main(["generate", "--model", str(model_dir), "--instruction", "hi", "--max-new-tokens", "40"])
    err = one_error_line(capsys)
    assert code == 2 and err.startswith("heed: error: --max-new-tokens 40: the prompt of --instruction is ")
    assert f"context of {CONTEXT} tokens; lower --max-new-tokens to " in err


def test_generate_refuses_more_new_tokens_than_the_context(model_dir, capsys, no_weights):
    assert main(["generate", "--model", str(model_dir), "--instruction", "hi", "--max-new-tokens", "64"]) == 2
    assert "--max-new-tokens 64: the model's context is 64 tokens" in one_error_line(capsys)


def test_generate_names_the_records_that_do_not_fit(model_dir, tmp_path, capsys, no_weights):
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": "Hi.", "input": ""}, {"instruction": "word " * 12, "input": ""},
                                {"instruction": "word " * 15, "input": ""}]))
    # prompts of 32, 43 and 46 tokens
    assert main(["generate", "--model", str(model_dir), "--data", str(data), "--max-new-tokens", "25"]) == 2
    err = one_error_line(capsys)
    assert f"{data}: records 1, 2 have prompts of up to " in err and "lower --max-new-tokens to " in err
    assert not (tmp_path / "data-with-response.json").exists()
    data.write_text(json.dumps([{"instruction": "word " * 80, "input": ""}]))
    assert main(["generate", "--model", str(model_dir), "--data", str(data), "--max-new-tokens", "2"]) == 2
    assert "record 0 has a prompt of " in (err := one_error_line(capsys)) and "shorten or remove it" in err


def test_generate_within_the_context_answers(model_dir, capsys):
    assert main(["generate", "--model", str(model_dir), "--instruction", "hi", "--max-new-tokens", "5"]) == 0


def test_chat_refuses_more_new_tokens_than_the_context(model_dir, capsys, no_weights):
    assert main(["chat", "--model", str(model_dir), "--max-new-tokens", "100"]) == 2
    assert "--max-new-tokens 100: the model's context is 64 tokens" in one_error_line(capsys)


def test_train_refuses_max_new_tokens_before_training(model_dir, tmp_path, capsys):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(RECORDS))
    out = tmp_path / "run"
    assert main(["train", "--model", str(model_dir), "--data", str(data), "--out", str(out),
                 "--max-new-tokens", "100000"]) == 2
    assert "--max-new-tokens 100000: the model's context is 64 tokens" in one_error_line(capsys)
    assert not out.exists(), "refused before training: nothing written"


def test_train_cuts_test_responses_to_the_context_after_saving(model_dir, tmp_path, capsys):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(RECORDS * 2))
    out = tmp_path / "run"
    assert main(["train", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--epochs", "1",
                 "--batch-size", "4", "--max-new-tokens", "40", "--precision", "fp32", "--no-sample",
                 "--overlong", "truncate"]) == 0
    records = json.loads((out / "test-with-response.json").read_text())
    assert len(records) == 2 and (out / "test-scores.json").is_file()
    assert "responses were cut to fit" in capsys.readouterr().out
