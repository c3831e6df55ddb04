"""One source of truth for settings: flags generated from the dataclasses, --config files, KEY=VALUE
overrides, one validation before any model loads, and run.yaml that reproduces a run."""

import argparse
import json
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from heed.commands.cli import build_parser, main
from heed.commands.options import add_flags, configure
from heed.commands.train import run_config
from heed.config import (
    DataConfig, GenerateConfig, LoraConfig, RunConfig, TrainConfig, apply_override, flag_name, from_dict,
)
from heed.errors import HeedError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def parse_train(*argv):
    return build_parser().parse_args(["train", *argv])


def test_every_field_has_a_flag_with_its_default_and_help():
    parser = build_parser()
    helps = {}
    for action in parser._subparsers._group_actions[0].choices["train"]._actions:
        for option in action.option_strings:
            helps[option] = action.help or ""
    for cls in (DataConfig, TrainConfig, LoraConfig):
        for f in fields(cls):
            if f.name == "lora":
                assert "--lora" in helps
                continue
            flag = flag_name(f)
            assert flag in helps, flag
            assert helps[flag].startswith(f.metadata["help"])
            if f.default not in (None, True, False):
                assert f"(default: {f.default})" in helps[flag]


def test_flags_build_the_same_config_as_the_dataclass_defaults():
    run = run_config(parse_train("--model", "m", "--data", "d.json"))
    assert run == RunConfig(DataConfig(data="d.json"), TrainConfig(model="m"))


def test_flags_set_fields_and_clip_zero_means_off():
    run = run_config(parse_train("--model", "m", "--data", "d.json", "--lr", "1e-4", "--no-shuffle", "--shuffle",
                                 "--clip", "0", "--lora", "--lora-targets", "q_proj,v_proj"))
    assert run.train.lr == 1e-4 and run.train.shuffle is False and run.data.shuffle is True
    assert run.train.clip is None
    assert run.train.lora == LoraConfig(target_modules=["q_proj", "v_proj"])


def test_config_file_then_flags_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"data": "d.json", "template": "phi3"},
                                    "train": {"model": "m", "lr": 3e-4, "epochs": 5, "lora": {"r": 4}}}))
    run = run_config(parse_train("--config", str(path), "--epochs", "3", "train.lora.alpha=16", "data.shuffle=true"))
    assert run.train.lr == 3e-4  # from the file
    assert run.train.epochs == 3  # the flag wins over the file
    assert run.train.lora == LoraConfig(r=4, alpha=16)  # the override adds to the file's section
    assert run.data.template == "phi3" and run.data.shuffle is True


def test_validation_lists_every_problem_with_its_flag_before_loading_anything(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["train", "--model", "random:gpt2-tiny", "--data", "no-such.json", "--out", str(out),
                 "--lr", "nan", "--weight-decay", "-1", "--eval-batches", "0", "--max-steps", "0", "--clip", "-1",
                 "--checkpoint-every", "-1", "--max-new-tokens", "0", "--lora", "--lora-r", "0",
                 "--lora-dropout", "1.5", "--train-frac", "0.9", "--test-frac", "0.2"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    expected = ["--lr must be a finite number (got nan)", "--weight-decay must be zero or more (got -1.0)",
                "--eval-batches must be at least 1 (got 0)", "--max-steps must be at least 1 (got 0)",
                "--clip must be a positive number (got -1.0)", "--checkpoint-every must be at least 1 (got -1)",
                "--max-new-tokens must be at least 1 (got 0)", "--lora-r must be at least 1 (got 0)",
                "--lora-dropout must be at least 0 and below 1 (got 1.5)",
                "--train-frac 0.9 and --test-frac 0.2 add up to more than 1"]
    for line in expected:
        assert f"heed: error: {line}" in err
    assert len(err) == len(expected)  # one line each, and nothing about the missing data file yet
    assert not out.exists()


@pytest.mark.parametrize("value,message", [
    ("inf", "--lr must be a finite number (got inf)"), ("-1", "--lr must be a positive number (got -1.0)")])
def test_lr_range(value, message):
    with pytest.raises(HeedError) as e:
        run_config(parse_train("--model", "m", "--data", "d", "--lr", value))
    assert e.value.problems == [message]


def test_empty_out_is_refused():
    with pytest.raises(HeedError, match="--out must be a non-empty path"):
        run_config(parse_train("--model", "m", "--data", "d", "--out", ""))


def test_lora_flags_without_lora_are_refused():
    with pytest.raises(HeedError, match="--lora-r needs --lora"):
        run_config(parse_train("--model", "m", "--data", "d", "--lora-r", "8"))


@pytest.mark.parametrize("assignment,message", [
    ("train.lrr=1", "unknown setting 'lrr'"), ("train.lr=fast", "expected a number"),
    ("lr=1", "unknown setting 'lr'"), ("train.lora=1", "a section"), ("train.lr", "KEY=VALUE")])
def test_bad_overrides(assignment, message):
    with pytest.raises(HeedError, match=message):
        apply_override(RunConfig(), assignment)


def test_unknown_keys_in_a_config_file_are_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  learning_rate: 1e-4\n")
    with pytest.raises(HeedError, match=r"bad.yaml: train: unknown setting 'learning_rate' for TrainConfig"):
        run_config(parse_train("--config", str(path)))


def test_a_config_file_with_wrong_types_names_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  model: m\n  epochs: two\n  lr: 1e-4\ndata:\n  data: d.json\n")
    with pytest.raises(HeedError) as e:
        run_config(parse_train("--config", str(path)))
    assert e.value.problems == ["--epochs must be an integer (got 'two')"]  # 1e-4, a YAML string, is a number


def test_invalid_yaml_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [\n")
    with pytest.raises(HeedError, match=r"bad.yaml: line \d+, column \d+: invalid YAML"):
        run_config(parse_train("--config", str(path)))


@pytest.mark.parametrize("name", ["original-gpt2-medium.yaml", "gemma-lora.yaml", "demo.yaml"])
def test_example_configs_are_valid(name):
    run = run_config(parse_train("--config", str(CONFIGS / name)))
    assert run.validate() == [] and run.train.model and run.data.data


def test_generate_flags_come_from_generate_config():
    p = argparse.ArgumentParser()
    add_flags(p, GenerateConfig)
    cfg = configure(GenerateConfig, p.parse_args(["--top-k", "5", "--cache", "static"]))
    assert cfg == GenerateConfig(top_k=5, cache="static")
    with pytest.raises(SystemExit):
        p.parse_args(["--cache", "fancy"])


def test_from_dict_round_trips():
    run = RunConfig(DataConfig(data="x", template="chat"), TrainConfig(model="m", lora=LoraConfig(r=2)))
    assert from_dict(RunConfig, json.loads(json.dumps(run.to_dict()))) == run


def test_demo_config_file_is_the_demos_training_run():
    from heed.commands.demo import DemoConfig, demo_run

    run = run_config(parse_train("--config", str(CONFIGS / "demo.yaml")))
    # 25: answer_budget of the default tasks in Gemma 3's tokens (the demo computes it; the file states it)
    assert run == demo_run(DemoConfig(), Path("runs/demo/tasks.json"), Path("runs/demo/model"), max_new_tokens=25)


def test_run_yaml_reproduces_the_run(tmp_path, data_file):
    out = tmp_path / "run"
    argv = ["--model", "random:gpt2-tiny", "--data", data_file, "--out", str(out), "--batch-size", "2",
            "--epochs", "1", "--lr", "1e-3", "--precision", "fp32", "--no-sample", "--no-generate",
            "--train-frac", "0.6", "--test-frac", "0.2"]
    assert main(["train", *argv]) == 0
    again = tmp_path / "again"
    assert main(["train", "--config", str(out / "run.yaml"), "--out", str(again)]) == 0
    first = [json.loads(line)["val_loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    second = [json.loads(line)["val_loss"] for line in (again / "metrics.jsonl").read_text().splitlines()]
    assert first == second
    saved = yaml.safe_load((out / "run.yaml").read_text())
    assert saved["train"]["lr"] == 1e-3 and saved["data"]["template"] == "alpaca"


def test_lora_last_layers_flag_without_lora_names_its_flag():
    with pytest.raises(HeedError, match="--lora-last-layers needs --lora"):
        run_config(parse_train("--model", "m", "--data", "d", "--lora-last-layers", "4"))
