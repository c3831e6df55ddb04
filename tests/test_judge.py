import json
import socket

import pytest

from heed.commands.cli import main
from heed.data.templates import TEMPLATES
from heed.errors import HeedError
from heed.evaluate.judge import Judge, JudgeSpec
from heed.evaluate.judging import bootstrap_ci, compare_records, judge_records, parse_score, parse_verdict
from tests.fake_servers import (FakeServer, by_content, error_in_stream, ollama_single, ollama_stream, openai_reply,
                                slow, status)

RECORDS = [
    {"instruction": "Name a primary colour.", "input": "", "output": "Red", "model_response": "Blue"},
    {"instruction": "Add 2 and 3.", "input": "", "output": "5", "model_response": "5"},
    {"instruction": "Say hi.", "input": "", "output": "Hi", "model_response": "  "},
]


def judge(url, backend="ollama", **kw):
    spec = JudgeSpec.parse(f"{backend}:llama3", url, **({"backoff": 0.01} | kw))
    return Judge(spec)


@pytest.mark.parametrize("reply, value", [
    ("85", 85), (" 85.\n", 85), ("Score: 70", 70), ("score=0", 0), ("100/100", 100), ("42 / 100", 42),
    ("101", None), ("I'd say 85", None), ("85, maybe 90", None), ("", None), ("-5", None),
])
def test_parse_score(reply, value):
    assert parse_score(reply) == value


@pytest.mark.parametrize("reply, value", [("A", "A"), ("b.", "B"), ("Tie", "tie"), ("[A]", "A"),
                                          ("Verdict: B", "B"), ("A or B", None), ("neither", None)])
def test_parse_verdict(reply, value):
    assert parse_verdict(reply) == value


def test_ollama_stream_request_format_and_scores():
    with FakeServer([ollama_stream("85")]) as server:
        judged, summary = judge_records(RECORDS, TEMPLATES["alpaca"], judge(server.url).ask)
    first = server.requests[0]
    assert first["_path"] == "/api/chat" and first["model"] == "llama3"
    assert first["options"] == {"seed": 123, "temperature": 0, "num_ctx": 2048}
    prompt = first["messages"][0]["content"]
    assert "### Instruction:\nName a primary colour." in prompt and "Red" in prompt and "Blue" in prompt
    assert "0 to 100" in prompt and "integer only" in prompt
    assert len(server.requests) == 2, "the empty response is scored 0 without asking"
    assert [r["judge_score"] for r in judged] == [85, 85, 0]
    assert summary.scored == 3 and summary.empty_responses == 1 and summary.median == 85


def test_non_streamed_reply():
    with FakeServer([ollama_single("Score: 60")]) as server:
        assert judge(server.url).ask("x") == "Score: 60"


def test_unparseable_reply_is_re_asked_once_then_counted():
    with FakeServer([ollama_stream("Pretty good!"), ollama_stream("75"),
                     ollama_stream("great"), ollama_stream("still not a number")]) as server:
        judged, summary = judge_records(RECORDS[:2], TEMPLATES["alpaca"], judge(server.url).ask)
    assert judged[0]["judge_score"] == 75 and judged[0]["judge_replies"] == ["Pretty good!", "75"]
    assert "could not be read" in server.requests[1]["messages"][0]["content"]
    assert judged[1]["judge_score"] is None and summary.failed == [1] and summary.scored == 1
    assert "1 unparseable after a second ask: records 1" in summary.render("ollama:llama3")


def test_error_line_inside_a_200_stream_is_retried_then_reported():
    with FakeServer([error_in_stream("llama runner process has terminated"), ollama_stream("90")]) as server:
        assert judge(server.url).ask("x") == "90"
    with FakeServer([error_in_stream("llama runner process has terminated")]) as server:
        with pytest.raises(HeedError, match="gave up after 2 tries: Ollama error: llama runner"):
            judge(server.url, retries=1).ask("x")


def test_model_not_pulled():
    with FakeServer([status(404, {"error": "model 'llama3' not found, try pulling it first"})]) as server:
        with pytest.raises(HeedError, match=r"has no model 'llama3': run `ollama pull llama3`"):
            judge(server.url).ask("x")
    with FakeServer([error_in_stream("model 'llama3' not found")]) as server:
        with pytest.raises(HeedError, match="ollama pull llama3"):
            judge(server.url).ask("x")


def test_connection_refused_says_to_start_ollama():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(HeedError, match=r"cannot reach Ollama at .*: is it running\? Start it with `ollama serve`"):
        judge(f"http://127.0.0.1:{port}").ask("x")


def test_5xx_is_retried_with_bounded_backoff():
    with FakeServer([status(503, {"error": "busy"}), status(500, {"error": "oops"}), ollama_stream("66")]) as server:
        assert judge(server.url, retries=3).ask("x") == "66"
        assert len(server.requests) == 3
    with FakeServer([status(500, {"error": "oops"})]) as server:
        with pytest.raises(HeedError, match=r"gave up after 3 tries: HTTP 500: oops"):
            judge(server.url, retries=2).ask("x")
        assert len(server.requests) == 3


def test_timeout_is_retried():
    with FakeServer([slow(1.0, ollama_stream("10")), ollama_stream("20")]) as server:
        assert judge(server.url, timeout=0.3, retries=1).ask("x") == "20"


def test_openai_compatible_request_and_key(monkeypatch):
    monkeypatch.setenv("HEED_JUDGE_API_KEY", "sekrit")
    with FakeServer([openai_reply("77")]) as server:
        assert judge(server.url + "/v1", backend="openai").ask("hello") == "77"
    request = server.requests[0]
    assert request["_path"] == "/v1/chat/completions" and request["temperature"] == 0
    assert request["messages"] == [{"role": "user", "content": "hello"}]
    assert server.headers[0]["Authorization"] == "Bearer sekrit"
    with FakeServer([status(401, {"error": {"message": "bad key"}})]) as server:
        with pytest.raises(HeedError, match=r"HTTP 401: bad key.*HEED_JUDGE_API_KEY"):
            judge(server.url + "/v1", backend="openai").ask("x")
    with pytest.raises(HeedError, match="needs --url"):
        JudgeSpec.parse("openai:m", None)


def test_concurrency_keeps_order():
    rule = by_content(lambda prompt: ollama_stream("90" if "Add 2 and 3" in prompt else "10"))
    with FakeServer([slow(0.05, rule)]) as server:
        judged, _ = judge_records(RECORDS[:2] * 4, TEMPLATES["alpaca"], judge(server.url).ask, concurrency=4)
    assert [r["judge_score"] for r in judged] == [10, 90] * 4


def test_bootstrap_ci_brackets_the_mean():
    values = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    lo, hi = bootstrap_ci(values)
    assert lo < 55 < hi and hi - lo < 40
    assert bootstrap_ci([50] * 5) == (50, 50)


def test_compare_asks_both_orders_and_counts_inconsistency():
    a = [dict(r, model_response=f"A{i}") for i, r in enumerate(RECORDS)]
    b = [dict(r, model_response=f"B{i}") for i, r in enumerate(RECORDS)]

    def rule(prompt):
        first = prompt.split("Answer A:\n")[1].split("\n")[0]
        if first.endswith("0"):  # record 0: the judge always prefers whatever is shown first
            return ollama_stream("A")
        if first.endswith("1"):  # record 1: A's answer wins in both orders
            return ollama_stream("A" if first.startswith("A") else "B")
        return ollama_stream("tie")

    with FakeServer([by_content(rule)]) as server:
        rows, summary = compare_records(a, b, TEMPLATES["alpaca"], judge(server.url).ask)
    assert len(server.requests) == 6
    assert [r["outcome_for_a"] for r in rows] == [0.5, 1.0, 0.5]
    assert (summary.wins, summary.ties, summary.losses, summary.inconsistent) == (1, 2, 0, 1)
    assert summary.win_rate == pytest.approx(2 / 3)


def test_cli_judge_writes_outputs(tmp_path, capsys):
    path = tmp_path / "test-with-response.json"
    path.write_text(json.dumps(RECORDS))
    with FakeServer([ollama_stream("80")]) as server:
        code = main(["judge", "--responses", str(path), "--judge", "ollama:llama3", "--url", server.url])
    assert code == 0
    out = json.loads((tmp_path / "test-judged.json").read_text())
    assert out["summary"]["scored"] == 3 and out["summary"]["mean"] == pytest.approx(160 / 3)
    assert [r["judge_score"] for r in out["records"]] == [80, 80, 0]
    assert (tmp_path / "test-judged.png").read_bytes()[:4] == b"\x89PNG"
    assert "3/3 scored, mean 53.3" in capsys.readouterr().out


def test_cli_judge_errors_are_one_line(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"instruction": "x", "output": "y"}]))
    assert main(["judge", "--responses", str(path), "--url", "http://127.0.0.1:9"]) == 2
    assert capsys.readouterr().err.strip() == f"heed: error: {path}: record 0: 'model_response' is missing " \
                                              "or not a string (make it with heed generate)"
    path.write_text(json.dumps(RECORDS))
    assert main(["judge", "--responses", str(path), "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ollama serve" in err and not (tmp_path / "r-judged.json").exists()
