"""The HTTP front of ``heed serve`` (Starlette): OpenAI ``/v1/chat/completions``, ``/v1/completions`` and
``/v1/models``; Ollama ``/api/chat``, ``/api/generate`` and ``/api/tags``. Each request is read
(``heed.serve.requests``), its prompt encoded with the model's template, and its answer waited for from
the batching worker (``heed.serve.batcher``); a stream (SSE for OpenAI, NDJSON for Ollama) sends the text
as it is decoded (``heed.serve.stream``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

from heed.config import ServeConfig
from heed.data.records import Record
from heed.data.templates import Template
from heed.serve.batcher import Batcher, Job, QueueFull
from heed.serve.requests import Ask, BadRequest, ollama_ask, openai_ask, parse_body
from heed.serve.stream import TextStream, answer_text

# Raw prompts (/v1/completions, /api/generate with raw: true) are encoded as plain text, BOS as heed adds it.
RAW = Template("raw", "", "{instruction}", "", "")


@dataclass
class Answer:
    text: str
    finish: str  # "stop" or "length"
    prompt_tokens: int
    new_tokens: int


@dataclass
class Pending:
    """A request queued for the worker; ``steps`` (streams only) receives each step's new token ids, then None."""

    ask: Ask
    prompt_tokens: int
    result: Future
    steps: asyncio.Queue | None = None
    answer: Answer | None = None  # set when a stream has sent all its text


class Service:
    """The model behind the endpoints: encodes a request, queues it, decodes its answer."""

    def __init__(self, batcher: Batcher, tokenizer: Any, template: Template, cfg: ServeConfig, name: str,
                 max_prompt_tokens: int, system: str | None = None):
        self.batcher, self.tokenizer, self.template, self.cfg = batcher, tokenizer, template, cfg
        self.name, self.max_prompt_tokens = name, max_prompt_tokens
        self.system = system  # the model's saved system prompt: for requests that bring none
        self.created = int(time.time())

    def submit(self, ask: Ask, *, stream: bool = False) -> Pending:
        """Queue ``ask``; problems found before decoding starts (too long, too busy) raise ``BadRequest``."""
        from heed.data.encode import record_prompt_ids

        if ask.raw:
            record, template = Record(0, ask.text, "", None, {}), RAW
        else:  # as heed generate writes it: the model's template, its saved system prompt unless the chat has one
            record, template = Record(0, ask.text, "", None, {}, ask.turns, self.system), self.template
        prompt = record_prompt_ids([record], self.tokenizer, template)[0]
        if len(prompt) > self.max_prompt_tokens:
            raise BadRequest(f"the prompt is {len(prompt)} tokens; this server takes at most {self.max_prompt_tokens} "
                             "(heed serve --max-prompt-tokens)", 413)
        job = Job(prompt, ask.max_new_tokens, ask.sampling)
        steps: asyncio.Queue | None = None
        if stream:
            loop, steps = asyncio.get_running_loop(), asyncio.Queue()
            job.on_tokens = lambda ids: loop.call_soon_threadsafe(steps.put_nowait, ids)
            job.result.add_done_callback(lambda _: loop.call_soon_threadsafe(steps.put_nowait, None))
        try:
            future = self.batcher.submit(job)
        except QueueFull:
            raise BadRequest(f"the server is busy ({self.cfg.max_queue} requests waiting); try again", 503) from None
        return Pending(ask, len(prompt), future, steps)

    async def answer(self, ask: Ask) -> Answer:
        pending = self.submit(ask)
        try:
            ids, eos = await self._within(asyncio.wrap_future(pending.result), self.cfg.timeout)
        finally:
            pending.result.cancel()  # given up on (timed out): a job not started yet is dropped; a done one stays
        text, stopped = answer_text(self.tokenizer, ids, None if ask.raw else self.template, ask.stop)
        return Answer(text, "stop" if eos or stopped else "length", pending.prompt_tokens, len(ids))

    async def stream(self, pending: Pending) -> AsyncIterator[str]:
        """The answer's text in pieces as it is decoded; then ``pending.answer`` holds the whole."""
        assert pending.steps is not None
        ask, loop = pending.ask, asyncio.get_running_loop()
        text = TextStream(self.tokenizer, None if ask.raw else self.template, ask.stop)
        deadline = loop.time() + self.cfg.timeout
        try:
            while (ids := await self._within(pending.steps.get(), deadline - loop.time())) is not None:
                if piece := text.push(ids):
                    yield piece
            ids, eos = pending.result.result()  # done: the worker's error, if any, is raised here
        finally:  # timed out, or the client went away (the generator is closed): drop a job not started yet
            pending.result.cancel()
        piece, whole, stopped = text.finish(ids)
        if piece:
            yield piece
        pending.answer = Answer(whole, "stop" if eos or stopped else "length", pending.prompt_tokens, len(ids))

    async def _within(self, waiting: Awaitable[Any], seconds: float) -> Any:
        try:
            return await asyncio.wait_for(waiting, max(seconds, 0.0))
        except asyncio.TimeoutError:
            raise BadRequest(f"no answer within {self.cfg.timeout:g} s (heed serve --timeout)", 503) from None


def _failure(e: Exception) -> tuple[str, int]:
    """A request's failure as the message and status its endpoint answers with."""
    if isinstance(e, BadRequest):
        return str(e), e.status
    return f"generation failed: {e}", 500


# --- OpenAI ------------------------------------------------------------------------------------------


def _openai_error_body(message: str, status: int) -> dict[str, Any]:
    return {"message": message, "type": "invalid_request_error" if status < 500 else "server_error", "code": status}


def _openai_error(message: str, status: int) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": _openai_error_body(message, status)}, status_code=status)


def _usage(a: Answer) -> dict[str, int]:
    return {"prompt_tokens": a.prompt_tokens, "completion_tokens": a.new_tokens,
            "total_tokens": a.prompt_tokens + a.new_tokens}


def _openai_head(service: Service, chat: bool) -> dict[str, Any]:
    return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
            "model": service.name}


def openai_reply(service: Service, ask: Ask, a: Answer, *, chat: bool) -> Any:
    from starlette.responses import JSONResponse

    choice = ({"index": 0, "message": {"role": "assistant", "content": a.text}, "finish_reason": a.finish}
              if chat else {"index": 0, "text": a.text, "logprobs": None, "finish_reason": a.finish})
    return JSONResponse(_openai_head(service, chat) | {"object": "chat.completion" if chat else "text_completion",
                                                       "choices": [choice], "usage": _usage(a)})


def openai_stream(service: Service, pending: Pending, *, chat: bool) -> Any:
    """Server-sent events: a chunk per piece of text as it is decoded, one with the finish reason, [DONE]."""
    from starlette.responses import StreamingResponse

    head = _openai_head(service, chat) | {"object": "chat.completion.chunk" if chat else "text_completion"}

    def event(body: dict[str, Any]) -> str:
        return f"data: {json.dumps(body)}\n\n"

    def chunk(delta: dict[str, str] | None, finish: str | None) -> str:
        if chat:
            choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": (delta or {}).get("content", ""), "logprobs": None, "finish_reason": finish}
        return event(head | {"choices": [choice]})

    async def events() -> AsyncIterator[str]:
        if chat:
            yield chunk({"role": "assistant", "content": ""}, None)  # OpenAI's first delta names the role
        try:
            async for piece in service.stream(pending):
                yield chunk({"content": piece}, None)
        except Exception as e:  # noqa: BLE001 - the status is sent already: the error is the stream's last event
            message, status = _failure(e)
            yield event({"error": _openai_error_body(message, status)})
            return
        assert pending.answer is not None
        yield chunk(None, pending.answer.finish)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


# --- Ollama ------------------------------------------------------------------------------------------


def _ollama_error(message: str, status: int) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _ollama_line(service: Service, text: str, a: Answer | None, *, chat: bool) -> dict[str, Any]:
    """One Ollama reply object: ``a`` given, the last (done, with the counts)."""
    body: dict[str, Any] = {"model": service.name, "created_at": _now()}
    body |= {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
    body["done"] = a is not None
    if a is not None:
        body |= {"done_reason": a.finish, "prompt_eval_count": a.prompt_tokens, "eval_count": a.new_tokens}
    return body


def ollama_reply(service: Service, ask: Ask, a: Answer, *, chat: bool) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(_ollama_line(service, a.text, a, chat=chat))


def ollama_stream(service: Service, pending: Pending, *, chat: bool) -> Any:
    """JSON lines: one per piece of text as it is decoded, then one with done true and the counts."""
    from starlette.responses import StreamingResponse

    async def lines() -> AsyncIterator[str]:
        try:
            async for piece in service.stream(pending):
                yield json.dumps(_ollama_line(service, piece, None, chat=chat)) + "\n"
        except Exception as e:  # noqa: BLE001 - the status is sent already: Ollama's stream ends in an error line
            yield json.dumps({"error": _failure(e)[0]}) + "\n"
            return
        yield json.dumps(_ollama_line(service, "", pending.answer, chat=chat)) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


# --- the app -----------------------------------------------------------------------------------------


async def _read(request: Any, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BadRequest(f"the request body is larger than {limit} bytes (heed serve --max-body-bytes)", 413)
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise BadRequest(f"the request body is larger than {limit} bytes (heed serve --max-body-bytes)", 413)
    return bytes(body)


def _endpoint(service: Service, read: Callable[..., Ask], reply: Callable[..., Any], stream: Callable[..., Any],
              error: Callable[[str, int], Any], *, chat: bool) -> Callable[[Any], Any]:
    async def handle(request: Any) -> Any:
        # The body is read as JSON whatever its Content-Type: curl -d sends
        # application/x-www-form-urlencoded, as Ollama's own examples do, and Ollama accepts it.
        try:
            ask = read(parse_body(await _read(request, service.cfg.max_body_bytes)), service.cfg, chat=chat)
            if ask.stream:
                return stream(service, service.submit(ask, stream=True), chat=chat)
            return reply(service, ask, await service.answer(ask), chat=chat)
        except Exception as e:  # noqa: BLE001 - one failed request must not take the server down
            return error(*_failure(e))

    return handle


def build_app(service: Service) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def models(request: Any) -> Any:
        return JSONResponse({"object": "list", "data": [
            {"id": service.name, "object": "model", "created": service.created, "owned_by": "heed"}]})

    async def tags(request: Any) -> Any:
        return JSONResponse({"models": [{"name": service.name, "model": service.name, "modified_at": _now(),
                                         "details": {"format": "safetensors", "template": service.template.name}}]})

    async def not_found(request: Any, exc: Any) -> Any:
        status = getattr(exc, "status_code", 404)
        message = "no such endpoint" if status == 404 else "method not allowed: use POST" if status == 405 else str(exc)
        if request.url.path.startswith("/api/"):
            return _ollama_error(message, status)
        return _openai_error(message, status)

    openai = (openai_ask, openai_reply, openai_stream, _openai_error)
    ollama = (ollama_ask, ollama_reply, ollama_stream, _ollama_error)
    routes = [
        Route("/v1/chat/completions", _endpoint(service, *openai, chat=True), methods=["POST"]),
        Route("/v1/completions", _endpoint(service, *openai, chat=False), methods=["POST"]),
        Route("/api/chat", _endpoint(service, *ollama, chat=True), methods=["POST"]),
        Route("/api/generate", _endpoint(service, *ollama, chat=False), methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/api/tags", tags, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
