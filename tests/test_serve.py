"""heed serve: every endpoint, streamed and not, against a tiny random GPT-2 saved with a template; greedy
answers equal heed generate's; oversized and malformed requests get 4xx JSON; heed's own judge client
talks to it; concurrent requests are batched."""

from __future__ import annotations

import http.client
import json
import threading

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from heed.commands.cli import main  # noqa: E402
from heed.config import GenerateConfig, ServeConfig  # noqa: E402

PROMPTS = ["Add 2 and 3.", "Name a colour.", "Reverse the words: red green blue"]
LIMITS = dict(max_new_tokens=8, max_body_bytes=2000, max_messages=4, max_batch=4, batch_wait_ms=20.0, timeout=60.0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from heed.model import gpt2_tokenizer, load_model, save_model

    out = tmp_path_factory.mktemp("served") / "tiny"
    save_model(load_model("random:gpt2-tiny"), gpt2_tokenizer(), out, {"template": "instruction-response"})
    return out


@pytest.fixture(scope="module")
def server(model_dir):
    from heed.serve import Server, bind, make_service

    service = make_service(str(model_dir), ServeConfig(**LIMITS), GenerateConfig(), device="cpu")
    running = Server(service, bind("127.0.0.1", 0)).start()
    yield running
    running.stop()


def request(server, method: str, path: str, body: object = None, *, raw: bytes | None = None,
            headers: dict | None = None) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"} | (headers or {}))
    reply = conn.getresponse()
    text = reply.read().decode()
    conn.close()
    return reply.status, reply.getheader("Content-Type") or "", text


def heed_generate(model_dir, prompt: str, capsys, n: int = 8) -> str:
    capsys.readouterr()
    assert main(["generate", "--model", str(model_dir), "--instruction", prompt, "--max-new-tokens", str(n)]) == 0
    return capsys.readouterr().out[:-1]  # print's newline


def heed_generate_conversations(model_dir, conversations: list, tmp_path, capsys, n: int = 8) -> list[str]:
    """heed generate's answers to message records that end with a user turn."""
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations))
    assert main(["generate", "--model", str(model_dir), "--data", str(data), "--max-new-tokens", str(n)]) == 0
    capsys.readouterr()
    return [r["model_response"] for r in json.loads((tmp_path / "chats-with-response.json").read_text())]


CHATS = [[{"role": "user", "content": PROMPTS[0]}],
         [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": PROMPTS[1]}],
         [{"role": "user", "content": PROMPTS[1]}, {"role": "assistant", "content": "Red."},
          {"role": "user", "content": PROMPTS[2]}]]


def test_chat_endpoints_answer_as_heed_generate_does(server, model_dir, tmp_path, capsys):
    # the whole conversation reaches the model, system message and earlier turns too, as heed generate
    # writes a message record with the model's template
    assert heed_generate(model_dir, PROMPTS[0], capsys) == heed_generate_conversations(model_dir, CHATS[:1], tmp_path,
                                                                                       capsys)[0]
    answers = heed_generate_conversations(model_dir, CHATS, tmp_path, capsys)
    assert len(set(answers[1:])) == 2 and answers[1] != heed_generate(model_dir, PROMPTS[1], capsys)
    for messages, expected in zip(CHATS, answers):
        code, _, text = request(server, "POST", "/v1/chat/completions", {"model": "x", "messages": messages})
        assert code == 200
        reply = json.loads(text)
        assert reply["object"] == "chat.completion"
        assert reply["choices"][0]["message"] == {"role": "assistant", "content": expected}
        assert reply["choices"][0]["finish_reason"] in ("stop", "length")
        assert reply["usage"]["completion_tokens"] <= LIMITS["max_new_tokens"]
        code, _, text = request(server, "POST", "/api/chat", {"model": "x", "messages": messages, "stream": False})
        assert code == 200 and json.loads(text)["message"]["content"] == expected and json.loads(text)["done"]


@pytest.mark.parametrize("messages, says", [
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "the last message must be a user"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "messages[1]"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "messages[1]"),
    ([{"role": "tool", "content": "a"}], "expected system, user or assistant"),
    ([{"role": "user", "content": "  "}], "is empty"),
])
def test_chat_turns_out_of_order_are_400(server, messages, says):
    for path in ("/v1/chat/completions", "/api/chat"):
        code, _, text = request(server, "POST", path, {"model": "x", "messages": messages, "stream": False})
        body = json.loads(text)
        message = body["error"]["message"] if path.startswith("/v1") else body["error"]
        assert code == 400 and says in message, (path, message)


def test_generate_endpoint_applies_the_template_unless_raw(server, model_dir, capsys):
    expected = heed_generate(model_dir, PROMPTS[0], capsys)
    code, _, text = request(server, "POST", "/api/generate", {"model": "x", "prompt": PROMPTS[0], "stream": False})
    assert code == 200 and json.loads(text)["response"] == expected
    # raw: the prompt text goes to the model as is, as /v1/completions does
    raw = {"model": "x", "prompt": "### Instruction:\nAdd 2 and 3.\n\n### Response:\n", "max_tokens": 8}
    code, _, text = request(server, "POST", "/v1/completions", raw)
    completion = json.loads(text)["choices"][0]["text"]
    code2, _, text2 = request(server, "POST", "/api/generate", {"model": "x", "prompt": raw["prompt"], "raw": True,
                                                                  "stream": False, "options": {"num_predict": 8}})
    assert code == code2 == 200 and json.loads(text2)["response"] == completion
    assert completion.strip() == expected  # the same prompt heed's template writes


def test_streams_carry_the_same_text(server):
    messages = [{"role": "user", "content": PROMPTS[1]}]
    whole = json.loads(request(server, "POST", "/v1/chat/completions", {"messages": messages})[2])
    code, kind, text = request(server, "POST", "/v1/chat/completions", {"messages": messages, "stream": True})
    assert code == 200 and kind.startswith("text/event-stream")
    events = [e[len("data: "):] for e in text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == \
        whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]

    code, kind, text = request(server, "POST", "/v1/completions", {"prompt": "Hello", "stream": True})
    events = [e[len("data: "):] for e in text.split("\n\n") if e]
    plain = json.loads(request(server, "POST", "/v1/completions", {"prompt": "Hello"})[2])
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == plain["choices"][0]["text"]

    for path, body, key in (("/api/chat", {"messages": messages}, "message"),
                            ("/api/generate", {"prompt": PROMPTS[1]}, "response")):
        code, kind, text = request(server, "POST", path, body)  # Ollama streams unless told not to
        lines = [json.loads(line) for line in text.splitlines()]
        assert code == 200 and kind.startswith("application/x-ndjson")
        assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
        streamed = "".join(line[key]["content"] if key == "message" else line[key] for line in lines)
        whole = json.loads(request(server, "POST", path, body | {"stream": False})[2])
        assert streamed == (whole[key]["content"] if key == "message" else whole[key])


def test_bodies_are_read_as_json_whatever_their_content_type(server):
    # curl -d sends application/x-www-form-urlencoded, as in Ollama's own examples; Ollama reads it as JSON
    for kind in ("application/x-www-form-urlencoded", "text/plain; charset=utf-8", "application/octet-stream"):
        code, _, text = request(server, "POST", "/api/generate", {"model": "x", "prompt": "hi", "stream": False},
                                headers={"Content-Type": kind})
        assert code == 200 and json.loads(text)["done"], (kind, text)
        code, _, text = request(server, "POST", "/v1/completions", {"prompt": "hi"}, headers={"Content-Type": kind})
        assert code == 200 and json.loads(text)["choices"][0]["finish_reason"], (kind, text)
    code, kind, text = request(server, "POST", "/api/generate", {"model": "x", "prompt": "hi"},  # streamed
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert code == 200 and kind.startswith("application/x-ndjson") and json.loads(text.splitlines()[-1])["done"]
    code, kind, text = request(server, "POST", "/api/generate", raw=b"model=x&prompt=hi",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert code == 400 and kind.startswith("application/json")
    assert json.loads(text)["error"] == "the request body is not valid JSON"


def test_model_lists(server):
    code, _, text = request(server, "GET", "/v1/models")
    assert code == 200 and [m["id"] for m in json.loads(text)["data"]] == ["tiny"]
    code, _, text = request(server, "GET", "/api/tags")
    assert code == 200 and [m["name"] for m in json.loads(text)["models"]] == ["tiny"]


@pytest.mark.parametrize("path,body,raw,status,words", [
    ("/v1/chat/completions", None, b"{not json", 400, "not valid JSON"),
    ("/v1/chat/completions", None, b"[1, 2]", 400, "JSON object"),
    ("/v1/chat/completions", {"messages": []}, None, 400, "non-empty list"),
    ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "hi"}]}, None, 400, "messages[0]: expected a user turn"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, None, 400, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}] * 5}, None, 413, "at most 4"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "max_tokens": 9}, None, 400,
     "at most 8 new tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "max_tokens": 0}, None, 400,
     "at least 1"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "temperature": "hot"}, None, 400,
     "'temperature' must be a number"),
    ("/v1/completions", {"prompt": "x" * 3000}, None, 413, "larger than 2000 bytes"),
    ("/v1/completions", {"prompt": 7}, None, 400, "'prompt' must be a string"),
    ("/v1/completions", {"prompt": "a", "stream": "yes"}, None, 400, "'stream' must be true or false"),
    ("/api/chat", {"messages": [{"role": "user", "content": "a"}], "options": {"num_predict": 100}}, None, 400,
     "options.num_predict"),
    ("/api/generate", {"prompt": "a", "options": [1]}, None, 400, "'options' must be an object"),
    ("/api/generate", {"prompt": None}, None, 400, "'prompt' must be a string"),
])
def test_bad_requests_get_one_line_json_errors(server, path, body, raw, status, words):
    code, kind, text = request(server, "POST", path, body, raw=raw)
    assert code == status and kind.startswith("application/json")
    error = json.loads(text)["error"]
    message = error if path.startswith("/api/") else error["message"]
    assert words in message and "\n" not in message


def test_prompt_longer_than_the_limit_is_refused(model_dir):
    from heed.serve import Server, bind, make_service

    service = make_service(str(model_dir), ServeConfig(**LIMITS | {"max_prompt_tokens": 10}), device="cpu")
    running = Server(service, bind("127.0.0.1", 0)).start()
    try:
        code, _, text = request(running, "POST", "/v1/completions", {"prompt": "word " * 20})
        assert code == 413 and "at most 10" in json.loads(text)["error"]["message"]
        assert request(running, "POST", "/v1/completions", {"prompt": "word"})[0] == 200
    finally:
        running.stop()


def test_unknown_paths_and_methods(server):
    code, _, text = request(server, "GET", "/v1/nothing")
    assert code == 404 and json.loads(text)["error"]["message"] == "no such endpoint"
    code, _, text = request(server, "GET", "/api/chat")
    assert code == 405 and "POST" in json.loads(text)["error"]


def test_concurrent_requests_are_batched_and_answered_as_alone(server):
    prompts = [f"Count to {i}." for i in range(8)]
    before = server.service.batcher.batches
    single = {}
    for p in prompts:
        single[p] = json.loads(request(server, "POST", "/api/generate", {"prompt": p, "stream": False})[2])["response"]
    assert server.service.batcher.batches - before == len(prompts)  # one at a time: one batch each
    answers: dict[str, str] = {}

    def ask(p: str) -> None:
        answers[p] = json.loads(request(server, "POST", "/api/generate", {"prompt": p, "stream": False})[2])["response"]

    before = server.service.batcher.batches
    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert answers == single  # batched rows answer exactly as alone
    assert server.service.batcher.batches - before < len(prompts)  # some were decoded together
    assert server.service.batcher.largest_batch > 1


@pytest.fixture(scope="module")
def judge_server(model_dir):
    from heed.serve import Server, bind, make_service

    # heed judge asks an OpenAI server for max_tokens 32 (and Ollama for no limit)
    service = make_service(str(model_dir), ServeConfig(**LIMITS | {"max_new_tokens": 32}), device="cpu")
    running = Server(service, bind("127.0.0.1", 0)).start()
    yield running
    running.stop()


@pytest.mark.parametrize("backend", ["openai", "ollama"])
def test_heed_judge_round_trip_counts_unusable_replies(judge_server, tmp_path, backend, capsys):
    server = judge_server
    responses = tmp_path / "responses.json"
    responses.write_text(json.dumps([{"instruction": p, "input": "", "output": "5", "model_response": "5"}
                                     for p in PROMPTS[:2]]))
    url = f"http://127.0.0.1:{server.port}" + ("/v1" if backend == "openai" else "")
    out = tmp_path / "judged.json"
    code = main(["judge", "--responses", str(responses), "--judge", f"{backend}:tiny", "--url", url, "--out", str(out),
                 "--retries", "0", "--timeout", "60"])
    err = capsys.readouterr().err
    assert out.is_file(), err
    judged = json.loads(out.read_text())
    # a random model's replies are no scores: each is counted as a failure with its raw reply kept, no crash
    assert code in (0, 2), err  # 2: no record could be scored
    assert len(judged["records"]) == len(PROMPTS[:2])
    assert all(r["judge_replies"] for r in judged["records"])
    scored = [r for r in judged["records"] if r["judge_score"] is not None]
    assert len(judged["summary"]["failed"]) == len(PROMPTS[:2]) - len(scored)


def test_cli_serve_refuses_bad_settings(capsys):
    assert main(["serve", "--model", "random:gpt2-tiny", "--max-batch", "0", "--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert "--max-batch must be at least 1" in err and "--port must be between 0 and 65535" in err


def streamed(server, path: str, body: dict) -> list[str]:
    """The text pieces of a streamed reply, in order (empty ones left out)."""
    code, kind, text = request(server, "POST", path, body | {"stream": True})
    assert code == 200, text
    if path.startswith("/v1/"):
        assert kind.startswith("text/event-stream")
        events = [e[len("data: "):] for e in text.split("\n\n") if e]
        assert events[-1] == "[DONE]"
        choices = [json.loads(e)["choices"][0] for e in events[:-1]]
        pieces = [c["delta"].get("content", "") if "delta" in c else c["text"] for c in choices]
    else:
        lines = [json.loads(line) for line in text.splitlines()]
        assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
        pieces = [line["message"]["content"] if "message" in line else line["response"] for line in lines]
    return [p for p in pieces if p]


def whole(server, path: str, body: dict) -> str:
    reply = json.loads(request(server, "POST", path, body | {"stream": False})[2])
    if path.startswith("/v1/"):
        choice = reply["choices"][0]
        return choice["message"]["content"] if "message" in choice else choice["text"]
    return reply["message"]["content"] if "message" in reply else reply["response"]


STREAMS = [("/v1/completions", {"prompt": "Hello"}, "stop"),
           ("/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPTS[1]}]}, "stop"),
           ("/api/generate", {"prompt": PROMPTS[0]}, "options"),
           ("/api/chat", {"messages": [{"role": "user", "content": PROMPTS[2]}]}, "options")]


@pytest.mark.parametrize("path,body,stop_at", STREAMS)
def test_streams_send_the_text_as_it_is_decoded(judge_server, path, body, stop_at):
    server = judge_server  # 32 new tokens: a greedy tiny random model repeats a few tokens, never EOS
    answer = whole(server, path, body)
    pieces = streamed(server, path, body)
    assert len(pieces) > 1 and "".join(pieces) == answer  # a piece per token or so, joining to the answer
    assert not any(marker in p for p in pieces for marker in ("###", "Instruction", "Response:"))
    # A stop string from the middle of the answer: the stream ends where the answer is cut, the stop not sent.
    middle = len(answer) // 2
    stop = answer[middle:middle + 3]
    asks = body | ({"stop": [stop]} if stop_at == "stop" else {"options": {"stop": [stop]}})
    cut = whole(server, path, asks)
    before = answer[:answer.find(stop)]
    assert cut == (before if path == "/v1/completions" else before.strip())  # a raw prompt's text is not stripped
    pieces = streamed(server, path, asks)
    assert "".join(pieces) == cut and not any(stop in p for p in pieces)


def test_the_worker_hands_each_steps_tokens_over_before_the_answer(server):
    from heed.serve.batcher import Job

    seen: list[tuple[list[int], bool]] = []
    job = Job(server.service.tokenizer("Hello")["input_ids"], 8)
    job.on_tokens = lambda ids: seen.append((ids, job.result.done()))
    ids, _ = server.service.batcher.submit(job).result(timeout=60)
    handed = [t for step, _ in seen for t in step]
    assert handed == ids[:len(handed)] and len(handed) >= len(ids) - 1  # the last may come with the answer only
    assert len(seen) == len(handed) > 1 and not any(done for _, done in seen)  # one step at a time, while decoding


def test_concurrent_streams_are_batched_and_answered_as_alone(judge_server):
    server = judge_server
    prompts = [f"Spell {i}." for i in range(6)]
    single = {p: whole(server, "/api/generate", {"prompt": p}) for p in prompts}
    answers: dict[str, str] = {}

    def ask(p: str, stream: bool) -> None:
        body = {"prompt": p}
        answers[p] = "".join(streamed(server, "/api/generate", body)) if stream else whole(server, "/api/generate", body)

    before = server.service.batcher.batches
    threads = [threading.Thread(target=ask, args=(p, i % 2 == 0)) for i, p in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert answers == single
    assert server.service.batcher.batches - before < len(prompts)  # streamed and not, decoded together


def test_a_saved_system_prompt_is_used_unless_the_chat_brings_one(tmp_path):
    from heed.data.encode import record_prompt_ids
    from heed.data.records import Record
    from heed.data.templates import TEMPLATES
    from heed.model import gpt2_tokenizer, load_model, save_model
    from heed.serve import make_service
    from heed.serve.requests import openai_ask

    out = tmp_path / "with-system"
    save_model(load_model("random:gpt2-tiny"), gpt2_tokenizer(), out, {"template": "alpaca", "system": "Be terse."})
    service = make_service(str(out), ServeConfig(**LIMITS), GenerateConfig(), device="cpu")
    try:
        def prompt_ids(turns, system):
            record = Record(0, turns[-1][1], "", None, {}, turns, system)
            return record_prompt_ids([record], gpt2_tokenizer(), TEMPLATES["alpaca"])[0]

        async def submitted(messages):
            pending = service.submit(openai_ask({"messages": messages}, service.cfg, chat=True))
            pending.result.result(timeout=60)
            return pending.prompt_tokens

        import asyncio

        plain = [{"role": "user", "content": "Add 2 and 3."}]
        own = [{"role": "system", "content": "Answer at length, please, with every detail."}] + plain
        assert asyncio.run(submitted(plain)) == len(prompt_ids([("user", "Add 2 and 3.")], "Be terse."))
        assert asyncio.run(submitted(own)) == len(prompt_ids([("system", own[0]["content"]), ("user", "Add 2 and 3.")],
                                                             None))
        assert len(prompt_ids([("user", "Add 2 and 3.")], "Be terse.")) != len(prompt_ids([("user", "Add 2 and 3.")], None))
    finally:
        service.batcher.close()


def test_rows_of_one_batch_stop_at_their_own_limits(server):
    from heed.serve.batcher import Job

    tok = server.service.tokenizer
    prompts = [tok("Hello there")["input_ids"], tok("Name a colour.")["input_ids"]]
    alone = [server.service.batcher.submit(Job(p, n)).result(timeout=60) for p, n in zip(prompts, (2, 8))]
    together = [Job(p, n) for p, n in zip(prompts, (2, 8))]
    futures = [server.service.batcher.submit(j) for j in together]  # queued within one batch wait
    assert [f.result(timeout=60) for f in futures] == alone
    ids, stopped = alone[0]
    assert len(ids) == 2 and stopped is False  # ran to its own limit, not stopped by an end-of-text

