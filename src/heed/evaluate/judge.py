"""LLM-as-judge clients: a local model served by Ollama, or any OpenAI-compatible server.

Plain HTTP through the standard library, one connection per request. ``timeout`` bounds a whole
request (connect, send, headers and every byte of the reply, streamed or not): a watchdog cuts the
socket when it runs out, so a server that trickles bytes cannot hold a request open. Failures that
a retry can fix (timeouts, 5xx, a dropped connection, a malformed reply) are retried with bounded
exponential backoff; failures that need the user (server not running, model not pulled, bad key)
raise ``HeedError`` naming the fix. Once a judge has failed for good, or its run's ``deadline`` has
passed, every later ask fails at once with that message, so a run stops instead of asking on.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from heed.errors import HeedError

OLLAMA_URL = "http://localhost:11434"
API_KEY_ENV = "HEED_JUDGE_API_KEY"  # then OPENAI_API_KEY
MAX_REPLY_BYTES = 16 * 2**20  # a judge's reply is a few tokens; more is a broken or hostile server


class TransientError(Exception):
    """A failure worth retrying: timeout, 5xx, connection reset, malformed reply."""


@dataclass
class JudgeSpec:
    """``ollama:MODEL`` or ``openai:MODEL`` plus the server URL.

    ``url`` never holds a password (``http://user:***@host``); the credentials it had travel in
    ``auth``, a ready Basic ``Authorization`` header value that repr and saved files leave out.
    """

    backend: str
    model: str
    url: str
    timeout: float = 120.0  # seconds for a whole request
    retries: int = 3
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    deadline: float | None = None  # seconds for the whole run, counted from the Judge's creation
    options: dict[str, Any] = field(default_factory=lambda: {"seed": 123, "temperature": 0, "num_ctx": 2048})
    auth: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.timeout, (int, float)) and math.isfinite(self.timeout) and self.timeout > 0):
            raise HeedError(f"--timeout must be a number of seconds above 0 (got {self.timeout})")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise HeedError(f"--retries must be 0 or more (got {self.retries})")
        if self.deadline is not None and not (math.isfinite(self.deadline) and self.deadline > 0):
            raise HeedError(f"--deadline must be a number of seconds above 0 (got {self.deadline})")

    @classmethod
    def parse(cls, spec: str, url: str | None = None, **kw: Any) -> "JudgeSpec":
        backend, sep, model = spec.partition(":")
        if backend == "ollama":
            if sep and not model.strip():
                raise HeedError(f"--judge {spec} needs a model name after 'ollama:', e.g. ollama:llama3")
            model = model if sep else "llama3"
        elif backend == "openai":
            if not model.strip():
                raise HeedError("--judge openai:MODEL needs a model name, e.g. openai:qwen2.5-7b-instruct")
            if not url:
                raise HeedError("--judge openai:... needs --url, the server's base URL (e.g. http://localhost:8000/v1)")
        else:
            raise HeedError(f"--judge {spec}: write ollama:MODEL or openai:MODEL")
        shown, auth = _split_credentials(url or OLLAMA_URL)
        return cls(backend, model, shown, auth=auth, **kw)

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.model}"

    def identity(self) -> dict[str, Any]:
        """What decides the judge's replies, for telling whether saved results can be reused. Not the
        URL: the same model moved to another address (or port) judges the same."""
        return {"judge": self.name, "options": self.options}


def mask_url(url: str) -> str:
    """``http://user:pass@host/x`` -> ``http://user:***@host/x``; a lone user name may be a token: ``***``.

    Everything up to the last ``@`` before any ``?`` or ``#`` counts as credentials, so that a password
    with a raw ``/`` in it is masked too (at worst an ``@`` in a path is masked along)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    end = min((i for i in map(rest.find, "?#") if i >= 0), default=len(rest))
    userinfo, at, after = rest[:end].rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{sep}{user + ':***' if colon else '***'}@{after}{rest[end:]}"


def _split_credentials(url: str) -> tuple[str, str | None]:
    """The URL to show and save (password masked) and the Basic auth header its credentials make."""
    shown = mask_url(url).rstrip("/")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as e:
        raise HeedError(f"--url {shown}: not a valid URL ({e}); write e.g. http://localhost:11434") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise HeedError(f"--url {shown}: write http://HOST[:PORT][/PATH] or https://..., without ?query or #fragment")
    if parts.username is None:
        return shown, None
    pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    return shown, "Basic " + base64.b64encode(pair.encode()).decode()


class _Watchdog:
    """Shuts a connection's socket down once ``seconds`` have passed, whatever it is waiting for."""

    def __init__(self, seconds: float):
        self.sock: socket.socket | None = None
        self.fired = self.done = False
        self.lock = threading.Lock()
        self.timer = threading.Timer(seconds, self._cut)
        self.timer.daemon = True

    def _cut(self) -> None:
        with self.lock:
            self.fired = True
            if self.sock is not None and not self.done:
                try:  # the plain socket's shutdown, so that an SSL socket's state is left to its reader
                    socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
                except OSError:
                    pass

    def watch(self, sock: socket.socket) -> None:
        """Call once connected (http.client may drop its own reference to the socket before the body is read).
        A cut that came while there was no socket yet has cut nothing, so time is up already."""
        with self.lock:
            if self.fired:
                raise TimeoutError
            self.sock = sock

    def __enter__(self) -> "_Watchdog":
        self.timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.timer.cancel()
        with self.lock:
            self.done = True


def _post(url: str, body: dict[str, Any], headers: dict[str, str], timeout: float) -> tuple[int, str, bytes]:
    """POST JSON and read the whole reply within ``timeout`` seconds: (status, Location header, body).

    ``url`` may show masked credentials (they are not used from it). Raises ``TimeoutError`` when
    time runs out, else what http.client and the socket raise."""
    parts = urllib.parse.urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection, response = kind(parts.hostname, parts.port, timeout=timeout), None
    with _Watchdog(timeout) as watchdog:
        try:
            connection.connect()
            watchdog.watch(connection.sock)
            connection.request("POST", parts.path, body=json.dumps(body).encode(),
                               headers={"Content-Type": "application/json", **headers})
            response = connection.getresponse()
            data = _read_body(response)
        except (OSError, http.client.HTTPException, TransientError):
            if watchdog.fired:
                raise TimeoutError from None
            raise
        finally:
            if response is not None:
                response.close()
            connection.close()
        if watchdog.fired:  # the cut may end a reply without a length early but cleanly
            raise TimeoutError
    return response.status, response.getheader("Location") or "", data


def _read_body(response: http.client.HTTPResponse) -> bytes:
    parts, size = [], 0
    while piece := response.read(65536):
        size += len(piece)
        if size > MAX_REPLY_BYTES:
            raise TransientError(f"reply longer than {MAX_REPLY_BYTES:,} bytes")
        parts.append(piece)
    if response.length:  # Content-Length promised more than came
        raise TransientError(f"reply broke off {response.length} bytes short")
    return b"".join(parts)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise TransientError(f"reply is not JSON: {_excerpt(text)}") from None


def _excerpt(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return repr(text[:80]) + ("…" if len(text) > 80 else "")


def _error_text(raw: bytes) -> str:
    """The message in an error reply: ``{"error": "..."}``, ``{"error": {"message": "..."}}`` or the text."""
    text = raw.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return " ".join(str(error or text).split())[:200] or "(no details)"


class Judge:
    """Sends one chat message and returns the reply text. Safe to share between threads."""

    def __init__(self, spec: JudgeSpec):
        self.spec = spec
        self.ends_at = time.monotonic() + spec.deadline if spec.deadline else math.inf
        self.failure: str | None = None  # set when the judge has failed for good
        self._lock = threading.Lock()

    def ask(self, prompt: str) -> str:
        try:
            return self._ask(prompt)
        except HeedError as e:
            with self._lock:
                self.failure = self.failure or str(e)
            raise

    def _ask(self, prompt: str) -> str:
        spec, delay, tries = self.spec, self.spec.backoff, 0
        while True:
            timeout = min(spec.timeout, self._time_left())
            tries += 1
            try:
                return self._ask_once(prompt, timeout)
            except TransientError as e:
                if tries > spec.retries:
                    raise HeedError(f"judge {spec.name} at {spec.url}: gave up after {tries} tries: {e}") from None
                self._time_left(wait=delay, last=str(e))
            time.sleep(delay)
            delay *= 2

    def _time_left(self, wait: float = 0.0, last: str = "") -> float:
        """Seconds left to the run's deadline, after ``wait``; raises if none, or if the judge failed for good."""
        if self.failure:
            raise HeedError(self.failure)
        left = self.ends_at - time.monotonic() - wait
        if left <= 0:
            raise HeedError(f"judge {self.spec.name} at {self.spec.url}: the run's --deadline of "
                            f"{self.spec.deadline:g} s ran out" + (f" (last try: {last})" if last else ""))
        return left

    def _ask_once(self, prompt: str, timeout: float) -> str:
        spec = self.spec
        messages = [{"role": "user", "content": prompt}]
        if spec.backend == "ollama":
            path, headers = "/api/chat", {}
            body = {"model": spec.model, "messages": messages, "options": spec.options, "stream": True}
        else:
            path = "/chat/completions"
            key = os.environ.get(API_KEY_ENV) or os.environ.get("OPENAI_API_KEY")
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            body = {"model": spec.model, "messages": messages, "temperature": 0,
                    "seed": spec.options.get("seed", 123), "max_tokens": 32, "stream": False}
        if spec.auth:  # credentials written in --url win over an API key in the environment
            headers["Authorization"] = spec.auth
        try:
            code, location, raw = _post(spec.url + path, body, headers, timeout)
        except ConnectionRefusedError:
            if spec.backend == "ollama":
                raise HeedError(f"cannot reach Ollama at {spec.url}: is it running? Start it with `ollama serve`") from None
            raise HeedError(f"cannot reach the judge server at {spec.url}: connection refused; start it or fix --url") from None
        except TimeoutError:
            raise TransientError(f"no complete reply within {timeout:.3g} s") from None
        except (ConnectionError, http.client.HTTPException) as e:
            raise TransientError(f"connection broke off ({type(e).__name__})") from None
        except ssl.SSLCertVerificationError as e:
            raise HeedError(f"judge server {spec.url}: its certificate is not trusted ({e.verify_message}); "
                            "point $SSL_CERT_FILE at its CA certificate or fix --url") from None
        except OSError as e:
            raise HeedError(f"cannot reach the judge server at {spec.url}: {e.strerror or e}; fix --url") from None
        if not 200 <= code < 300:
            self._refused(code, _error_text(raw), location)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TransientError("reply is not valid UTF-8") from None
        return self._ollama_text(text) if spec.backend == "ollama" else _openai_text(text)

    def _refused(self, code: int, text: str, location: str) -> None:
        spec = self.spec
        if code >= 500 or code == 429:
            raise TransientError(f"HTTP {code}: {text}")
        if spec.backend == "ollama" and code == 404:
            raise HeedError(f"Ollama at {spec.url} has no model '{spec.model}': run `ollama pull {spec.model}`")
        if code in (401, 403):
            raise HeedError(f"judge server {spec.url} refused the request (HTTP {code}: {text}); "
                            f"set the API key in ${API_KEY_ENV} (or user:password in --url)")
        if code == 404:
            raise HeedError(f"judge server {spec.url}: HTTP 404 ({text}); check --url (it should end in /v1) "
                            f"and the model name '{spec.model}'")
        if 300 <= code < 400:
            where = f" to {mask_url(location)}" if location else ""
            raise HeedError(f"judge server {spec.url} redirects (HTTP {code}{where}); use that address as --url")
        raise HeedError(f"judge server {spec.url}: HTTP {code}: {text}")

    def _ollama_text(self, text: str) -> str:
        spec, parts = self.spec, []
        for chunk in _ollama_chunks(text):
            if "error" in chunk:  # Ollama reports some failures inside an HTTP 200 stream
                error = " ".join(str(chunk["error"]).split())[:200]
                if "not found" in error and "model" in error:
                    raise HeedError(f"Ollama at {spec.url} has no model '{spec.model}': run `ollama pull {spec.model}`")
                raise TransientError(f"Ollama error: {error}")
            if "message" not in chunk:  # e.g. a closing line with timings only
                continue
            content = chunk["message"].get("content") if isinstance(chunk["message"], dict) else None
            if not isinstance(content, str):
                raise TransientError(f"reply line without a text message.content: {_excerpt(chunk)}")
            parts.append(content)
        if not parts:
            raise TransientError(f"reply holds no message: {_excerpt(text)}")
        return "".join(parts)


def _ollama_chunks(text: str) -> list[dict[str, Any]]:
    """A non-streamed reply is one JSON object (maybe spread over lines); a streamed one is NDJSON."""
    try:
        whole = json.loads(text)
    except (ValueError, RecursionError):
        lines = [line for line in text.split("\n") if line.strip()]  # split("\n"): JSON may hold U+2028
        chunks = [_json(line) for line in lines]
    else:
        chunks = [whole]
    for chunk in chunks:
        if not isinstance(chunk, dict):
            raise TransientError(f"reply line is not a JSON object: {_excerpt(chunk)}")
    return chunks


def _openai_text(text: str) -> str:
    data = _json(text)
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise TransientError(f"reply without choices[0].message.content: {_excerpt(data)}") from None
    if content is None:  # some servers send null for an empty answer
        return ""
    if not isinstance(content, str):
        raise TransientError(f"reply's message.content is not text: {_excerpt(data)}")
    return content
