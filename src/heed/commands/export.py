"""``heed export``: a model as a GGUF file with an Ollama Modelfile beside it (``heed.export``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from heed.errors import HeedError


def cmd_export(args: argparse.Namespace) -> int:
    from heed.export import export
    from heed.export.converter import fetch_converter

    if args.fetch_converter:
        print(f"llama.cpp's converter is in {fetch_converter()}")
        if not args.model:
            return 0
    if not (args.model and args.gguf):
        raise HeedError("heed export needs --model DIR and --gguf OUT.gguf (or --fetch-converter alone)")
    out = Path(args.gguf)
    modelfile = export(args.model, out, quant=args.quant, converter=args.converter, template=args.template)
    print(f"wrote {out} ({args.quant}) and {modelfile}; for Ollama: cd {out.parent} && ollama create NAME -f Modelfile")
    return 0


def register(sub: Any) -> None:
    from heed.export import QUANTS
    from heed.export.converter import LLAMA_CPP_PYTHON

    p = sub.add_parser("export", help="write a model as GGUF (llama.cpp, Ollama) with an Ollama Modelfile",
                       description="Converts with llama.cpp's convert_hf_to_gguf.py (from the llama-cpp-python "
                                   f"{LLAMA_CPP_PYTHON} sdist) and writes a Modelfile with heed's template beside "
                                   "the GGUF file.")
    p.add_argument("--model", help="a model directory (heed-trained, merged or adapter), or random:<preset>")
    p.add_argument("--gguf", metavar="OUT.gguf", help="the GGUF file to write")
    p.add_argument("--quant", default=QUANTS[1], choices=QUANTS, help=f"weight type (default: {QUANTS[1]})")
    p.add_argument("--template", help="override the template (default: the model's heed.json, else alpaca)")
    p.add_argument("--converter", metavar="PATH",
                   help="llama.cpp's sources (a tree with convert_hf_to_gguf.py) or the llama-cpp-python sdist "
                        "(.tar.gz) (default: the copy --fetch-converter put in heed's cache)")
    p.add_argument("--fetch-converter", action="store_true",
                   help=f"download the llama-cpp-python {LLAMA_CPP_PYTHON} sdist with pip and keep its converter "
                        "in heed's cache ($HEED_CACHE, else ~/.cache/heed)")
    p.set_defaults(func=cmd_export)
