"""Every setting of every command has one source: its dataclass field. The flags of generate, chat, serve,
judge, compare, tasks make and inspect are generated from it, each help states a default once, and each
config's validate() lists every problem, named by its flag, before anything runs."""

import argparse
import json
import re
from dataclasses import fields

import pytest

from heed.commands.cli import build_parser, main
from heed.commands.options import configure
from heed.config import (
    DataConfig, GenerateConfig, InspectConfig, JudgeConfig, LoraConfig, ModelConfig, ServeConfig, TasksConfig,
    TrainConfig, opt,
)

# The commands whose settings all come from dataclasses: none of their flags may carry a default of its own.
GENERATED = {"generate", "chat", "serve", "judge", "compare", "tasks make", "inspect", "data check"}
TEMPLATE_PROBLEM = "--template nosuch: choose alpaca, instruction-response, phi3 or chat"


def parsers(parser, path=()):
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


def options(command):
    parser = dict(parsers(build_parser()))[command]
    return {option: action for action in parser._actions for option in action.option_strings}


def errors(capsys):
    return [line.removeprefix("heed: error: ") for line in capsys.readouterr().err.splitlines()]


NO_MODEL = "nosuch-model-xyz"  # looking it up would add its own error line to what a test expects


def test_every_help_states_a_default_once():
    """serve --host once read "(default: this machine only…) (default: 127.0.0.1)"."""
    for command, parser in parsers(build_parser()):
        for action in parser._actions:
            assert (action.help or "").count("(default") <= 1, (command, action.option_strings, action.help)


def test_generated_commands_have_no_hand_written_defaults():
    """A flag typed by hand with default= is a second copy of a setting; generated flags default to
    SUPPRESS and take their value from the dataclass."""
    seen = set()
    for command, parser in parsers(build_parser()):
        if command not in GENERATED:
            continue
        seen.add(command)
        for action in parser._actions:
            if action.option_strings and action.dest not in ("help",):
                assert action.default in (None, False, argparse.SUPPRESS), (command, action.option_strings)
    assert seen == GENERATED


@pytest.mark.parametrize("command,cls,flags", [
    ("judge", JudgeConfig, ["--responses", "r.json"]),
    ("compare", JudgeConfig, ["a.json", "b.json"]),
    ("tasks make", TasksConfig, ["--out", "t.json"]),
    ("inspect", InspectConfig, ["--model", "m", "--data", "d.json"]),
    ("generate", ModelConfig, ["--model", "m"]),
    ("generate", GenerateConfig, ["--model", "m"]),
    ("generate", DataConfig, ["--model", "m"]),
    ("serve", ModelConfig, ["--model", "m"]),
    ("serve", ServeConfig, ["--model", "m"]),
])
def test_flag_defaults_and_help_come_from_the_dataclass(command, cls, flags):
    args = build_parser().parse_args([*command.split(), *flags])
    expected = cls(model="m") if cls is ModelConfig else cls()
    assert configure(cls, args) == expected
    helps = options(command)
    for f in fields(cls):
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        if flag not in helps or helps[flag].dest != f"{cls.__name__}.{f.name}":
            continue  # a field this command does not offer (generate reads two of DataConfig's)
        assert helps[flag].help.startswith(f.metadata["help"].replace("%", "%%"))
        if f.default is not None and not isinstance(f.default, bool):
            assert helps[flag].help.endswith(f"(default: {f.default})"), flag


def test_judge_flags_keep_their_names_and_defaults():
    helps = options("judge")
    for flag in ("--judge", "--url", "--template", "--concurrency", "--timeout", "--retries", "--deadline",
                 "--fresh", "--out"):
        assert flag in helps
    assert JudgeConfig() == JudgeConfig(judge="ollama:llama3", url=None, template="alpaca", concurrency=1,
                                        timeout=120.0, retries=3, deadline=None, fresh=False)
    assert TasksConfig() == TasksConfig(n=1000, seed=123, families=None)
    assert InspectConfig() == InspectConfig(index=0, color="auto")
    assert helps["--deadline"].metavar == "SECONDS"


def test_a_help_text_that_states_its_default_is_refused():
    with pytest.raises(ValueError, match="adds '\\(default: 8\\)' already"):
        opt(8, "prompts per batch (default: 8)")
    opt(None, "longest example (default: the model's context length)")  # says what None means: fine


def test_config_helps_hold_no_benchmark_figures():
    for cls in (DataConfig, TrainConfig, LoraConfig, GenerateConfig, ServeConfig, ModelConfig, JudgeConfig,
                TasksConfig, InspectConfig):
        for f in fields(cls):
            assert not re.search(r"\d(\.\d+)?x (faster|slower)|\bminutes\b|\bms\b", f.metadata.get("help", "")), f.name


@pytest.mark.parametrize("command", [["judge", "--responses", "no-such.json"], ["compare", "no-a.json", "no-b.json"]])
def test_judge_settings_are_checked_before_anything_runs(command, capsys):
    """Every judge problem, named by its flag, before any responses file is read or request sent."""
    assert main([*command, "--timeout", "-1", "--retries", "-1", "--concurrency", "0", "--deadline", "nan",
                 "--template", "nosuch"]) == 2
    assert errors(capsys) == [TEMPLATE_PROBLEM, "--concurrency must be at least 1 (got 0)",
                              "--timeout must be a number of seconds above 0 (got -1.0)",
                              "--retries must be 0 or more (got -1)", "--deadline must be a finite number (got nan)"]


def test_judge_config_validates_on_its_own():
    assert JudgeConfig().validate() == []
    assert JudgeConfig(timeout=0, retries=-2).validate() == [
        "--timeout must be a number of seconds above 0 (got 0)", "--retries must be 0 or more (got -2)"]


def test_tasks_make_lists_every_problem(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["tasks", "make", "--n", "0", "--families", "plural,nosuch", "--out", str(out)]) == 2
    problems = errors(capsys)
    assert problems[0] == "--n must be at least 1 (got 0)"
    assert problems[1].startswith("--families: unknown nosuch; choose from: ") and len(problems) == 2
    assert not out.exists()
    assert main(["tasks", "make", "--n", "30", "--seed", "5", "--families", "plural, capital", "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert len(records) == 30 and {r["task"] for r in records} == {"plural", "capital"}


def test_an_unknown_template_is_listed_with_the_other_problems(tmp_path, data_file, capsys):
    """It was reported only after the model was looked up: `--model nosuch-model-xyz --template nosuch`
    named the model alone."""
    code = main(["train", "--model", NO_MODEL, "--data", data_file, "--out", str(tmp_path / "out"),
                 "--template", "nosuch", "--lr", "-1"])
    assert code == 2
    assert errors(capsys) == [TEMPLATE_PROBLEM, "--lr must be a positive number (got -1.0)"]
    assert DataConfig(template="nosuch").validate() == [TEMPLATE_PROBLEM]
    assert DataConfig(template="phi3").validate() == [] and DataConfig().validate() == []  # None: the model's own


@pytest.mark.parametrize("command", [
    ["generate", "--model", NO_MODEL, "--instruction", "hi"],
    ["chat", "--model", NO_MODEL],
    ["serve", "--model", NO_MODEL],
    ["inspect", "--model", NO_MODEL, "--data", "no-such.json"],
])
def test_template_and_ranges_of_answering_commands_together(command, capsys):
    bad_range = ["--port", "70000"] if command[0] == "serve" else (["--top-k", "0"] if command[0] != "inspect"
                                                                    else ["--max-length", "1"])
    assert main([*command, "--template", "nosuch", *bad_range]) == 2
    problems = errors(capsys)
    assert problems[0] == TEMPLATE_PROBLEM and len(problems) == 2, problems
    assert problems[1].startswith(bad_range[0] + " must be")


def test_generate_reads_fields_and_skips_invalid_records_from_data_config_flags(tmp_path, capsys):
    data = tmp_path / "ask.json"
    data.write_text(json.dumps([{"prompt": "Add 2 and 3."}, {"nothing": 1}, {"prompt": "Hi"}]))
    out = tmp_path / "answers.json"
    argv = ["generate", "--model", "random:gpt2-tiny", "--data", str(data), "--out", str(out), "--fields",
            "instruction=prompt", "--template", "phi3", "--device", "cpu", "--max-new-tokens", "2"]
    assert main(argv) == 2 and not out.exists()  # the invalid record refuses the file
    capsys.readouterr()
    assert main([*argv, "--skip-invalid"]) == 0
    answered = json.loads(out.read_text())
    assert [r["prompt"] for r in answered] == ["Add 2 and 3.", "Hi"]
    assert all(isinstance(r["model_response"], str) for r in answered)
