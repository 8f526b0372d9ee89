"""`unisegdiff`: the plugin's command line. Each subcommand lives in its own module, which
provides `register(subparsers)`; this file only lists them."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# module path of each subcommand; each module defines `register(subparsers)` and sets `func`
SUBCOMMAND_MODULES = (
    "nnunet_unisegdiff.nnunet_ext",
    "nnunet_unisegdiff.evaluation.evaluate",
    "nnunet_unisegdiff.conversion.cli",
    "nnunet_unisegdiff.demo.runner",
    "nnunet_unisegdiff.evaluation.uncertainty",
    "nnunet_unisegdiff.analysis.gradients",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unisegdiff",
        description="UniSegDiff staged-diffusion lesion segmentation for nnU-Net v2.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
