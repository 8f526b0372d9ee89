"""`unisegdiff`: the plugin's command line. Each subcommand lives in its own module, which
provides `register(subparsers)`; this file only lists them.

Only the module of the command being run is imported (all of them for `--help`), so
`unisegdiff trainer-dir`, which shells run inside `export nnUNet_extTrainer=$(...)`, stays quick.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> its module; each module defines `register(subparsers)`, which sets `func`
SUBCOMMANDS = {
    "trainer-dir": "nnunet_unisegdiff.nnunet_ext",
    "evaluate": "nnunet_unisegdiff.evaluation.evaluate",
    "convert": "nnunet_unisegdiff.conversion.cli",
    "demo": "nnunet_unisegdiff.demo.runner",
    "uncertainty": "nnunet_unisegdiff.evaluation.uncertainty",
    "gradients": "nnunet_unisegdiff.analysis.gradients",
    "pipeline": "nnunet_unisegdiff.training.override",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or only `command`'s when it is one of them."""
    parser = argparse.ArgumentParser(
        prog="unisegdiff",
        description="UniSegDiff staged-diffusion lesion segmentation for nnU-Net v2.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    names = [command] if command in SUBCOMMANDS else list(SUBCOMMANDS)
    for name in names:
        importlib.import_module(SUBCOMMANDS[name]).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
