"""The task of each case: the converters' per-case source table, renamed to tasks (`--task-map`:
the paper's abbreviations, taken from the converters' specs, or a user's file)."""
from __future__ import annotations

import csv
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from nnunet_unisegdiff.evaluation.cases import EvaluationError, name_list

ALL_TASK, MEAN_TASK = "all", "mean"


def load_sources(path: str | Path, column: str | None = None) -> dict[str, str]:
    """case id -> task, in the table's order, from the unified converter's source table.

    Accepted: JSON `{case_id: task}`, `{case_id: {"task"|"source": ...}}` (what
    `nnunet_unisegdiff.conversion.writer` writes: `sources.json` beside dataset.json, with `source`,
    `group`, `subset`, `origin` per case), a list of records
    `[{"case_id": ..., "task"|"source": ...}]` (also under a top-level `"cases"` key), or a CSV
    with a `case_id` (or `case`) column and a `task` or `source` column. `column` picks the
    grouping field; default `task` when present, else `source`.
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"sources table not found: {path}")
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            records = list(csv.DictReader(f))
    else:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("cases"), (list, dict)):
            data = data["cases"]
        if isinstance(data, dict):
            records = [{"case_id": k, **(v if isinstance(v, dict) else {"task": v})}
                       for k, v in data.items()]
        elif isinstance(data, list):
            records = data
        else:
            raise EvaluationError(f"{path}: expected a JSON object or list of records")
    mapping: dict[str, str] = {}
    for i, rec in enumerate(records):
        case = rec.get("case_id", rec.get("case"))
        key = column or next((k for k in ("task", "source") if k in rec), None)
        if case is None or key is None or key not in rec:
            raise EvaluationError(f"{path}: record {i} has no case_id and "
                                  f"{column or 'task/source'} field: {rec}")
        mapping[str(case)] = str(rec[key])
    return mapping


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def load_task_map(spec: str | Path) -> tuple[dict[str, str], list[str]]:
    """(normalised source name -> task, task order) from `paper` (the converters' map to the paper's
    abbreviations WA BT ADC CP LI BL; names compared lower-case with everything but letters and digits
    removed, "CVC-ClinicDB" -> cvcclinicdb) or a JSON `{source: task}` / CSV `source,task` file."""
    if str(spec) == "paper":
        from nnunet_unisegdiff.conversion.registry import paper_task_names
        names, order = paper_task_names()
        return {_norm(k): v for k, v in names.items()}, order
    path = Path(spec)
    if not path.is_file():
        raise EvaluationError(f"task map not found: {path} (a file, or 'paper')")
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            pairs = [(r["source"], r["task"]) for r in csv.DictReader(f)]
    else:
        pairs = list(json.loads(path.read_text()).items())
    return {_norm(k): str(v) for k, v in pairs}, list(dict.fromkeys(v for _, v in pairs))


def map_tasks(sources: Mapping[str, str], task_map: Mapping[str, str]) -> dict[str, str]:
    """Rename each case's source to its task (sources not in the map keep their name)."""
    return {case: task_map.get(_norm(src), src) for case, src in sources.items()}


def assign_tasks(cases: Sequence[str], sources: Mapping[str, str] | None, *,
                 allow_missing: bool = False) -> dict[str, str]:
    """case -> task; every case is task `all` without a sources table."""
    if sources is None:
        return {c: ALL_TASK for c in cases}
    unknown = [c for c in cases if c not in sources]
    if unknown and not allow_missing:
        raise EvaluationError(f"{len(unknown)} case(s) missing from the sources table: "
                              f"{name_list(unknown)} (use --allow-missing to put them in task "
                              f"'unknown')")
    if unknown:
        warnings.warn(f"{len(unknown)} case(s) not in the sources table go to task 'unknown'",
                      stacklevel=2)
    return {c: sources.get(c, "unknown") for c in cases}


def load_tasks(sources, task_map) -> tuple[dict[str, str] | None, list[str] | None]:
    """case -> task from the sources table (renamed through the task map), and the task order."""
    if not sources:
        if task_map:
            raise EvaluationError("--task-map needs --sources")
        return None, None
    mapping = load_sources(sources)
    order: list[str] = []
    if task_map:
        table, order = load_task_map(task_map)
        mapping = map_tasks(mapping, table)
    return mapping, order + [t for t in dict.fromkeys(mapping.values()) if t not in order]
