"""The ``gradsurg`` command line: ``gradsurg <command> [options]``.

Each command lives in its own module, which exposes ``add_arguments(parser)``
and ``run(args) -> int``; the module is imported only when its command runs,
so ``gradsurg --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("gradsurg.bench", "benchmark the paradigm engine against eager PyTorch and torch.compile"),
    "evaluate": ("gradsurg.train.evaluate", "STS evaluation (Spearman/Pearson of cosine) of an encoder on one file, or the seven "
                 "STS tasks of a folder (--suite)"),
    "ablate": ("gradsurg.train.ablate", "train sentence encoders over a grid of losses/components/seeds"),
    "plot": ("gradsurg.analysis.cli", "draw the paper's GD / W / R diagnostic figures"),
    "doctor": ("gradsurg.doctor", "versions, the GPU, and which backend 'auto' picks for a dtype and d, and why"),
}


def int_at_least(low: int):
    """An argparse ``type``: an integer >= ``low`` (else a usage error naming the option)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def version_line() -> str:
    """``gradsurg X.Y.Z (PATH; Python A.B.C, torch D.E.F)``: what ``gradsurg --version`` prints."""
    import os
    import platform

    import torch

    from . import __file__ as package_file
    from . import __version__

    return (f"gradsurg {__version__} ({os.path.dirname(os.path.abspath(package_file))}; "
            f"Python {platform.python_version()}, torch {torch.__version__})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradsurg",
        description="Gradient surgery for contrastive representation learning.",
    )
    parser.add_argument("-V", "--version", action="store_true",
                        help="print the version of gradsurg (and where it is imported from, Python, torch) and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in ("-V", "--version"):
        print(version_line())
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help") and argv[0] not in COMMANDS:
            parser.error(f"unknown command {argv[0]!r}; expected one of {', '.join(COMMANDS)}")
        parser.print_help()
        return 0
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # an optional extra is missing
        print(f"gradsurg {name}: cannot import {module_name}: {exc}", file=sys.stderr)
        return 2
    cmd_parser = argparse.ArgumentParser(prog=f"gradsurg {name}", description=help_text)
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (a command may say more first)
        print(f"\ngradsurg {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
