"""Merge already-converted nnU-Net 2D datasets into the paper's unified lesion dataset.

    unisegdiff convert unified [RAW_DIR] --datasets 501 502 503 504 505 506 [--resize 256]

RAW_DIR (default `$nnUNet_raw`) is where IDs and `DatasetXXX_Name` names are looked up; a
`--datasets` entry may also be a dataset folder path. Each input must be a 2D PNG/BMP/TIF dataset.

- Channels: a common RGB layout; grey images (1 channel, or 3 single-channel files) are replicated
  or stacked to 3 channels.
- Labels: binary lesion-vs-background by default (every foreground class -> 1, the unified task of
  the paper); `--keep-labels` keeps every input's classes, merged by label name.
- `--resize 256`: every image to 256x256 (bilinear), labels nearest-neighbour (the paper's
  resolution; aspect ratio not kept, as in the paper).
- Case IDs: kept when they already start with the task name (`BUSI_...`, `Polyp_...`), otherwise
  prefixed `<Task>_`. The per-case source table beside dataset.json records the task of each case
  (`source`); group keys are prefixed by the task (`Polyp/ClinicDB_seq07`), so grouped splits stay
  patient-disjoint. Splits are made per task and joined fold-wise, so each task keeps its own folds.
- Held-out `imagesTs` (+`labelsTs`) of the inputs become the unified `imagesTs`/`labelsTs`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import numpy as np

from .common import BadPairError, Case, LayoutError, lazy_case
from .registry import BINARY, DEFAULT_IDS, RGB, ConverterSpec
from .writer import read_sources

PAPER_TASKS = ("amdsd", "btd", "ebhiseg", "polyp", "covid19", "busi")
DEFAULT_DATASETS = tuple(str(DEFAULT_IDS[t]) for t in PAPER_TASKS)
ENDINGS = (".png", ".bmp", ".tif")


def raw_root(source_dir: Path | str | None) -> Path:
    if source_dir not in (None, "", "-"):
        return Path(source_dir)
    env = os.environ.get("nnUNet_raw")
    if not env:
        raise LayoutError("nnUNet_raw is not set: give RAW_DIR or export nnUNet_raw")
    return Path(env)


def locate(ref: str | int | Path, root: Path) -> Path:
    """A dataset folder from an ID (`506`), a name (`Dataset506_BUSI`) or a path."""
    ref_s = str(ref)
    p = Path(ref_s).expanduser()
    if p.is_dir() and (p / "dataset.json").is_file():
        return p
    if re.fullmatch(r"\d{1,3}", ref_s):
        hits = sorted(root.glob(f"Dataset{int(ref_s):03d}_*")) if root.is_dir() else []
        hits = [h for h in hits if h.is_dir()]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise LayoutError(f"{root}: several datasets with ID {ref_s}: {', '.join(h.name for h in hits)}")
        raise LayoutError(f"{root}: no Dataset{int(ref_s):03d}_* found (convert it first)")
    if (root / ref_s / "dataset.json").is_file():
        return root / ref_s
    raise LayoutError(f"{ref_s}: not a dataset ID, a dataset name in {root}, or a folder with dataset.json")


def task_name(folder: Path) -> str:
    m = re.fullmatch(r"Dataset\d{3}_(.+)", folder.name)
    return m.group(1) if m else folder.name


def _dataset_json(folder: Path) -> dict:
    try:
        dj = json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError) as e:
        raise LayoutError(f"{folder / 'dataset.json'}: cannot read ({e})") from None
    if dj.get("file_ending") not in ENDINGS:
        raise LayoutError(f"{folder}: file_ending {dj.get('file_ending')!r} is not a 2D image format "
                          f"({', '.join(ENDINGS)}); unified merges 2D datasets only")
    if any(isinstance(v, (list, tuple)) for v in dj["labels"].values()):
        raise LayoutError(f"{folder}: region-based labels are not supported")
    return dj


def merged_labels(folders: list[Path], keep_labels: bool) -> dict[str, int]:
    if not keep_labels:
        return dict(BINARY)
    names = ["background"]
    for f in folders:
        labels = _dataset_json(f)["labels"]
        for name, _ in sorted(labels.items(), key=lambda kv: int(kv[1])):
            if int(labels[name]) != 0 and name not in names:
                names.append(name)
    return {n: i for i, n in enumerate(names)}


def _read_array(path: Path, label: bool = False) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            a = np.asarray(im)
    except (OSError, UnidentifiedImageError) as e:
        raise BadPairError(f"{path}: cannot read ({e})") from None
    if label:
        if a.ndim != 2:
            raise BadPairError(f"{path}: label is not single-channel (shape {a.shape})")
        return a
    if a.dtype != np.uint8:
        raise BadPairError(f"{path}: image dtype {a.dtype}; unified merges uint8 images only")
    return a


def _resize(a: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    from PIL import Image
    if a.shape[:2] == (size, size):
        return a
    return np.asarray(Image.fromarray(a).resize((size, size), Image.NEAREST if nearest else Image.BILINEAR))


def _loader(channel_files: list[Path], label_file: Path | None, lut: np.ndarray, resize: int | None):
    def load():
        chans = [_read_array(f) for f in channel_files]
        if len(chans) == 1:
            img = chans[0]
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)
            elif img.shape[2] == 4:
                img = img[..., :3]
        elif len(chans) == 3 and all(c.ndim == 2 for c in chans):
            if len({c.shape for c in chans}) != 1:
                raise BadPairError(f"{channel_files[0]}: channel files differ in size")
            img = np.stack(chans, axis=2)
        else:
            raise BadPairError(f"{channel_files[0]}: {len(chans)} channel files; unified takes 1 (grey/RGB) or 3")
        lab = None
        if label_file is not None:
            raw = _read_array(label_file, label=True).astype(np.int64)
            if raw.min() < 0 or raw.max() >= len(lut):
                raise BadPairError(f"{label_file}: label values outside the dataset's declared labels")
            lab = lut[raw].astype(np.uint8)
            if lab.shape != img.shape[:2]:
                raise BadPairError(f"{label_file}: size mismatch with {channel_files[0].name}")
        if resize:
            img = _resize(img, resize, nearest=False)
            lab = _resize(lab, resize, nearest=True) if lab is not None else None
        return np.ascontiguousarray(img), lab
    return load


def _cases_of(folder: Path, subset: str, labels: dict[str, int], keep_labels: bool, resize: int | None) -> list[Case]:
    dj = _dataset_json(folder)
    ending = dj["file_ending"]
    task = task_name(folder)
    img_dir, lab_dir = folder / f"images{subset}", folder / f"labels{subset}"
    if not img_dir.is_dir():
        if subset == "Tr":
            raise LayoutError(f"{folder}: imagesTr not found")
        return []
    src_labels = dj["labels"]
    lut = np.zeros(max(int(v) for v in src_labels.values()) + 1, np.int64)
    for name, v in src_labels.items():
        lut[int(v)] = (labels[name] if keep_labels else 1) if int(v) != 0 else 0
    table = read_sources(folder)
    by_case: dict[str, list[Path]] = {}
    for f in sorted(img_dir.iterdir()):
        if f.name.endswith(ending) and re.fullmatch(r".+_\d{4}", f.name[:-len(ending)]):
            by_case.setdefault(f.name[:-len(ending) - 5], []).append(f)
    out = []
    for cid, files in sorted(by_case.items()):
        label_file = lab_dir / f"{cid}{ending}"
        if not label_file.is_file():
            if subset == "Tr":
                raise BadPairError(f"{folder}: labelsTr/{cid}{ending} missing")
            label_file = None
        new_id = cid if cid.lower().startswith(task.lower()) else f"{task}_{cid}"
        group = table.get(cid, {}).get("group")
        out.append(lazy_case(new_id, _loader(sorted(files), label_file, lut, resize),
                             group=f"{task}/{group}" if group else None, source=task,
                             origin=str(files[0]) + (f" + {label_file}" if label_file else "")))
    return out


def _inputs(source_dir, datasets) -> list[Path]:
    root = raw_root(source_dir)
    folders = [locate(d, root) for d in datasets]
    if len({f.resolve() for f in folders}) != len(folders):
        raise LayoutError("the same dataset is listed twice in --datasets")
    return folders


def read(source_dir: Path | None = None, *, datasets=DEFAULT_DATASETS, resize: int | None = None,
         keep_labels: bool = False) -> list[Case]:
    folders = _inputs(source_dir, datasets)
    labels = merged_labels(folders, keep_labels)
    return [c for f in folders for c in _cases_of(f, "Tr", labels, keep_labels, resize)]


def read_test(source_dir: Path | None = None, *, datasets=DEFAULT_DATASETS, resize: int | None = None,
              keep_labels: bool = False) -> list[Case] | None:
    folders = _inputs(source_dir, datasets)
    labels = merged_labels(folders, keep_labels)
    cases = [c for f in folders for c in _cases_of(f, "Ts", labels, keep_labels, resize)]
    return cases or None


def _labels(opts: dict) -> dict[str, int]:
    if not opts.get("keep_labels"):
        return dict(BINARY)
    return merged_labels(_inputs(opts.get("source_dir"), opts.get("datasets", DEFAULT_DATASETS)), True)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS),
                   help="dataset IDs, names or folders to merge (default: the six paper datasets "
                        f"{' '.join(DEFAULT_DATASETS)})")
    p.add_argument("--resize", type=int, default=None, metavar="N",
                   help="resize everything to NxN (the paper uses 256); labels nearest-neighbour")
    p.add_argument("--keep-labels", action="store_true",
                   help="keep each input's classes (merged by label name) instead of binary lesion")


SPEC = ConverterSpec(
    name="unified",
    description="Merge converted 2D datasets into one RGB dataset (binary lesion by default, optional "
                "resize), with a per-case task table; SOURCE_DIR is the raw folder (default $nnUNet_raw).",
    read=read,
    read_test=read_test,
    dataset_name="Unified",
    channel_names=dict(RGB),
    labels=_labels,
    add_arguments=_add_arguments,
    source_required=False,
    stratify_by_source=True,
)
