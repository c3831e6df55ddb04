"""The ``heed`` command: a thin argparse front. Each subcommand's module registers its parser and one
function that builds configs and calls the stages."""

from __future__ import annotations

import argparse
import os
import sys

from heed import __version__
from heed.errors import HeedError


def build_parser() -> argparse.ArgumentParser:
    from heed.commands import bench, data, demo, evaluate, export, generate, serve, train

    parser = argparse.ArgumentParser(
        prog="heed", description="Instruction finetuning for pretrained causal language models.")
    parser.add_argument("--version", action="version", version=f"heed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (data, train, generate, evaluate, serve, export, bench, demo):
        module.register(sub)
    return parser


def entry() -> None:
    """The ``heed`` console script: model-running commands re-execute once under mimalloc on Linux."""
    from heed.runtime.allocator import maybe_reexec

    maybe_reexec(sys.argv[1:])
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from heed.runtime.distributed import launched

        if launched() and args.command != "train":
            raise HeedError(f"heed {args.command} runs as one process; only heed train runs under torchrun")
        return int(args.func(args) or 0)
    except HeedError as e:
        for problem in e.problems:
            print(f"heed: error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("heed: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
