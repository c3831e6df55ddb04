"""Stage: serving. A trained model behind OpenAI- and Ollama-compatible HTTP endpoints, concurrent
requests decoded together in batches (``batcher``), requests read and bounded (``requests``), answers
streamed as they are decoded (``stream``), the routes (``app``). Needs ``pip install 'heed[serve]'``
(Starlette and Uvicorn)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

from heed.config import GenerateConfig, ServeConfig
from heed.errors import HeedError


def require_serve_deps() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise HeedError("heed serve needs Starlette and Uvicorn: pip install 'heed[serve]'") from None


def make_service(spec: str, cfg: ServeConfig, gen: GenerateConfig = GenerateConfig(), *, device: str = "auto",
                 template: str | None = None) -> Any:
    """Load ``spec`` with its saved template and start the batching worker behind a ``Service``."""
    from heed.data.templates import get_template
    from heed.model import context_length, load_model, load_tokenizer, model_config, read_meta, saved_template
    from heed.runtime.device import choose_device
    from heed.serve.app import Service
    from heed.serve.batcher import Batcher

    require_serve_deps()
    chosen = get_template(saved_template(spec, template))
    context = context_length(model_config(spec))
    longest = cfg.max_prompt_tokens or context - cfg.max_new_tokens
    if longest < 1 or longest + cfg.max_new_tokens > context:
        raise HeedError(f"--max-prompt-tokens {longest} plus --max-new-tokens {cfg.max_new_tokens} exceed the model's "
                        f"context of {context} tokens; lower one of them")
    tokenizer = load_tokenizer(spec)
    model = load_model(spec).to(choose_device(device))
    batcher = Batcher(model, tokenizer, gen, max_batch=cfg.max_batch, wait_s=cfg.batch_wait_ms / 1000,
                      max_queue=cfg.max_queue)
    name = cfg.name or (spec.split(":", 1)[1] if spec.startswith("random:") else Path(spec).name or "heed")
    system = read_meta(spec).get("system")
    return Service(batcher, tokenizer, chosen, cfg, name, longest, system if isinstance(system, str) else None)


def bind(host: str, port: int) -> socket.socket:
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        raise HeedError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port or --host") from None
    return sock


class Server:
    """Uvicorn serving a ``Service`` on a bound socket, in this thread (``run``) or a background one
    (``start``/``stop``, for tests and the load script)."""

    def __init__(self, service: Any, sock: socket.socket):
        import uvicorn

        from heed.serve.app import build_app

        self.service, self.sock = service, sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(build_app(service), log_level="warning", access_log=False, timeout_keep_alive=5)
        self.server = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    def run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.service.batcher.close()

    def start(self) -> "Server":
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        import time

        for _ in range(500):
            if self.server.started:
                break
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread:
            self.thread.join(timeout=10)
        self.service.batcher.close()
        self.sock.close()
