"""Runs of `accuracy.py` or `accuracy_real.py` made one seed or split at a time (or on other machines),
combined into one table: mean ± sd over all their seeds or splits, per phase-B budget they share.

    .venv/bin/python benchmarks/combine.py split0.json split1.json split2.json \\
        --json benchmarks/results/accuracy_real_busi.json

Runs with different settings (budgets, width, sizes, data) are refused, naming the setting: their numbers
do not average. Each run's pipeline choice is kept per seed or split.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from _common import add_smoke_arg, apply_smoke, meta, write_json
from accuracy import aggregate, markdown_rows, print_rows

# settings that say how a run was invoked, not what it measured
INVOCATION = {"splits", "seeds", "json", "work", "reuse", "threads", "device", "baselines_only", "smoke",
              "dnet_epochs", "first_split_id"}


class CombineError(ValueError):
    pass


def load_runs(paths: list[Path]) -> tuple[str, dict[str, dict], list[str], dict]:
    """(per_split or per_seed, {run: {budget: scores}}, shared budgets, shared settings) of the files."""
    kind, runs, budgets, settings = None, {}, None, None
    for path in paths:
        data = json.loads(path.read_text())
        results, run_settings = data["results"], data["meta"]["settings"]
        file_kind = next((k for k in ("per_split", "per_seed") if k in results), None)
        if file_kind is None:
            raise CombineError(f"{path}: not a result of accuracy.py or accuracy_real.py (no per_split/per_seed)")
        if kind not in (None, file_kind):
            raise CombineError(f"{path}: {file_kind} results cannot be combined with {kind} results")
        kind = file_kind
        shared = {k: v for k, v in run_settings.items() if k not in INVOCATION}
        if settings is not None:
            differ = sorted(k for k in set(shared) | set(settings) if shared.get(k) != settings.get(k))
            if differ:
                raise CombineError(f"{path}: settings differ from {paths[0]}'s: "
                                   + ", ".join(f"{k} {shared.get(k)!r} vs {settings.get(k)!r}" for k in differ))
        settings = shared
        for run, per_budget in results[kind].items():
            if run in runs:
                raise CombineError(f"{path}: {kind[4:]} {run} is already in an earlier file")
            runs[run] = per_budget
        file_budgets = [b for b in results[kind][next(iter(results[kind]))]] if results[kind] else []
        budgets = file_budgets if budgets is None else [b for b in budgets if b in file_budgets]
    if not runs or not budgets:
        raise CombineError("no runs, or no phase-B budget common to all files")
    return kind, dict(sorted(runs.items(), key=lambda kv: int(kv[0]))), budgets, settings


def combine(paths: list[Path], out: Path | None) -> dict:
    kind, runs, budgets, settings = load_runs(paths)
    per_run = list(runs.values())
    results = {kind: runs, "tables": {b: aggregate(per_run, b) for b in budgets},
               "chosen_pipeline": {b: {r: s[b].get("chosen_pipeline") for r, s in runs.items()} for b in budgets}}
    what = kind[4:] + "s"
    md = []
    for b in budgets:
        print(f"\nmean ± sd over {what} {list(runs)}; phase B {b} epochs; chosen: {results['chosen_pipeline'][b]}")
        print_rows(results["tables"][b])
        md.append(f"Phase B {b} epochs, {what} {list(runs)}, mean ± sd; chosen pipeline per {kind[4:]}: "
                  f"{results['chosen_pipeline'][b]}\n\n" + markdown_rows(results["tables"][b]) + "\n")
    m = meta(torch.device("cpu"), settings=settings, combined_from=[str(p) for p in paths])
    path = write_json("accuracy_combined", m, results, out)
    path.with_suffix(".md").write_text("".join(md))
    return results


def write_smoke_runs(folder: Path) -> list[Path]:
    """Two one-split result files as accuracy_real.py writes them (two rows, one budget), for --smoke."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, dice in ((0, 60.0), (1, 70.0)):
        rows = {name: {"dice_all": dice + shift, "dice_lesion": dice + shift + 5, "iou_all": dice - 10,
                       "false_lesions": 2.0, "lesion_free": 4.0, "entropy": 0.01}
                for name, shift in (("pipeline: cfenet", 0.0), ("pipeline: diffusion", -1.0))}
        results = {"per_split": {str(split): {"20": {"rows": rows, "chosen_pipeline": "cfenet"}}}}
        settings = {"converter": "busi", "splits": f"[{split}]", "size": "64"}
        paths.append(folder / f"split{split}.json")
        paths[-1].write_text(json.dumps({"meta": {"settings": settings}, "results": results}))
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="*", help="JSON files written by accuracy.py or accuracy_real.py")
    ap.add_argument("--json", type=Path, default=None, help="output (default results/accuracy_combined.json)")
    add_smoke_arg(ap)
    args = ap.parse_args(argv)
    if args.smoke:
        apply_smoke(args, "combine", runs=write_smoke_runs(Path(tempfile.mkdtemp(prefix="combine_smoke_"))))
    elif not args.runs:
        ap.error("give the JSON files of the runs (or --smoke)")
    try:
        combine(args.runs, args.json)
    except CombineError as e:
        print(f"combine: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
