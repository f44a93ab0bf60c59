"""The ``vrtk`` command: builds the parser from ``vrtk.commands.*`` and turns VrtkError into a clear message."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from vrtk import __version__
from vrtk.errors import VrtkError


def build_parser() -> argparse.ArgumentParser:
    from vrtk.commands import COMMAND_MODULES

    parser = argparse.ArgumentParser(
        prog="vrtk", description="Variable-rate and efficiency plugins for CompressAI-style image codecs.")
    parser.add_argument("--version", action="version", version=f"vrtk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # an area not built yet
            raise
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    collect = getattr(args, "collect_extra", None)  # e.g. `vrtk run RECIPE --no-progress key=value`
    if extra and collect and not any(e.startswith("-") for e in extra):
        getattr(args, collect).extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except VrtkError as exc:
        print(f"vrtk: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vrtk: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`vrtk eval ... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush cannot fail again
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the closed pipe


if __name__ == "__main__":
    sys.exit(main())
