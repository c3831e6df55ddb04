import json

import pytest
import torch

from heed.commands.cli import main
from heed.config import GenerateConfig
from heed.data.encode import prompt_ids
from heed.data.records import Record
from heed.data.templates import TEMPLATES
from heed.generate import generate_ids, generate_responses
from heed.generate.responses import _filter_logits
from heed.model import load_model
from tests.conftest import RECORDS, SHARED_DATA

PROMPTS = ["Add 2 and 3.", "Write a long poem about the sea and the stars.", "Hi"]


@pytest.fixture(scope="module")
def model():
    return load_model("random:gpt2-tiny", seed=7)


def prompts(tokenizer):
    return prompt_ids([TEMPLATES["alpaca"].prompt(p, "") for p in PROMPTS], tokenizer, TEMPLATES["alpaca"])


@pytest.mark.kernels
def test_batched_greedy_equals_one_by_one(model, tokenizer):
    cfg = GenerateConfig(max_new_tokens=12)
    ps = prompts(tokenizer)
    assert len({len(p) for p in ps}) == 3, "prompts of different lengths exercise left padding"
    batched = generate_ids(model, ps, pad_id=50256, eos=50256, cfg=cfg)
    single = [generate_ids(model, [p], pad_id=50256, eos=50256, cfg=cfg)[0] for p in ps]
    assert batched == single
    assert all(len(s) == 12 for s in single)


@pytest.mark.kernels
def test_greedy_matches_full_recompute_without_cache(model, tokenizer):
    p = prompts(tokenizer)[0]
    ids = list(p)
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert generate_ids(model, [p], pad_id=50256, eos=50256, cfg=GenerateConfig(max_new_tokens=6))[0] == ids[len(p):]


@pytest.mark.kernels
def test_each_row_stops_at_its_own_eos(model, tokenizer):
    ps = prompts(tokenizer)
    free = generate_ids(model, ps, pad_id=50256, eos=-1, cfg=GenerateConfig(max_new_tokens=10))
    stop = free[0][3]  # pretend this token is the end-of-text token
    got = generate_ids(model, ps, pad_id=50256, eos=stop, cfg=GenerateConfig(max_new_tokens=10))
    for row, seq in zip(got, free):
        expected = seq[: seq.index(stop)] if stop in seq else seq
        assert row == expected
    assert len(got[0]) == free[0].index(stop) <= 3


@pytest.mark.kernels
def test_sampling_is_seeded(model, tokenizer):
    cfg = GenerateConfig(max_new_tokens=8, temperature=1.0, top_k=50, top_p=0.9)
    ps = prompts(tokenizer)
    a = generate_ids(model, ps, pad_id=50256, eos=50256, cfg=cfg, generator=torch.Generator().manual_seed(1))
    b = generate_ids(model, ps, pad_id=50256, eos=50256, cfg=cfg, generator=torch.Generator().manual_seed(1))
    assert a == b


def test_top_k_and_top_p_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    assert torch.isinf(_filter_logits(logits, 2, None)).tolist() == [[False, False, True, True]]
    # softmax ≈ [0.64, 0.24, 0.09, 0.03]: top-p 0.7 keeps the first two (the second crosses 0.7).
    assert torch.isinf(_filter_logits(logits, None, 0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(_filter_logits(logits, None, 0.5)).tolist() == [[False, True, True, True]]


def test_choose_samples_each_token_with_its_probability_and_never_a_filtered_one():
    from heed.generate.responses import choose

    probs = torch.tensor([0.2, 0.5, 0.3])
    n = 1000
    draws = (torch.arange(n) + 0.5) / n  # evenly spread uniform numbers: each token gets its share exactly
    picks = choose(probs.log().expand(n, 3), GenerateConfig(temperature=1.0), draws)
    assert torch.bincount(picks, minlength=3).tolist() == [200, 500, 300]
    # the extremes of [0, 1) with top-k 2 of 4: only the two kept tokens come out
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]]).expand(3, 4)
    kept = choose(logits, GenerateConfig(temperature=1.0, top_k=2), torch.tensor([0.0, 0.5, 1 - 2**-24]))
    assert set(kept.tolist()) == {0, 1}
    assert choose(logits, GenerateConfig(temperature=0.0), None).tolist() == [0, 0, 0]


def test_responses_in_input_order(model, tokenizer):
    recs = [Record(i, p, "", None, {"instruction": p}) for i, p in enumerate(PROMPTS)]
    cfg = GenerateConfig(max_new_tokens=5, batch_size=2)
    got = generate_responses(model, tokenizer, TEMPLATES["alpaca"], recs, cfg)
    one = [generate_responses(model, tokenizer, TEMPLATES["alpaca"], [r], cfg)[0] for r in recs]
    assert got == one


def test_cli_train_then_generate_end_to_end(tmp_path, capsys):
    data = SHARED_DATA if SHARED_DATA.is_file() else None
    if data is None:
        path = tmp_path / "data.json"
        path.write_text(json.dumps(RECORDS * 20))
        data = path
    out = tmp_path / "run"
    code = main(["train", "--model", "random:gpt2-tiny", "--data", str(data), "--out", str(out), "--epochs", "1",
                 "--max-steps", "30", "--lr", "1e-3", "--max-new-tokens", "8", "--precision", "fp32"])
    assert code == 0
    responses = json.loads((out / "test-with-response.json").read_text())
    assert len(responses) == (110 if data == SHARED_DATA else 20)
    assert {"instruction", "output", "model_response"} <= set(responses[0])

    small = tmp_path / "ask.jsonl"
    small.write_text("\n".join(json.dumps({"instruction": p}) for p in PROMPTS))
    assert main(["generate", "--model", str(out), "--data", str(small), "--max-new-tokens", "6"]) == 0
    written = json.loads((tmp_path / "ask-with-response.json").read_text())
    assert [r["instruction"] for r in written] == PROMPTS and all("model_response" in r for r in written)

    capsys.readouterr()
    assert main(["generate", "--model", str(out), "--instruction", "Add 2 and 3.", "--max-new-tokens", "6"]) == 0
    one = capsys.readouterr().out.strip()
    assert one == written[0]["model_response"]
    assert main(["generate", "--model", str(out), "--instruction", "Add 2 and 3.", "--max-new-tokens", "6",
                 "--cache", "static"]) == 0
    assert capsys.readouterr().out.strip() == one  # the static cache decodes the same


def test_cli_errors(tmp_path, capsys):
    assert main(["train", "--data", "x.json"]) == 2
    assert "heed train needs --model" in capsys.readouterr().err
    assert main(["generate", "--model", "random:gpt2-tiny"]) == 2
    assert "either --data FILE or --instruction TEXT" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "no checkpoint there" in capsys.readouterr().err
    assert main(["train", "--model", "random:gpt2-tiny", "--data", str(tmp_path / "none.json")]) == 2
    assert capsys.readouterr().err.strip() == f"heed: error: {tmp_path / 'none.json'}: no such file"


def test_offline_hub_id_fails_fast_with_a_hint(capsys, data_file, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["inspect", "--model", "openai-community/gpt2-medium", "--data", data_file]) == 2
    err = capsys.readouterr().err
    assert "hf download openai-community/gpt2-medium --local-dir DIR" in err and "Traceback" not in err


def test_chat_answers_each_line_until_an_empty_one(tmp_path, capsys, monkeypatch):
    lines = iter(["Add 2 and 3.", "Hi", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--model", "random:gpt2-tiny", "--max-new-tokens", "3"]) == 0
    answers = capsys.readouterr().out.splitlines()
    model = load_model("random:gpt2-tiny")
    from heed.model import gpt2_tokenizer

    recs = [Record(0, "Add 2 and 3.", "", None, {}), Record(1, "Hi", "", None, {})]
    expected = [generate_responses(model, gpt2_tokenizer(), TEMPLATES["alpaca"], [r], GenerateConfig(max_new_tokens=3))[0]
                for r in recs]
    assert answers == expected
