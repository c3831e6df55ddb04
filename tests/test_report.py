import json
import re

import pytest

from heed.commands.cli import main
from tests.conftest import RECORDS
from tests.fake_servers import FakeServer, ollama_stream


def test_report_for_a_run_with_a_judge(tmp_path, capsys):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(RECORDS * 2))
    run = tmp_path / "run"
    assert main(["train", "--model", "random:gpt2-tiny", "--data", str(data), "--out", str(run), "--epochs", "1",
                 "--batch-size", "4", "--max-new-tokens", "4", "--precision", "fp32", "--no-sample"]) == 0
    with FakeServer([ollama_stream("42")]) as server:
        assert main(["judge", "--responses", str(run / "test-with-response.json"), "--url", server.url]) == 0
    assert (run / "audit.json").is_file() and (run / "test-judged.json").is_file()
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    for needle in ("<h2>Configuration</h2>", "<h2>Data</h2>", "<h2>Loss</h2>", "<h2>Metrics</h2>",
                   "Judge: ollama:llama3", "data:image/png;base64,", "id='q'", "filterRows", "ROUGE-L F1"):
        assert needle in page, needle
    assert page.count("<tr class=") == 2  # the two test records
    assert "supervised-token share" in page and "tokens per example" in page
    md = (run / "report.md").read_text()
    assert "judge ollama:llama3: mean 42.0" in md and md.count("\n| ") >= 3


def test_report_needs_a_run_dir(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no heed.json here" in capsys.readouterr().err


def minimal_run(tmp_path):
    """A run directory with just enough for a report: heed.json, a valid metrics line, audit and scores."""
    (tmp_path / "heed.json").write_text(json.dumps({"base_model": "random:gpt2-tiny", "template": "alpaca"}))
    row = {"step": 1, "epoch": 1, "tokens_seen": 9, "train_loss": 2.0}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "test-scores.json").write_text(json.dumps({"n": 1, "exact_match": 0.0, "rouge_l": 0.5}))
    (tmp_path / "test-with-response.json").write_text(json.dumps([{"instruction": "x", "output": "y",
                                                                     "model_response": "y"}]))
    return tmp_path


DAMAGED = [
    ("metrics.jsonl", "append", "{not json\n", r"metrics.jsonl: line 2: invalid JSON"),
    ("metrics.jsonl", "append", "[1]\n", r"metrics.jsonl: line 2: expected an object with step"),
    ("audit.json", "write", "[1]", r"audit.json: expected a JSON object"),
    ("audit.json", "write", '{"records": 3}', r"audit.json: missing 'over_max_length'"),
    ("test-scores.json", "write", "[1]", r"test-scores.json: expected a JSON object"),
    ("test-scores.json", "write", '{"rouge_l": "high"}', r"test-scores.json: 'rouge_l' is not a number"),
    ("test-scores.json", "write", '{"n": 1,', r"test-scores.json: line 1, column 9: invalid JSON"),
    ("test-with-response.json", "write", "[1]", r"test-with-response.json: record 0 is not an object"),
    ("test-judged.json", "write", "[1]", r"test-judged.json: expected a JSON object"),
    ("test-judged.json", "write", '{"summary": {"mean": 50}}', r"test-judged.json: 'summary' has a mean but no ci95"),
    ("test-judged.json", "write", '{"records": [{"judge_score": "high"}]}', r"record 0: 'judge_score' is not a number"),
    ("heed.json", "write", "[1]", r"heed.json: expected a JSON object"),
    ("heed.json", "write", '{"train_seconds": "long"}', r"heed.json: 'train_seconds' is not a number"),
]


def test_a_minimal_run_reports(tmp_path, capsys):
    assert main(["report", str(minimal_run(tmp_path))]) == 0


@pytest.mark.parametrize("name, how, text, message", DAMAGED, ids=[f"{d[0]}:{d[2][:12]}" for d in DAMAGED])
def test_a_damaged_run_file_is_one_line_naming_it(tmp_path, capsys, name, how, text, message):
    run = minimal_run(tmp_path)
    path = run / name
    path.write_text((path.read_text() if how == "append" else "") + text)
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(message, err) and str(path) in err, err
    assert ("heed judge again" if "judged" in name else "train again") in err  # and how to fix it
    assert not (run / "report.html").exists() and not (run / "report.md").exists()
