"""Where nnU-Net finds the UniSegDiff trainers.

nnU-Net (>= 2.8) scans the folder named by `nnUNet_extTrainer` and imports every module in it as a
top-level module, then drops it from `sys.modules`. That folder is `trainers/` beside this file: it
holds only thin modules that re-export the real classes from the installed package, so everything
nnU-Net pickles keeps an importable home. `unisegdiff trainer-dir` prints its path:

    export nnUNet_extTrainer=$(unisegdiff trainer-dir)
"""
from __future__ import annotations

import argparse
from pathlib import Path

TRAINER_DIR = Path(__file__).resolve().parent / "trainers"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "trainer-dir",
        help="print the folder to put in nnUNet_extTrainer",
        description="Print the folder nnU-Net must scan to find nnUNetTrainerUniSegDiff: "
        "export nnUNet_extTrainer=$(unisegdiff trainer-dir)",
    )
    p.set_defaults(func=lambda args: print(TRAINER_DIR))
