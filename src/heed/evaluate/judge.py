"""LLM-as-judge clients: a local model served by Ollama, or any OpenAI-compatible server.

Both speak plain HTTP through the standard library. Failures that a retry can fix (timeouts, 5xx,
a dropped connection) are retried with bounded exponential backoff; failures that need the user
(server not running, model not pulled, bad key) raise ``HeedError`` naming the fix.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from heed.errors import HeedError

OLLAMA_URL = "http://localhost:11434"
API_KEY_ENV = "HEED_JUDGE_API_KEY"  # then OPENAI_API_KEY


class TransientError(Exception):
    """A failure worth retrying: timeout, 5xx, connection reset."""


@dataclass
class JudgeSpec:
    """``ollama:MODEL`` or ``openai:MODEL`` plus the server URL."""

    backend: str
    model: str
    url: str
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    options: dict[str, Any] = field(default_factory=lambda: {"seed": 123, "temperature": 0, "num_ctx": 2048})

    @classmethod
    def parse(cls, spec: str, url: str | None = None, **kw: Any) -> "JudgeSpec":
        backend, sep, model = spec.partition(":")
        if backend == "ollama":
            return cls("ollama", model if sep and model else "llama3", (url or OLLAMA_URL).rstrip("/"), **kw)
        if backend == "openai":
            if not model:
                raise HeedError("--judge openai:MODEL needs a model name, e.g. openai:qwen2.5-7b-instruct")
            if not url:
                raise HeedError("--judge openai:... needs --url, the server's base URL (e.g. http://localhost:8000/v1)")
            return cls("openai", model, url.rstrip("/"), **kw)
        raise HeedError(f"--judge {spec}: write ollama:MODEL or openai:MODEL")


def _post(url: str, body: dict[str, Any], headers: dict[str, str], timeout: float) -> urllib.request.addinfourl:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    return urllib.request.urlopen(request, timeout=timeout)


def _error_text(error: urllib.error.HTTPError) -> str:
    try:
        raw = error.read().decode("utf-8", "replace")
        data = json.loads(raw)
        message = data.get("error", raw)
        return message.get("message", str(message)) if isinstance(message, dict) else str(message)
    except (ValueError, OSError):
        return error.reason if isinstance(error.reason, str) else str(error)


class Judge:
    """Sends one chat message and returns the reply text."""

    def __init__(self, spec: JudgeSpec):
        self.spec = spec

    def ask(self, prompt: str) -> str:
        delay = self.spec.backoff
        for attempt in range(self.spec.retries + 1):
            try:
                return self._ask_once(prompt)
            except TransientError as e:
                if attempt == self.spec.retries:
                    raise HeedError(f"judge {self.spec.backend}:{self.spec.model} at {self.spec.url}: gave up after "
                                    f"{self.spec.retries + 1} tries: {e}") from None
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _ask_once(self, prompt: str) -> str:
        spec = self.spec
        try:
            if spec.backend == "ollama":
                return self._ollama(prompt)
            return self._openai(prompt)
        except urllib.error.HTTPError as e:
            text = _error_text(e)
            if e.code >= 500 or e.code == 429:
                raise TransientError(f"HTTP {e.code}: {text}") from None
            if spec.backend == "ollama" and e.code == 404:
                raise HeedError(f"Ollama at {spec.url} has no model '{spec.model}': run `ollama pull {spec.model}`") from None
            if e.code in (401, 403):
                raise HeedError(f"judge server {spec.url} refused the request (HTTP {e.code}: {text}); "
                                f"set the API key in ${API_KEY_ENV}") from None
            if e.code == 404:
                raise HeedError(f"judge server {spec.url}: HTTP 404 ({text}); check --url (it should end in /v1) "
                                f"and the model name '{spec.model}'") from None
            raise HeedError(f"judge server {spec.url}: HTTP {e.code}: {text}") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise TransientError("timed out") from None
            if isinstance(reason, ConnectionRefusedError):
                if spec.backend == "ollama":
                    raise HeedError(f"cannot reach Ollama at {spec.url}: is it running? Start it with `ollama serve`") from None
                raise HeedError(f"cannot reach the judge server at {spec.url}: connection refused; start it or fix --url") from None
            if isinstance(reason, (ConnectionResetError, ConnectionAbortedError)):
                raise TransientError(str(reason)) from None
            raise HeedError(f"cannot reach the judge server at {spec.url}: {reason}") from None
        except (socket.timeout, TimeoutError):
            raise TransientError("timed out") from None
        except (ConnectionResetError, ConnectionAbortedError, http.client.HTTPException) as e:
            raise TransientError(f"connection broke off ({type(e).__name__})") from None

    def _ollama(self, prompt: str) -> str:
        spec = self.spec
        body = {"model": spec.model, "messages": [{"role": "user", "content": prompt}], "options": spec.options,
                "stream": True}
        with _post(f"{spec.url}/api/chat", body, {}, spec.timeout) as response:
            raw = response.read().decode("utf-8")
        parts = []
        for chunk in _ollama_chunks(raw):
            if "error" in chunk:  # Ollama reports some failures inside an HTTP 200 stream
                error = str(chunk["error"])
                if "not found" in error and "model" in error:
                    raise HeedError(f"Ollama at {spec.url} has no model '{spec.model}': run `ollama pull {spec.model}`")
                raise TransientError(f"Ollama error: {error}")
            parts.append(chunk.get("message", {}).get("content", ""))
        return "".join(parts)

    def _openai(self, prompt: str) -> str:
        spec = self.spec
        key = os.environ.get(API_KEY_ENV) or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body = {"model": spec.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                "seed": spec.options.get("seed", 123), "max_tokens": 32, "stream": False}
        with _post(f"{spec.url}/chat/completions", body, headers, spec.timeout) as response:
            data = json.loads(response.read().decode("utf-8"))
        try:
            return data["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise TransientError(f"reply without choices[0].message.content: {str(data)[:120]}") from None


def _ollama_chunks(raw: str) -> list[dict[str, Any]]:
    """A non-streamed reply is one JSON object; a streamed one is NDJSON, one object a line."""
    try:
        whole = json.loads(raw)
        if isinstance(whole, dict):
            return [whole]
    except json.JSONDecodeError:
        pass
    chunks = []
    for line in raw.splitlines():
        if line.strip():
            try:
                chunks.append(json.loads(line))
            except json.JSONDecodeError:
                raise TransientError(f"unreadable reply line {line[:80]!r}") from None
    return chunks
