"""The one writer of converted datasets: `write_dataset` validates every case and writes the
dataset atomically with its dataset.json, per-case source table, splits and summary (see
`common.py` for the contract)."""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from tqdm import tqdm

from nnunet_unisegdiff.defaults import DEFAULT_SEED

from . import splits as splits_mod
from .common import BadPairError, Case, DatasetExistsError, LayoutError, Orphan
from .validation import CASE_ID, check_declaration, validate_pair

log = logging.getLogger("nnunet_unisegdiff.conversion")


@dataclass(frozen=True)
class DatasetDeclaration:
    """The dataset `write_dataset` writes: nnU-Net's ID and name, dataset.json's fields, the splits.

    channel_names: {0: "R", 1: "G", 2: "B"} for RGB, {0: "US"} etc. for grey (nnU-Net semantics).
    labels: {"background": 0, "lesion": 1, ...}, consecutive from 0.
    folds: "5" (nnU-Net's default 5-fold), "paper4" (4 random equal folds), an int, None, or a
    function of the sorted written case IDs returning the splits (e.g. BTD's cvind.mat folds).
    stratify_by_source: split each source on its own and join fold k of all (merged datasets).
    """
    dataset_id: int
    name: str
    channel_names: dict
    labels: dict
    folds: str | int | Callable[[list[str]], list[dict]] | None = "5"
    seed: int = DEFAULT_SEED
    stratify_by_source: bool = False
    description: str | None = None
    reference: str | None = None
    release: str | None = None
    license: str | None = None


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _existing(root: Path, dataset_id: int) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(f"Dataset{dataset_id:03d}_"))


def _resolve_root(root: Path | str | None, env: str) -> Path | None:
    if root is not None:
        return Path(root)
    value = os.environ.get(env)
    return Path(value) if value else None


@dataclass
class Summary:
    dataset: str
    path: str
    cases_written: int = 0
    test_cases_written: int = 0
    empty_masks: int = 0
    label_counts: dict = field(default_factory=dict)  # label value -> number of cases containing it
    sources: dict = field(default_factory=dict)  # source -> number of training cases
    groups_found: int = 0
    ungrouped_cases: int = 0
    split_level: str = "none"
    folds: int = 0
    splits_file: str | None = None
    bad_pairs_skipped: list = field(default_factory=list)  # "origin: problem"
    orphans_skipped: list = field(default_factory=list)  # "path: problem"

    def text(self) -> str:
        lines = [f"{self.dataset}: {self.cases_written} training cases written to {self.path}"]
        if self.test_cases_written:
            lines.append(f"  test cases (imagesTs/labelsTs): {self.test_cases_written}")
        lines.append(f"  empty masks: {self.empty_masks}")
        if len(self.sources) > 1:
            lines.append("  per source: " + ", ".join(f"{k} {v}" for k, v in self.sources.items()))
        lines.append(f"  bad pairs skipped: {len(self.bad_pairs_skipped)}")
        lines.append(f"  orphans skipped: {len(self.orphans_skipped)}")
        lines.append(f"  groups found: {self.groups_found}"
                     + (f" (+{self.ungrouped_cases} ungrouped cases as their own group)"
                        if self.groups_found and self.ungrouped_cases else ""))
        if self.folds:
            lines.append(f"  splits: {self.folds} folds at {self.split_level} level -> {self.splits_file}")
            if self.splits_file.startswith(self.path + os.sep):
                lines.append("  (nnUNet_preprocessed is not set: copy splits_final.json to "
                             f"$nnUNet_preprocessed/{self.dataset}/ before training)")
        else:
            lines.append("  splits: not written")
        return "\n".join(lines)


@dataclass
class _Targets:
    """Where a dataset goes, and what of the same ID is already there."""
    root: Path                 # nnUNet_raw
    dataset_name: str          # DatasetXXX_Name
    existing: list[Path]       # raw folders of this ID (replaced only with overwrite)
    pre_root: Path | None      # nnUNet_preprocessed, if known

    @property
    def target(self) -> Path:
        return self.root / self.dataset_name


def _resolve_targets(out_root, preprocessed_root, dataset_id: int, name: str, overwrite: bool) -> _Targets:
    root = _resolve_root(out_root, "nnUNet_raw")
    if root is None:
        raise LayoutError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw (or pass out_root)")
    dataset_name = f"Dataset{int(dataset_id):03d}_{name}"
    existing = _existing(root, int(dataset_id))
    if existing and not overwrite:
        raise DatasetExistsError(f"{existing[0]} already exists; pass --overwrite to replace it")
    pre_root = _resolve_root(preprocessed_root, "nnUNet_preprocessed")
    for other in _existing(pre_root, int(dataset_id)) if pre_root else []:
        if other.name != dataset_name:
            raise DatasetExistsError(f"{other} holds another dataset with ID {dataset_id}; nnU-Net would "
                                     f"not know which one to use. Remove it or choose another ID")
    return _Targets(root, dataset_name, existing, pre_root)


@dataclass
class _CaseWriter:
    """Validates and writes the cases of one dataset into the temporary folder `tmp`, keeping the
    per-case source table and the counts of the summary."""
    tmp: Path
    summary: Summary
    name: str
    num_channels: int
    num_labels: int
    skip_bad: bool
    progress: bool
    quiet: bool
    table: dict[str, dict] = field(default_factory=dict)
    label_counter: Counter = field(default_factory=Counter)
    train_groups: dict[str, str | None] = field(default_factory=dict)
    train_sources: dict[str, str] = field(default_factory=dict)

    def write_all(self, items: Iterable[Case | Orphan], subset: str) -> int:
        """Write every usable case of `items` to images{subset}/ (labels{subset}/); the count written."""
        (self.tmp / f"images{subset}").mkdir()
        total = len(items) if hasattr(items, "__len__") else None
        bar = tqdm(items, total=total, desc=f"{self.summary.dataset} {subset}", unit="case",
                   disable=not self.progress, file=sys.stderr, leave=False)
        n = 0
        for item in bar:
            if isinstance(item, Orphan):
                self.summary.orphans_skipped.append(f"{item.path}: {item.problem}")
                log.warning("skipped %s: %s", item.path, item.problem)
                continue
            try:
                image, label = self._checked(item, subset)
            except BadPairError as e:
                if not self.skip_bad:
                    raise
                self.summary.bad_pairs_skipped.append(str(e))
                log.warning("skipped bad pair: %s", e)
                if not self.quiet:
                    bar.write(f"skipped bad pair: {e}", file=sys.stderr)
                continue
            self._store(item, image, label, subset)
            n += 1
        bar.close()
        return n

    def _checked(self, item: Case, subset: str) -> tuple[np.ndarray, np.ndarray | None]:
        if not CASE_ID.match(item.case_id or ""):
            raise BadPairError(f"{item.origin}: invalid case ID {item.case_id!r} (use [A-Za-z0-9_-])")
        if item.case_id in self.table:
            raise BadPairError(f"{item.origin}: duplicate case ID {item.case_id!r} "
                               f"(also {self.table[item.case_id]['origin']})")
        try:
            image, label = item.arrays()
        except OSError as e:  # unreadable/truncated file inside a lazy loader
            raise BadPairError(f"{item.origin or item.case_id}: cannot read ({e})") from None
        if label is None and subset == "Tr":
            raise BadPairError(f"{item.origin}: training case without label")
        return validate_pair(image, label, num_channels=self.num_channels, num_labels=self.num_labels,
                             origin=item.origin)

    def _store(self, item: Case, image: np.ndarray, label: np.ndarray | None, subset: str) -> None:
        write_png(self.tmp / f"images{subset}" / f"{item.case_id}_0000.png", image)
        if label is not None:
            (self.tmp / f"labels{subset}").mkdir(exist_ok=True)
            write_png(self.tmp / f"labels{subset}" / f"{item.case_id}.png", label)
        self.table[item.case_id] = {"source": item.source, "group": item.group, "subset": subset,
                                    "origin": item.origin, **item.meta}
        if subset == "Tr":
            present = np.unique(label)
            self.label_counter.update(int(v) for v in present)
            self.summary.empty_masks += int(present.max() == 0)
            self.train_groups[item.case_id] = item.group
            self.train_sources[item.case_id] = item.source or self.name


def _splits(writer: _CaseWriter, folds, seed: int, stratify_by_source: bool) -> list[dict] | None:
    """The training cases' splits (and the summary's group counts and split level)."""
    summary, groups = writer.summary, writer.train_groups
    ids = sorted(groups)
    grouped = [g for g in groups.values() if g is not None]
    summary.groups_found = len(set(grouped))
    summary.ungrouped_cases = len(ids) - len(grouped)
    if callable(folds):
        summary.split_level = "given"
        return folds(ids)
    if folds is None:
        return None
    strata = [writer.train_sources[i] for i in ids] if stratify_by_source else None
    split_json, summary.split_level = splits_mod.make_splits(ids, [groups[i] for i in ids],
                                                             n_folds=splits_mod.num_folds(folds), seed=seed,
                                                             strata=strata)
    return split_json


def write_dataset(cases: Iterable[Case | Orphan], declaration: DatasetDeclaration, *,
                  test_cases: Iterable[Case | Orphan] | None = None, out_root: Path | str | None = None,
                  preprocessed_root: Path | str | None = None, overwrite: bool = False, skip_bad: bool = False,
                  progress: bool = True, quiet: bool = False) -> Path:
    """Validate and write `cases` as `{out_root}/Dataset{dataset_id:03d}_{name}`; return its path.

    cases: `Case`s (eager or lazy) and `Orphan`s (counted and reported, never written).
    test_cases: optional held-out cases written to `imagesTs/` (+ `labelsTs/` when labelled).
    out_root: defaults to $nnUNet_raw.  preprocessed_root: defaults to $nnUNet_preprocessed (no
    splits are written there when it is unset; the raw folder still gets a copy).
    skip_bad: report and skip unusable pairs instead of stopping at the first one.
    """
    d = declaration
    check_declaration(d.dataset_id, d.name, d.channel_names, d.labels)
    where = _resolve_targets(out_root, preprocessed_root, d.dataset_id, d.name, overwrite)
    where.root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_{where.dataset_name}_", dir=where.root))
    summary = Summary(dataset=where.dataset_name, path=str(where.target))
    writer = _CaseWriter(tmp, summary, d.name, len(d.channel_names), len(d.labels), skip_bad, progress, quiet)
    try:
        _write_cases(writer, cases, test_cases)
        generate_dataset_json(
            str(tmp), channel_names=dict(d.channel_names), labels=dict(d.labels),
            num_training_cases=summary.cases_written, file_ending=".png", dataset_name=where.dataset_name,
            description=d.description, reference=d.reference, release=d.release,
            license=d.license or "see the original dataset's licence",
            converted_by="nnunet_unisegdiff.conversion")
        _write_table(tmp, writer.table)
        split_json = _splits(writer, d.folds, d.seed, d.stratify_by_source)
        if split_json:
            summary.folds = len(split_json)
            (tmp / "splits_final.json").write_text(json.dumps(split_json, indent=1))
            summary.splits_file = str((where.pre_root / where.dataset_name if where.pre_root else where.target)
                                      / "splits_final.json")
        (tmp / "conversion_summary.json").write_text(json.dumps(asdict(summary), indent=1))
        for old in where.existing:  # complete: move into place
            shutil.rmtree(old)
        os.replace(tmp, where.target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if split_json and where.pre_root is not None:
        splits_mod.write_splits(split_json, where.dataset_name, where.pre_root)
    if not quiet:
        print(summary.text())
    log.info(summary.text())
    return where.target


def _write_cases(writer: _CaseWriter, cases: Iterable[Case | Orphan],
                 test_cases: Iterable[Case | Orphan] | None) -> None:
    """Training cases (at least one must be usable), then the held-out ones; fills the summary."""
    summary = writer.summary
    summary.cases_written = writer.write_all(cases, "Tr")
    if summary.cases_written == 0:
        raise LayoutError(f"no usable cases found for {summary.dataset}"
                          + (f" ({len(summary.orphans_skipped)} orphans, "
                             f"{len(summary.bad_pairs_skipped)} bad pairs skipped)"
                             if summary.orphans_skipped or summary.bad_pairs_skipped else ""))
    if test_cases is not None:
        summary.test_cases_written = writer.write_all(test_cases, "Ts")
    summary.label_counts = {str(k): writer.label_counter[k] for k in sorted(writer.label_counter)}
    summary.sources = dict(Counter(writer.train_sources.values()))


def _write_table(folder: Path, table: dict[str, dict]) -> None:
    (folder / "sources.json").write_text(json.dumps(table, indent=1))
    with open(folder / "sources.csv", "w", newline="") as f:
        w = csv.writer(f)
        base = ["source", "group", "subset", "origin"]
        extra = sorted({k for row in table.values() for k in row} - set(base))
        w.writerow(["case_id", *base, *extra])
        for cid, row in table.items():
            w.writerow([cid, row["source"], row["group"] or "", row["subset"], row["origin"],
                        *(row.get(k, "") for k in extra)])


def read_sources(dataset_folder: Path | str) -> dict[str, dict]:
    """The per-case source table written beside dataset.json ({} when absent)."""
    p = Path(dataset_folder) / "sources.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def load_summary(dataset_folder: Path | str) -> dict:
    return json.loads((Path(dataset_folder) / "conversion_summary.json").read_text())
