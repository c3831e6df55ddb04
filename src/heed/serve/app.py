"""The HTTP front of ``heed serve`` (Starlette): OpenAI ``/v1/chat/completions``, ``/v1/completions`` and
``/v1/models``; Ollama ``/api/chat``, ``/api/generate`` and ``/api/tags``. Each request is read
(``heed.serve.requests``), its prompt encoded with the model's template, and its answer waited for from
the batching worker (``heed.serve.batcher``); streams are SSE (OpenAI) or NDJSON (Ollama).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from heed.config import ServeConfig
from heed.data.records import Record
from heed.data.templates import Template, extract_response
from heed.serve.batcher import Batcher, Job, QueueFull
from heed.serve.requests import Ask, BadRequest, cut_at_stop, ollama_ask, openai_ask, parse_body

# Raw prompts (/v1/completions, /api/generate with raw: true) are encoded as plain text, BOS as heed adds it.
RAW = Template("raw", "", "{instruction}", "", "")


@dataclass
class Answer:
    text: str
    finish: str  # "stop" or "length"
    prompt_tokens: int
    new_tokens: int


class Service:
    """The model behind the endpoints: encodes a request, queues it, decodes its answer."""

    def __init__(self, batcher: Batcher, tokenizer: Any, template: Template, cfg: ServeConfig, name: str,
                 max_prompt_tokens: int):
        self.batcher, self.tokenizer, self.template, self.cfg = batcher, tokenizer, template, cfg
        self.name, self.max_prompt_tokens = name, max_prompt_tokens
        self.created = int(time.time())

    async def answer(self, ask: Ask) -> Answer:
        from heed.data.encode import record_prompt_ids

        template = RAW if ask.raw else self.template
        prompt = record_prompt_ids([Record(0, ask.text, "", None, {})], self.tokenizer, template)[0]
        if len(prompt) > self.max_prompt_tokens:
            raise BadRequest(f"the prompt is {len(prompt)} tokens; this server takes at most {self.max_prompt_tokens} "
                             "(heed serve --max-prompt-tokens)", 413)
        try:
            future = self.batcher.submit(Job(prompt, ask.max_new_tokens, ask.sampling))
        except QueueFull:
            raise BadRequest(f"the server is busy ({self.cfg.max_queue} requests waiting); try again", 503) from None
        try:
            ids, eos = await asyncio.wait_for(asyncio.wrap_future(future), self.cfg.timeout)
        except asyncio.TimeoutError:
            raise BadRequest(f"no answer within {self.cfg.timeout:g} s (heed serve --timeout)", 503) from None
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if not ask.raw:
            text = extract_response(text, self.template)
        text, stopped = cut_at_stop(text, ask.stop)
        return Answer(text, "stop" if eos or stopped else "length", len(prompt), len(ids))


# --- OpenAI ------------------------------------------------------------------------------------------


def _openai_error(message: str, status: int) -> Any:
    from starlette.responses import JSONResponse

    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def _usage(a: Answer) -> dict[str, int]:
    return {"prompt_tokens": a.prompt_tokens, "completion_tokens": a.new_tokens,
            "total_tokens": a.prompt_tokens + a.new_tokens}


def openai_reply(service: Service, ask: Ask, a: Answer, *, chat: bool) -> Any:
    from starlette.responses import JSONResponse, StreamingResponse

    head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
            "model": service.name}
    if not ask.stream:
        choice = ({"index": 0, "message": {"role": "assistant", "content": a.text}, "finish_reason": a.finish}
                  if chat else {"index": 0, "text": a.text, "logprobs": None, "finish_reason": a.finish})
        return JSONResponse(head | {"object": "chat.completion" if chat else "text_completion", "choices": [choice],
                                    "usage": _usage(a)})
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, finish: str | None) -> str:
        if chat:
            delta = {} if text is None else {"role": "assistant", "content": text}
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return f"data: {json.dumps(head | {'object': kind, 'choices': [choice]})}\n\n"

    async def events() -> AsyncIterator[str]:
        yield chunk(a.text, None)
        yield chunk(None, a.finish)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


# --- Ollama ------------------------------------------------------------------------------------------


def _ollama_error(message: str, status: int) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def ollama_reply(service: Service, ask: Ask, a: Answer, *, chat: bool) -> Any:
    from starlette.responses import JSONResponse, StreamingResponse

    def line(text: str, done: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": service.name, "created_at": _now()}
        body |= {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
        body["done"] = done
        if done:
            body |= {"done_reason": a.finish, "prompt_eval_count": a.prompt_tokens, "eval_count": a.new_tokens}
        return body

    if not ask.stream:
        return JSONResponse(line(a.text, True))

    async def lines() -> AsyncIterator[str]:
        yield json.dumps(line(a.text, False)) + "\n"
        yield json.dumps(line("", True)) + "\n"

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


def _endpoint(service: Service, read: Callable[..., Ask], reply: Callable[..., Any], error: Callable[[str, int], Any],
              *, chat: bool) -> Callable[[Any], Any]:
    async def handle(request: Any) -> Any:
        try:
            if request.headers.get("content-type", "application/json").split(";")[0].strip() not in (
                    "application/json", "text/plain", ""):
                raise BadRequest("send the request body as application/json", 415)
            ask = read(parse_body(await _read(request, service.cfg.max_body_bytes)), service.cfg, chat=chat)
            return reply(service, ask, await service.answer(ask), chat=chat)
        except BadRequest as e:
            return error(str(e), e.status)
        except Exception as e:  # noqa: BLE001 - one failed request must not take the server down
            return error(f"generation failed: {e}", 500)

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

    routes = [
        Route("/v1/chat/completions", _endpoint(service, openai_ask, openai_reply, _openai_error, chat=True),
              methods=["POST"]),
        Route("/v1/completions", _endpoint(service, openai_ask, openai_reply, _openai_error, chat=False),
              methods=["POST"]),
        Route("/api/chat", _endpoint(service, ollama_ask, ollama_reply, _ollama_error, chat=True), methods=["POST"]),
        Route("/api/generate", _endpoint(service, ollama_ask, ollama_reply, _ollama_error, chat=False),
              methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/api/tags", tags, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
