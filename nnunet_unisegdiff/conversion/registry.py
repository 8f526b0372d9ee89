"""The one place that lists the converters, their default dataset IDs, and what a converter is.

A converter module defines `SPEC = ConverterSpec(...)`: its CLI name, a one-line description, a
`read(source_dir, **opts)` yielding `Case`/`Orphan` records (see `common.py`), the dataset name,
channel names and labels (each a value, or a function of the converter's options dict, which also
holds "source_dir"), and an
`add_arguments(parser)` for its own options. `read` receives exactly those options as keyword
arguments, plus `seed` when the spec says `seeded=True` (its reader samples). `convert()` runs one converter from
Python; `cli.py` exposes the same as `unisegdiff convert NAME SOURCE_DIR -d ID ...`.

Default IDs (`DEFAULT_IDS`, the one place they are declared) sit in the 5xx range, clear of
nnU-Net's reserved 001-010 (Decathlon) and of its own example datasets (1xx-2xx).
"""
from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnunet_unisegdiff.defaults import DEFAULT_SEED

from .common import Case, LayoutError, Orphan
from .writer import DatasetDeclaration, write_dataset

# CLI name -> module. Order = order in `unisegdiff convert --help`.
CONVERTER_MODULES: dict[str, str] = {
    "amdsd": "nnunet_unisegdiff.conversion.amdsd",
    "btd": "nnunet_unisegdiff.conversion.btd",
    "ebhiseg": "nnunet_unisegdiff.conversion.ebhiseg",
    "polyp": "nnunet_unisegdiff.conversion.polyp",
    "covid19": "nnunet_unisegdiff.conversion.covid19",
    "busi": "nnunet_unisegdiff.conversion.busi",
    "unified": "nnunet_unisegdiff.conversion.unified",
    "synthetic": "nnunet_unisegdiff.conversion.synthetic",
}

DEFAULT_IDS: dict[str, int] = {
    "amdsd": 501,
    "btd": 502,
    "ebhiseg": 503,
    "polyp": 504,
    "covid19": 505,
    "busi": 506,
    "unified": 510,
    "synthetic": 599,
}

RGB = {0: "R", 1: "G", 2: "B"}
BINARY = {"background": 0, "lesion": 1}


def _resolve(value, opts: dict):
    return value(opts) if callable(value) else value


@dataclass(frozen=True)
class ConverterSpec:
    name: str
    description: str
    read: Callable[..., Iterable[Case | Orphan]]
    dataset_name: str | Callable[[dict], str]
    channel_names: dict | Callable[[dict], dict] = field(default_factory=lambda: dict(RGB))
    labels: dict | Callable[[dict], dict] = field(default_factory=lambda: dict(BINARY))
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    source_required: bool = True  # False: SOURCE_DIR may be omitted or "-"
    read_test: Callable[..., Iterable[Case | Orphan]] | None = None  # held-out cases -> imagesTs
    seeded: bool = False  # read/read_test sample and take the conversion's `seed`
    download: str = ""  # where users get the data (help text, README)
    reference: str | None = None
    stratify_by_source: bool = False  # splits per source, joined fold-wise (merged datasets)
    # extra --folds choices: name -> fn(source_dir, opts, case_ids) -> splits (e.g. BTD's "cvind")
    fold_schemes: dict[str, Callable[[Path, dict, list[str]], list[dict]]] = field(default_factory=dict)
    paper_task: str | None = None  # the paper's abbreviation of the task (Table 3: WA BT ADC CP LI BL)
    # the names this data goes by in a source table: each case's `source` as `read` writes it, then
    # the names of the original releases (`unisegdiff evaluate --task-map paper` maps them all)
    sources: tuple[str, ...] = ()

    @property
    def dataset_id(self) -> int:
        return DEFAULT_IDS[self.name]

    def info(self, opts: dict) -> dict[str, Any]:
        return {"name": _resolve(self.dataset_name, opts),
                "channel_names": dict(_resolve(self.channel_names, opts)),
                "labels": dict(_resolve(self.labels, opts))}


def paper_task_names() -> tuple[dict[str, str], list[str]]:
    """(name -> the paper's task, tasks in Table 3's order) from the converters of the paper's datasets:
    each maps its CLI name, dataset name, task abbreviation and `sources` to its `paper_task`."""
    names: dict[str, str] = {}
    for spec in available_specs():
        if spec.paper_task is not None:
            own = [spec.paper_task, spec.name, *spec.sources]
            if isinstance(spec.dataset_name, str):
                own.append(spec.dataset_name)
            names |= dict.fromkeys(own, spec.paper_task)
    return names, list(dict.fromkeys(names.values()))


def get_spec(name: str) -> ConverterSpec:
    if name not in CONVERTER_MODULES:
        raise KeyError(f"unknown converter {name!r}; known: {', '.join(CONVERTER_MODULES)}")
    return importlib.import_module(CONVERTER_MODULES[name]).SPEC


def available_specs() -> list[ConverterSpec]:
    """Specs of the converters whose module exists (others are skipped silently)."""
    out = []
    for module in CONVERTER_MODULES.values():
        try:
            out.append(importlib.import_module(module).SPEC)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
    return out


def _read(spec: ConverterSpec, fn: Callable, source: Path | None, opts: dict, seed: int):
    return fn(source, **opts, seed=seed) if spec.seeded else fn(source, **opts)


def convert(name: str | ConverterSpec, source_dir: Path | str | None = None, *, dataset_id: int | None = None,
            overwrite: bool = False, skip_bad: bool = False, folds: str | int | None = "5", seed: int = DEFAULT_SEED,
            out_root: Path | str | None = None, preprocessed_root: Path | str | None = None,
            progress: bool = True, quiet: bool = False, **opts) -> Path:
    """Run one converter: read `source_dir` with the converter's `opts`, write the nnU-Net dataset."""
    spec = name if isinstance(name, ConverterSpec) else get_spec(name)
    source = None
    if source_dir not in (None, "-", ""):
        source = Path(source_dir).expanduser()
        if not source.is_dir():
            raise LayoutError(f"{source}: source folder not found")
    elif spec.source_required:
        raise LayoutError(f"{spec.name}: SOURCE_DIR is required")
    info = spec.info({**opts, "source_dir": source})
    if isinstance(folds, str) and folds in spec.fold_schemes:
        scheme = spec.fold_schemes[folds]
        folds = lambda ids: scheme(source, opts, ids)  # noqa: E731
    cases = _read(spec, spec.read, source, opts, seed)
    test_cases = _read(spec, spec.read_test, source, opts, seed) if spec.read_test is not None else None
    declaration = DatasetDeclaration(
        dataset_id=dataset_id if dataset_id is not None else spec.dataset_id, name=info["name"],
        channel_names=info["channel_names"], labels=info["labels"], folds=folds, seed=seed,
        stratify_by_source=spec.stratify_by_source, description=spec.description, reference=spec.reference,
        release=spec.download or None)
    return write_dataset(cases, declaration, test_cases=test_cases, out_root=out_root,
                         preprocessed_root=preprocessed_root, overwrite=overwrite, skip_bad=skip_bad,
                         progress=progress, quiet=quiet)
