"""`unisegdiff convert NAME SOURCE_DIR -d ID [--overwrite] [--skip-bad] [--folds {5,paper4}] [--seed N]
[converter options]`: one subcommand per converter listed in `registry.py`; the scripts in the
repository's `dataset_conversion/` folder run the same through `run_script`.

Bad input (a bad pair, a missing folder, an unknown layout, an existing dataset) ends with a one-line
`error:` message and exit code 1, without a traceback.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nnunet_unisegdiff.defaults import DEFAULT_SEED

from .common import ConversionError
from .registry import available_specs, convert, get_spec


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert", help="convert a downloaded dataset into nnU-Net v2 raw format",
        description="Convert one of the paper's datasets (or the synthetic set) into "
                    "$nnUNet_raw/DatasetXXX_Name, with splits_final.json in $nnUNet_preprocessed.")
    conv = p.add_subparsers(dest="converter", required=True, metavar="NAME")
    for spec in available_specs():
        add_options(conv.add_parser(spec.name, help=spec.description, description=_description(spec)), spec)


def run_script(name: str, argv: Sequence[str] | None = None) -> int:
    """`python dataset_conversion/DatasetNNN_Name.py SOURCE_DIR ...`: `unisegdiff convert NAME`."""
    spec = get_spec(name)
    parser = argparse.ArgumentParser(description=_description(spec))  # prog: the script's file name
    add_options(parser, spec)
    args = parser.parse_args(argv)
    return args.func(args)


def _description(spec) -> str:
    return spec.description + (f" Download: {spec.download}" if spec.download else "")


def add_options(sp: argparse.ArgumentParser, spec) -> None:
    """SOURCE_DIR, the options every converter shares and the converter's own; sets `func`."""
    if spec.source_required:
        sp.add_argument("source_dir", metavar="SOURCE_DIR", help="the unpacked download")
    else:
        sp.add_argument("source_dir", metavar="SOURCE_DIR", nargs="?", default=None,
                        help="not needed for this converter (omit or '-')")
    sp.add_argument("-d", "--dataset-id", type=int, default=spec.dataset_id,
                    help=f"nnU-Net dataset ID (default {spec.dataset_id})")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing DatasetXXX_*")
    sp.add_argument("--skip-bad", action="store_true",
                    help="report and skip unusable image/label pairs instead of stopping")
    sp.add_argument("--folds", choices=["5", "paper4", *spec.fold_schemes], default="5",
                    help="5: nnU-Net's default 5 folds; paper4: the paper's 4 random equal folds"
                         + "".join(f"; {k}: the dataset's own folds" for k in spec.fold_schemes))
    sp.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the splits (and of any sampling)")
    sp.add_argument("-o", "--out-root", default=None, help="raw folder (default $nnUNet_raw)")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    before = {a.dest for a in sp._actions}
    if spec.add_arguments is not None:
        spec.add_arguments(sp)
    own = sorted({a.dest for a in sp._actions} - before - {"help"})
    sp.set_defaults(func=lambda args, spec=spec, own=own: _run(args, spec, own))


def _run(args: argparse.Namespace, spec, own: list[str]) -> int:
    opts = {k: getattr(args, k) for k in own}
    try:
        convert(spec, args.source_dir, dataset_id=args.dataset_id, overwrite=args.overwrite,
                skip_bad=args.skip_bad, folds=args.folds, seed=args.seed, out_root=args.out_root,
                progress=not args.quiet, **opts)
    except ConversionError as e:
        print(f"unisegdiff convert {spec.name}: error: {e}", file=sys.stderr)
        return 1
    return 0
