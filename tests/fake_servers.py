"""Loopback HTTP servers that follow Ollama's /api/chat and the OpenAI /v1/chat/completions wire formats.

Each server answers from a script: a list of behaviours consumed one request at a time (the last one
repeats), so a test can stage 500s, timeouts, bad replies and errors inside a 200 stream. A body is
text, bytes (sent as they are, e.g. invalid UTF-8), or an iterable of pieces written one at a time
with no Content-Length, the reply ending when the server closes the connection (a trickling stream).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable

Body = str | bytes | Iterable[str]
Behaviour = Callable[[dict[str, Any]], tuple[int, str, Body]]  # request body -> (status, content type, body)


def ollama_stream(text: str, model: str = "llama3") -> Behaviour:
    def reply(body):
        pieces = [text[i:i + 2] for i in range(0, len(text), 2)] or [""]
        lines = [json.dumps({"model": model, "message": {"role": "assistant", "content": p}, "done": False})
                 for p in pieces]
        lines.append(json.dumps({"model": model, "message": {"role": "assistant", "content": ""}, "done": True}))
        return 200, "application/x-ndjson", "\n".join(lines) + "\n"
    return reply


def ollama_single(text: str) -> Behaviour:
    return lambda body: (200, "application/json", json.dumps(
        {"model": body["model"], "message": {"role": "assistant", "content": text}, "done": True}, indent=2))


def status(code: int, payload: dict[str, Any]) -> Behaviour:
    return lambda body: (code, "application/json", json.dumps(payload))


def error_in_stream(message: str) -> Behaviour:
    return lambda body: (200, "application/x-ndjson", json.dumps({"error": message}) + "\n")


def slow(seconds: float, then: Behaviour) -> Behaviour:
    def reply(body):
        time.sleep(seconds)
        return then(body)
    return reply


def raw(body: str | bytes, code: int = 200, ctype: str = "application/json") -> Behaviour:
    """Exactly this body, however malformed."""
    return lambda request: (code, ctype, body)


def trickle(piece: str, every: float, pieces: int) -> Behaviour:
    """Write ``piece`` every ``every`` seconds, ``pieces`` times, then close: a stream that never ends in time."""
    def body():
        for _ in range(pieces):
            yield piece
            time.sleep(every)
    return lambda request: (200, "application/x-ndjson", body())


def openai_reply(text: str) -> Behaviour:
    return lambda body: (200, "application/json", json.dumps(
        {"id": "x", "object": "chat.completion", "model": body["model"],
         "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}))


def by_content(rule: Callable[[str], Behaviour]) -> Behaviour:
    """Choose the behaviour from the prompt text (for concurrent or order-dependent tests)."""
    return lambda body: rule(body["messages"][-1]["content"])(body)


class FakeServer:
    def __init__(self, script: list[Behaviour]):
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body | {"_path": self.path})
                    server.headers.append(dict(self.headers))
                    behaviour = server.script.pop(0) if len(server.script) > 1 else server.script[0]
                try:
                    code, ctype, payload = behaviour(body)
                except BrokenPipeError:
                    return
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    if isinstance(payload, (str, bytes)):
                        data = payload.encode() if isinstance(payload, str) else payload
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                        return
                    self.end_headers()  # HTTP/1.0 without a length: the body ends when the connection closes
                    for piece in payload:
                        self.wfile.write(piece.encode())
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> "FakeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
