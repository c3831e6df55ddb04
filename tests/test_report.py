import json

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
