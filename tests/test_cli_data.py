import json
import subprocess
import sys

from heed.commands.cli import main
from tests.conftest import RECORDS

INSTR_RESP_SAY = [21017, 46486, 25, 198]  # "### Instruction:\n"


def run_json(capsys, argv):
    code = main(argv)
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_inspect_json_shows_tokens_ids_and_labels(capsys, data_file):
    code, out = run_json(capsys, ["inspect", "--data", data_file, "--model", "random:gpt2-tiny", "--index", "4",
                                  "--template", "instruction-response", "--json"])
    assert code == 0
    assert out["input_ids"][:4] == INSTR_RESP_SAY
    assert "".join(out["tokens"]) == "### Instruction:\nWhat is the capital of France?\n\n### Response:\nParis<|endoftext|>"
    n_prompt = out["prompt_length"]
    assert out["labels"][:n_prompt] == [-100] * n_prompt
    assert out["labels"][n_prompt:] == out["input_ids"][n_prompt:] and out["labels"][-1] == 50256
    assert out["totals"] == {"tokens": len(out["input_ids"]), "supervised": len(out["input_ids"]) - n_prompt,
                             "masked": n_prompt}


def test_inspect_train_on_prompt_and_text_view(capsys, data_file):
    code, out = run_json(capsys, ["inspect", "--data", data_file, "--model", "random:gpt2-tiny", "--json",
                                  "--train-on-prompt"])
    assert out["labels"] == out["input_ids"]
    assert main(["inspect", "--data", data_file, "--model", "random:gpt2-tiny", "--color", "never"]) == 0
    text = capsys.readouterr().out
    assert "[[5<|endoftext|>]]" in text and "2 trained on" in text
    assert main(["inspect", "--data", data_file, "--model", "random:gpt2-tiny", "--color", "always"]) == 0
    assert "\033[32m" in capsys.readouterr().out


def test_inspect_says_when_training_skips_the_record(capsys, data_file):
    code, out = run_json(capsys, ["inspect", "--data", data_file, "--model", "random:gpt2-tiny", "--json",
                                  "--max-length", "10"])
    assert code == 0 and "training skips this record" in out["note"]


def test_inspect_index_out_of_range(capsys, data_file):
    assert main(["inspect", "--data", data_file, "--model", "random:gpt2-tiny", "--index", "10"]) == 2
    assert capsys.readouterr().err.strip() == \
        f"heed: error: {data_file}: --index 10 is out of range; the file has records 0 to 9"


def test_unknown_model_preset(capsys, data_file):
    assert main(["inspect", "--data", data_file, "--model", "random:gpt5"]) == 2
    assert "unknown preset; choose one of: random:gpt2-tiny" in capsys.readouterr().err


def test_data_check_counts(capsys, write_json):
    records = RECORDS + [RECORDS[0], dict(RECORDS[1], output="red blue green"),
                         {"instruction": "Add 2 and 3 .", "input": "", "output": "5"}]
    path = write_json(records)
    code, out = run_json(capsys, ["data", "check", "--data", path, "--model", "random:gpt2-tiny", "--json"])
    assert code == 0 and out["trainable"]
    assert out["records"] == 13 and out["exact_duplicates"] == [[0, 10]]
    assert out["conflicting_outputs"] == [[1, 11]]
    assert [0, 12, 1.0] in out["near_duplicates"]
    assert out["empty_inputs"] == 7
    assert out["split"] == {"train": 11, "test": 1, "val": 1}
    assert out["test_in_train"] == [11]


def test_data_check_not_trainable_exits_2(capsys, data_file):
    code = main(["data", "check", "--data", data_file, "--model", "random:gpt2-tiny", "--max-length", "12"])
    out = capsys.readouterr().out
    assert code == 2 and "not trainable:" in out and "no training example survives" in out
    code = main(["data", "check", "--data", data_file, "--model", "random:gpt2-tiny", "--max-length", "40",
                 "--overlong", "error"])
    assert code == 2 and "--overlong is 'error'" in capsys.readouterr().out


def test_data_check_shared_dataset(capsys, shared_data):
    code, out = run_json(capsys, ["data", "check", "--data", shared_data, "--model", "random:gpt2-tiny", "--json"])
    assert code == 0
    assert out["split"] == {"train": 935, "test": 110, "val": 55}
    assert out["lengths"]["max"] <= 1024 and out["lengths"]["min"] > 30
    assert out["encode"]["kept"] == 935 and 0.1 < out["supervised_share"] < 0.5


def test_console_script_runs_without_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[{]")
    proc = subprocess.run([sys.executable, "-m", "heed", "data", "check", "--data", str(bad), "--model",
                           "random:gpt2-tiny"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"heed: error: {bad}: line 1, column 3: invalid JSON: " \
                                  "Expecting property name enclosed in double quotes"
