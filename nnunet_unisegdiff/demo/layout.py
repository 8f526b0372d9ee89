"""The demo's run folders: a new `run_NNN` per run, nnU-Net's folders inside it unless the user set
them, and the checks that nothing earlier (another dataset with the demo's ID, a run folder that
is not the demo's) is ever replaced."""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DATASET_NAME = "UniSegDiffDemo"
RUN_MARKER = "demo.json"           # written first into every run folder: only such folders are replaced
NNUNET_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
RUN_PATTERN = re.compile(r"run_(\d{3,})")


class DemoError(RuntimeError):
    """A condition the user must resolve (existing results, a failed nnU-Net command)."""


@dataclass
class Layout:
    run_dir: Path
    nnunet: dict[str, Path]          # nnUNet_raw / _preprocessed / _results -> folder
    user_set: dict[str, bool]        # whether the user's environment named that folder

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def predictions(self) -> Path:
        return self.run_dir / "predictions"

    @property
    def evaluation(self) -> Path:
        return self.run_dir / "evaluation"

    @property
    def report(self) -> Path:
        return self.run_dir / "report"


def run_number(path: Path) -> int | None:
    m = RUN_PATTERN.fullmatch(path.name)
    return int(m.group(1)) if m else None


def existing_runs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and run_number(p) is not None), key=run_number)


def choose_run_dir(root: Path, run_name: str | None = None, overwrite: bool = False) -> Path:
    """The run folder to use. Default: the next `run_NNN`. `run_name`: that folder, refused when it
    holds anything unless `overwrite`. `overwrite` without a name: the latest run is replaced.
    A folder is only ever replaced when it holds the demo's marker file."""
    root = Path(root)
    if run_name is None:
        runs = existing_runs(root)
        if not overwrite or not runs:
            n = (run_number(runs[-1]) + 1) if runs else 1
            return root / f"run_{n:03d}"
        target = runs[-1]
    else:
        if Path(run_name).name != run_name or run_name in ("", ".", ".."):
            raise DemoError(f"--run takes a folder name inside {root}, got {run_name!r}")
        target = root / run_name
    if target.exists() and any(target.iterdir()):
        if not overwrite:
            raise DemoError(f"{target} already holds a demo run; pass --overwrite to replace it, or "
                            "leave out --run to start a new numbered run")
        if not (target / RUN_MARKER).is_file():
            raise DemoError(f"{target} is not a demo run folder (no {RUN_MARKER}); not replacing it")
    return target


def nnunet_folders(run_dir: Path, environ: Mapping[str, str]) -> tuple[dict[str, Path], dict[str, bool]]:
    """The user's nnU-Net folders where set, otherwise folders inside the run."""
    folders, user_set = {}, {}
    for var in NNUNET_VARS:
        value = environ.get(var, "").strip()
        user_set[var] = bool(value)
        folders[var] = Path(value).expanduser().resolve() if value else run_dir.resolve() / var
    return folders, user_set


def dataset_folders(folders: Mapping[str, Path], dataset_id: int) -> list[Path]:
    """Every `DatasetNNN_*` folder of this ID in the raw, preprocessed and results folders."""
    found = []
    for var in NNUNET_VARS:
        root = folders[var]
        if root.is_dir():
            found += sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(f"Dataset{dataset_id:03d}_"))
    return found


def check_dataset_id(folders: Mapping[str, Path], dataset_id: int, overwrite: bool,
                     name: str = DATASET_NAME) -> None:
    """Refuse to clobber: another dataset with this ID is never touched; the demo's own dataset from
    an earlier run only with `overwrite`."""
    found = dataset_folders(folders, dataset_id)
    foreign = [p for p in found if p.name != f"Dataset{dataset_id:03d}_{name}"]
    if foreign:
        raise DemoError(f"{foreign[0]} holds another dataset with ID {dataset_id}; "
                        f"choose a free one with --dataset-id")
    if found and not overwrite:
        raise DemoError(f"{found[0]} exists from an earlier demo run; pass --overwrite to replace the demo's "
                        f"dataset and models there, or --dataset-id N for a free ID")


def prepare_layout(root: Path, run_name: str | None, overwrite: bool, dataset_id: int,
                   environ: Mapping[str, str] | None = None) -> Layout:
    """Choose the run folder, check nothing would be clobbered, then create it with its marker."""
    environ = os.environ if environ is None else environ
    run_dir = choose_run_dir(Path(root), run_name, overwrite)
    folders, user_set = nnunet_folders(run_dir, environ)
    shared = {var: p for var, p in folders.items() if user_set[var]}
    if shared:
        check_dataset_id(shared, dataset_id, overwrite)
    if run_dir.exists():  # only reached with --overwrite on a folder holding the marker
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / RUN_MARKER).write_text(json.dumps({"status": "started", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                  "nnunet_folders": {k: str(v) for k, v in folders.items()}},
                                                 indent=1) + "\n")
    return Layout(run_dir=run_dir, nnunet=folders, user_set=user_set)
