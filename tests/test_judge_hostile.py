"""The judge client against broken and hostile servers: malformed replies, trickling streams, run
deadlines, failures part-way through a run (kept and resumed), bad flags and credentials in --url.

Every test is bounded: short timeouts, servers that stop on their own, and an alarm per test."""

import base64
import json
import signal
import time

import pytest

from heed.commands.cli import main
from heed.data.templates import TEMPLATES
from heed.errors import HeedError
from heed.evaluate import judge as judge_module
from heed.evaluate.judge import Judge, JudgeSpec, mask_url
from heed.evaluate.judging import judge_records
from tests.fake_servers import FakeServer, by_content, ollama_stream, openai_reply, raw, slow, status, trickle

RECORDS = [{"instruction": f"Task {i}.", "input": "", "output": str(i), "model_response": f"answer {i}"}
           for i in range(4)]


@pytest.fixture(autouse=True)
def no_histogram(monkeypatch):
    import heed.evaluate.plot

    monkeypatch.setattr(heed.evaluate.plot, "plot_histogram", lambda *a, **k: None)  # time the judge, not matplotlib


@pytest.fixture(autouse=True)
def time_limit():
    """Fail a test that runs past 15 s instead of letting it hang (e.g. on the old client)."""
    def expire(*_):
        raise TimeoutError("test ran past its 15 s limit")
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(15)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def judge(url, backend="ollama", **kw):
    return Judge(JudgeSpec.parse(f"{backend}:llama3", url, **({"backoff": 0.01, "timeout": 2.0} | kw)))


def responses(tmp_path, records=RECORDS, name="test-with-response.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def run(*argv):
    return main(["judge", *map(str, argv)])


@pytest.mark.parametrize("body", [
    "[1, 2]",  # a JSON list
    '{"message": null}',
    '{"message": {"role": "assistant", "content": 5}}',  # an integer content
    b'{"message": {"role": "assistant", "content": "\xff\xfe"}, "done": true}',  # invalid UTF-8
    "1\n2\n",  # NDJSON lines that are scalars
    '{"message": {"content": "8"}}\n"5"\n',  # a scalar line after a good one
    '"85"',
    "[" * 100_000,  # nesting deep enough to overflow a recursive parser
    "",  # a 200 with no body
    "<html>proxy error</html>",
])
def test_malformed_ollama_reply_is_a_failed_ask(body):
    with FakeServer([raw(body)]) as server:
        with pytest.raises(HeedError, match=r"gave up after 2 tries: reply"):
            judge(server.url, retries=1).ask("x")
    assert len(server.requests) == 2, "a malformed reply is retried"


@pytest.mark.parametrize("body", [
    "[1]",
    '{"choices": [{"message": {"content": 5}}]}',
    '{"choices": "abc"}',
    b'{"choices": [{"message": {"content": "\xff"}}]}',
    "not json",
])
def test_malformed_openai_reply_is_a_failed_ask(body):
    with FakeServer([raw(body)]) as server:
        with pytest.raises(HeedError, match=r"gave up after 2 tries: reply"):
            judge(server.url + "/v1", backend="openai", retries=1).ask("x")
    assert len(server.requests) == 2


def test_error_reply_with_a_hostile_body_is_retried():
    with FakeServer([raw("[1]", code=500), raw('{"error": ["a", "b"]}', code=503), ollama_stream("5")]) as server:
        assert judge(server.url, retries=2).ask("x") == "5"
    with FakeServer([raw("line one\nline two", code=500)]) as server:
        with pytest.raises(HeedError, match=r"HTTP 500: line one line two$"):
            judge(server.url, retries=0).ask("x")


def test_oversized_reply_is_a_failed_ask(monkeypatch):
    monkeypatch.setattr(judge_module, "MAX_REPLY_BYTES", 1000)
    with FakeServer([raw('{"message": {"content": "' + "9" * 5000 + '"}}')]) as server:
        with pytest.raises(HeedError, match="reply longer than 1,000 bytes"):
            judge(server.url, retries=0).ask("x")


def test_malformed_reply_in_a_run_is_counted_not_a_crash():
    with FakeServer([ollama_stream("80"), raw('{"message": null}')]) as server:
        judged, summary = judge_records(RECORDS, TEMPLATES["alpaca"], judge(server.url, retries=1).ask)
    assert [r["judge_score"] for r in judged] == [80, None, None, None]
    assert summary.scored == 1 and summary.unjudged == [1, 2, 3] and summary.failed == []
    assert "message.content" in judged[1]["judge_error"] and "gave up after 2 tries" in summary.stopped
    assert len(server.requests) == 3, "the run stops at the first record the judge fails for good"


def test_timeout_bounds_a_whole_trickling_stream():
    # One empty NDJSON line every 0.2 s for 6 s: each read succeeds, so only a whole-request bound ends it.
    with FakeServer([trickle("\n", 0.2, 30)]) as server:
        start = time.monotonic()
        with pytest.raises(HeedError, match=r"gave up after 1 tries: no complete reply within 1 s"):
            judge(server.url, timeout=1.0, retries=0).ask("x")
        assert time.monotonic() - start < 3.0  # the old client waited for all 6 s


def test_timeout_bounds_a_stream_of_real_chunks():
    piece = json.dumps({"message": {"role": "assistant", "content": "1"}, "done": False}) + "\n"
    with FakeServer([trickle(piece, 0.1, 60), ollama_stream("42")]) as server:
        start = time.monotonic()
        assert judge(server.url, timeout=0.8, retries=1).ask("x") == "42"
        assert time.monotonic() - start < 3.0


def test_deadline_bounds_the_run_and_keeps_what_was_judged(tmp_path, capsys):
    path = responses(tmp_path)
    rule = by_content(lambda prompt: ollama_stream("80") if "Task 0." in prompt else trickle("\n", 0.1, 80))
    with FakeServer([rule]) as server:
        start = time.monotonic()
        code = run("--responses", path, "--url", server.url, "--timeout", 30, "--deadline", 1, "--concurrency", 2)
        elapsed = time.monotonic() - start
    assert code == 2 and elapsed < 3.0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the run's --deadline of 1 s ran out" in err and "1 of 4 records judged" in err
    out = json.loads((tmp_path / "test-judged.json").read_text())
    assert out["complete"] is False and [r["judge_score"] for r in out["records"]] == [80, None, None, None]
    assert out["summary"]["unjudged"] == [1, 2, 3]


def test_deadline_cuts_the_backoff_and_names_the_last_error():
    with FakeServer([status(500, {"error": "overloaded"})]) as server:
        start = time.monotonic()
        with pytest.raises(HeedError, match=r"--deadline of 0.5 s ran out \(last try: HTTP 500: overloaded\)"):
            judge(server.url, retries=9, backoff=0.2, deadline=0.5).ask("x")
        assert time.monotonic() - start < 1.5  # the backoff alone would sleep 102 s


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_server_that_fails_for_good_is_not_asked_on(tmp_path, capsys, concurrency):
    # Before: every queued record was still asked (and retried) after the first gave up.
    records = RECORDS * 3
    with FakeServer([slow(0.05, status(500, {"error": "oops"}))]) as server:
        code = run("--responses", responses(tmp_path, records), "--url", server.url, "--retries", 0,
                   "--concurrency", concurrency)
    assert code == 2 and len(server.requests) <= concurrency
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gave up after 1 tries: HTTP 500: oops" in err
    assert f"no record was judged; {tmp_path / 'test-judged.json'} was not written" in err
    assert not (tmp_path / "test-judged.json").exists(), "nothing judged: no file"


def test_a_run_that_judges_nothing_leaves_an_earlier_file_alone(tmp_path, capsys):
    path, out = responses(tmp_path), tmp_path / "test-judged.json"
    with FakeServer([ollama_stream("80")]) as server:
        assert run("--responses", path, "--url", server.url) == 0
    earlier = out.read_text()
    assert json.loads(earlier)["complete"] is True
    capsys.readouterr()
    with FakeServer([status(500, {"error": "oops"})]) as server:
        assert run("--responses", path, "--url", server.url, "--retries", 0, "--fresh") == 2
    assert f"no record was judged; {out} was not written" in capsys.readouterr().err
    assert out.read_text() == earlier, "a run that judged nothing keeps the earlier scores"


@pytest.mark.parametrize("spec", ["ollama:", "ollama: ", "openai:"])
def test_a_judge_without_a_model_name_is_refused(tmp_path, capsys, spec):
    with FakeServer([ollama_stream("80")]) as server:
        assert run("--responses", responses(tmp_path), "--url", server.url, "--judge", spec) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs a model name" in err and server.requests == []


def test_failure_part_way_keeps_the_scores_and_a_rerun_resumes(tmp_path, capsys):
    path = responses(tmp_path)
    out = tmp_path / "test-judged.json"
    with FakeServer([ollama_stream("80"), ollama_stream("70"), status(500, {"error": "oops"})]) as server:
        assert run("--responses", path, "--url", server.url, "--retries", 0) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("heed: error: judge ollama:llama3 at ")
    assert f"2 of 4 records judged and saved in {out}; run the same command again to judge the other 2" in captured.err
    assert "2 not judged (the run stopped): records 2, 3" in captured.out
    saved = json.loads(out.read_text())
    assert saved["complete"] is False and saved["summary"]["scored"] == 2
    assert [r["judge_score"] for r in saved["records"]] == [80, 70, None, None]
    assert "HTTP 500: oops" in saved["records"][2]["judge_error"] and "judge_error" not in saved["records"][0]

    with FakeServer([ollama_stream("60")]) as server:
        assert run("--responses", path, "--url", server.url) == 0
    assert [r["messages"][0]["content"].count("Task 2.") + r["messages"][0]["content"].count("Task 3.")
            for r in server.requests] == [1, 1], "only the records not judged are asked"
    assert "resuming" in capsys.readouterr().err
    saved = json.loads(out.read_text())
    assert saved["complete"] is True and [r["judge_score"] for r in saved["records"]] == [80, 70, 60, 60]
    assert saved["summary"]["scored"] == 4 and saved["summary"]["mean"] == pytest.approx(67.5)
    assert all("judge_error" not in r for r in saved["records"])

    with FakeServer([ollama_stream("50")]) as server:  # a finished run is judged afresh
        assert run("--responses", path, "--url", server.url) == 0
    assert len(server.requests) == 4


def _unfinished(tmp_path):
    path = responses(tmp_path)
    with FakeServer([ollama_stream("80"), status(500, {"error": "oops"})]) as server:
        assert run("--responses", path, "--url", server.url, "--retries", 0) == 2
    return path


@pytest.mark.parametrize("change", ["responses", "model", "template", "fresh"])
def test_resume_only_from_the_same_judge_and_responses(tmp_path, capsys, change):
    path = _unfinished(tmp_path)
    extra = []
    if change == "responses":
        path.write_text(json.dumps([dict(RECORDS[0], model_response="other")] + RECORDS[1:]))
    elif change == "model":
        extra = ["--judge", "ollama:qwen"]
    elif change == "template":
        extra = ["--template", "instruction-response"]
    else:
        extra = ["--fresh"]
    capsys.readouterr()
    with FakeServer([ollama_stream("60")]) as server:
        assert run("--responses", path, "--url", server.url, *extra) == 0
    assert len(server.requests) == 4, "every record judged again"
    assert ("unfinished run of another judge" in capsys.readouterr().err) == (change != "fresh")


def test_compare_stops_keeps_and_resumes(tmp_path, capsys):
    a = responses(tmp_path, [dict(r, model_response=f"A{i}") for i, r in enumerate(RECORDS)], "a.json")
    b = responses(tmp_path, [dict(r, model_response=f"B{i}") for i, r in enumerate(RECORDS)], "b.json")
    out = tmp_path / "a-vs-b.json"
    favour_a = by_content(lambda p: ollama_stream("A" if p.split("Answer A:\n")[1].startswith("A") else "B"))
    # Pair 0 asks twice; pair 1's first ask fails for good.
    with FakeServer([favour_a, favour_a, status(500, {"error": "oops"})]) as server:
        assert main(["compare", str(a), str(b), "--url", server.url, "--retries", "0"]) == 2
    assert "1 of 4 pairs judged and saved" in capsys.readouterr().err
    saved = json.loads(out.read_text())
    assert saved["complete"] is False and [r["outcome_for_a"] for r in saved["records"]] == [1.0, None, None, None]
    assert saved["summary"]["unjudged"] == [1, 2, 3]

    with FakeServer([favour_a]) as server:
        assert main(["compare", str(a), str(b), "--url", server.url]) == 0
    assert len(server.requests) == 6, "three pairs, two orders each"
    saved = json.loads(out.read_text())
    assert saved["complete"] is True and saved["summary"]["wins"] == 4 and saved["summary"]["inconsistent"] == 0


@pytest.mark.parametrize("flags, named", [
    (["--retries", "-1"], "--retries"),
    (["--timeout", "-1"], "--timeout"),
    (["--timeout", "0"], "--timeout"),
    (["--timeout", "nan"], "--timeout"),
    (["--deadline", "0"], "--deadline"),
    (["--concurrency", "0"], "--concurrency"),
    (["--url", "http://[::1"], "--url"),
    (["--url", "ftp://host"], "--url"),
    (["--url", "http://host:99999"], "--url"),
])
def test_bad_flags_are_refused_before_any_request(tmp_path, capsys, flags, named):
    path = responses(tmp_path)
    with FakeServer([ollama_stream("80")]) as server:
        code = run("--responses", path, "--url", server.url, *flags)
        compare_code = main(["compare", str(path), str(path), "--url", server.url, *flags])
    assert code == compare_code == 2 and server.requests == []
    for line in capsys.readouterr().err.splitlines():
        assert line.startswith(f"heed: error: {named}"), line


def test_credentials_in_url_are_used_and_never_shown(tmp_path, capsys):
    path = responses(tmp_path)
    with FakeServer([ollama_stream("80")]) as server:
        url = server.url.replace("http://", "http://alice:s3cr%3At@")
        assert run("--responses", path, "--url", url) == 0
    assert server.headers[0]["Authorization"] == "Basic " + base64.b64encode(b"alice:s3cr:t").decode()
    saved = (tmp_path / "test-judged.json").read_text()
    assert "s3cr" not in saved and json.loads(saved)["url"] == server.url.replace("http://", "http://alice:***@")

    capsys.readouterr()
    with FakeServer([status(500, {"error": "down"})]) as server:
        url = server.url.replace("http://", "http://alice:s3cr%3At@")
        assert run("--responses", path, "--url", url, "--retries", 0) == 2
    err = capsys.readouterr().err
    assert "alice:***@127.0.0.1" in err and "s3cr" not in err
    assert run("--responses", path, "--url", "http://alice:s3cret@[::1") == 2
    err = capsys.readouterr().err
    assert "alice:***@[::1" in err and "s3cret" not in err
    assert "s3cr" not in repr(JudgeSpec.parse("ollama:m", url))


def test_url_credentials_win_over_the_api_key(monkeypatch):
    monkeypatch.setenv("HEED_JUDGE_API_KEY", "env-key")
    with FakeServer([openai_reply("7")]) as server:
        assert judge(server.url.replace("http://", "http://bob:pw@") + "/v1", backend="openai").ask("x") == "7"
    assert server.headers[0]["Authorization"] == "Basic " + base64.b64encode(b"bob:pw").decode()


@pytest.mark.parametrize("url, shown", [
    ("http://user:pass@host:1/v1", "http://user:***@host:1/v1"),
    ("https://token@host", "https://***@host"),
    ("http://u:p/ss@host", "http://u:***@host"),  # an unescaped / in the password
    ("http://host/v1?a=b@c", "http://host/v1?a=b@c"),
    ("http://u:p@[::1", "http://u:***@[::1"),
    ("http://localhost:11434", "http://localhost:11434"),
])
def test_mask_url(url, shown):
    assert mask_url(url) == shown


def test_redirect_names_the_new_address():
    def moved(body):
        return 301, "text/plain", ""
    with FakeServer([moved]) as server:
        with pytest.raises(HeedError, match=r"redirects \(HTTP 301\)"):
            judge(server.url).ask("x")
