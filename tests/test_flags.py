"""Every numeric flag of every command is range-checked before any model loads, with the flag's own name;
damaged inputs are one line, never a traceback."""

import pytest

from heed.commands.cli import main

GEN = ["generate", "--model", "random:gpt2-tiny", "--instruction", "hi"]


@pytest.mark.parametrize("argv,message", [
    (GEN + ["--max-new-tokens", "0"], "--max-new-tokens must be at least 1 (got 0)"),
    (GEN + ["--batch-size", "0"], "--batch-size must be at least 1 (got 0)"),
    (GEN + ["--temperature", "-1"], "--temperature must be zero or more (got -1.0)"),
    (GEN + ["--temperature", "nan"], "--temperature must be a finite number (got nan)"),
    (GEN + ["--top-k", "0"], "--top-k must be at least 1 (got 0)"),
    (GEN + ["--top-p", "1.5"], "--top-p must be in (0, 1] (got 1.5)"),
    (["chat", "--model", "random:gpt2-tiny", "--max-new-tokens", "-3"], "--max-new-tokens must be at least 1 (got -3)"),
    (["bench", "--steps", "0"], "--steps must be at least 1 (got 0)"),
    (["bench", "--gen-tokens", "-1", "--budget-scale", "0"], "--gen-tokens must be at least 1 (got -1)"),
    (["demo", "--epochs", "0"], "--epochs must be at least 1 (got 0)"),
    (["demo", "--n", "5"], "--n must be at least 20 (got 5)"),
    (["demo", "--out", ""], "--out must be a non-empty path (got )"),
    (["tasks", "make", "--n", "0", "--out", "x.json"], "--n must be at least 1 (got 0)"),
    (["serve", "--model", "random:gpt2-tiny", "--max-body-bytes", "10"], "--max-body-bytes must be at least 64 (got 10)"),
    (["serve", "--model", "random:gpt2-tiny", "--batch-wait-ms", "nan"], "--batch-wait-ms must be a finite number (got nan)"),
    (["serve", "--model", "random:gpt2-tiny", "--max-prompt-tokens", "0"], "--max-prompt-tokens must be at least 1 (got 0)"),
    (["serve", "--model", "random:gpt2-tiny", "--timeout", "0"], "--timeout must be a positive number (got 0.0)"),
])
def test_numeric_flags_are_range_checked(argv, message, capsys, monkeypatch):
    import heed.model
    import heed.model.load

    for module in (heed.model, heed.model.load):
        monkeypatch.setattr(module, "load_model", lambda *a, **k: pytest.fail("no model may load"))
    assert main(argv) == 2
    assert f"heed: error: {message}" in capsys.readouterr().err.splitlines()


def test_inspect_index_out_of_range(data_file, capsys):
    assert main(["inspect", "--model", "random:gpt2-tiny", "--data", data_file, "--index", "-1"]) == 2
    assert "--index -1 is out of range; the file has records 0 to 9" in capsys.readouterr().err


def test_a_damaged_model_is_one_line(tmp_path, capsys):
    from heed.model import load_model, load_tokenizer

    model_dir = tmp_path / "model"
    load_model("random:gpt2-tiny").save_pretrained(model_dir)
    load_tokenizer("random:gpt2-tiny").save_pretrained(model_dir)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    assert main(["generate", "--model", str(model_dir), "--instruction", "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a damaged .safetensors file" in err[0] and str(model_dir) in err[0]


def test_resume_names_the_directory_it_was_given(tmp_path, capsys):
    missing = tmp_path / "runs" / "no_such_run"
    assert main(["train", "--resume", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == f"heed: error: --resume {missing}: no such directory"


def test_resume_refuses_a_foreign_pt_file(tmp_path, capsys):
    import torch

    path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    assert main(["train", "--resume", str(path)]) == 2
    assert "heed no longer reads .pt checkpoints" in capsys.readouterr().err


def test_every_command_prints_its_help(capsys):
    """--help of every command and subcommand renders (argparse formats help with %: a help text that
    says "85% train" once crashed `heed demo --help`)."""
    import argparse

    from heed.commands.cli import build_parser

    def parsers(parser, path):
        yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from parsers(sub, path + [name])

    seen = []
    for path, parser in parsers(build_parser(), []):
        with pytest.raises(SystemExit) as exit:
            parser.parse_args(["--help"])
        assert exit.value.code == 0
        seen.append(" ".join(path))
    assert {"demo", "train", "generate", "serve", "export"} <= set(seen)
    out = capsys.readouterr().out
    assert "85% train" in out and "mean with a 95% bootstrap CI" in out
    assert "%%" not in out, "a help text escaped for argparse where argparse does not format it"
