"""``heed serve``: a model behind OpenAI- and Ollama-compatible HTTP endpoints (``heed.serve``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from heed.commands.options import add_flags, validated
from heed.config import GenerateConfig, ModelConfig, ServeConfig


def cmd_serve(args: argparse.Namespace) -> int:
    from heed.serve import Server, bind, make_service, require_serve_deps

    chosen, cfg, gen = validated(args, ModelConfig, ServeConfig, GenerateConfig)
    require_serve_deps()
    sock = bind(cfg.host, cfg.port)  # before the model loads: a taken port fails at once
    service = make_service(chosen.model, cfg, gen, device=chosen.device, template=chosen.template)
    server = Server(service, sock)
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(f"heed serve: {service.name} (template {service.template.name}) at http://{host}:{server.port} "
          "(OpenAI /v1, Ollama /api); Ctrl-C stops it", file=sys.stderr, flush=True)
    server.run()
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP (OpenAI and Ollama APIs)",
                       description="OpenAI /v1/chat/completions, /v1/completions, /v1/models and Ollama /api/chat, "
                                   "/api/generate, /api/tags; concurrent requests are decoded in batches.")
    add_flags(p, ModelConfig, required=("model",))
    add_flags(p, ServeConfig)
    add_flags(p, GenerateConfig, only=("precision", "cache"))
    p.set_defaults(func=cmd_serve)
