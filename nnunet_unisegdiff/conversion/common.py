"""The shared contract of every converter: readers yield `Case`s, `write_dataset` writes them.

A converter module (`busi.py`, `polyp.py`, ...) only *reads*: its `read(source_dir, **opts)`
yields `Case` records (and `Orphan` records for files it had to skip). Everything a written
dataset guarantees lives here, once:

- every pair is validated (image uint8 (H,W) grey or (H,W,3) RGB; label (H,W) integer with values
  in the declared labels; same H,W; channel count equal to `channel_names`);
- files are written as nnU-Net v2 raw 2D PNGs: `imagesTr/{case_id}_0000.png` (RGB as one file,
  nnU-Net's NaturalImage2DIO exception) and `labelsTr/{case_id}.png` (uint8, values 0..K-1);
- `dataset.json` comes from nnU-Net's own `generate_dataset_json`;
- `sources.json` + `sources.csv` (case_id -> source, group, subset, origin) sit beside it, so
  results can be reported per task and splits can be rebuilt;
- `splits_final.json` (see `splits.py`) goes to `$nnUNet_preprocessed/DatasetXXX_Name/` (a copy
  stays in the raw folder); group level when cases carry groups, image level otherwise;
- all of it is written into a hidden temporary folder beside the target and moved into place
  only when complete: on any error the temporary folder is removed and nothing is left behind;
- an existing `DatasetXXX_*` (same ID, any name) is never replaced unless `overwrite=True`;
- a summary (cases, empty masks, bad pairs skipped, orphans, groups, split level) is printed and
  saved as `conversion_summary.json`.

Lazy cases. A `Case` carries either its arrays (`image`, `label`) or a `load` callable returning
`(image, label)`. Readers that open files should use `load` (see `lazy_case`): listing and pairing
stays cheap, and a file that fails to decode raises `BadPairError` *inside* `write_dataset`, which
can then skip it (`skip_bad=True`) instead of killing the reader's generator.

Errors. `ConversionError` is what the CLI turns into a one-line message and a non-zero exit:
`BadPairError` (a file or pair is unusable; the message names the file(s) and the problem),
`LayoutError` (missing folder, unknown layout, nothing found), `DatasetExistsError`.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from tqdm import tqdm

from nnunet_unisegdiff.defaults import DEFAULT_SEED

from . import splits as splits_mod

log = logging.getLogger("nnunet_unisegdiff.conversion")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_ID_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


# ----------------------------------------------------------------------------------- errors
class ConversionError(Exception):
    """Base of the errors the CLI reports as one line (no traceback)."""


class BadPairError(ConversionError, ValueError):
    """An image/label pair (or one of its files) is unusable; the message names the file(s)."""


class LayoutError(ConversionError):
    """The source folder is missing, empty, or laid out in a way the converter does not know."""


class DatasetExistsError(ConversionError):
    """The target `DatasetXXX_*` exists and `overwrite` was not given."""


# ----------------------------------------------------------------------------------- records
@dataclass
class Case:
    """One 2D training (or test) case.

    image: (H,W) uint8 grey or (H,W,3) uint8 RGB.  label: (H,W) integer, values 0..K-1
    (None only for unlabeled test cases).  Give either the arrays or `load() -> (image, label)`.
    group: patient/sequence key for grouped splits (None: no group known).
    source: task/source name (e.g. "BUSI", "Kvasir"), kept in the per-case source table.
    origin: the source file path(s), used in error messages.
    meta: extra per-case columns for the source table (e.g. BTD's tumour type).
    """

    case_id: str
    image: np.ndarray | None = None
    label: np.ndarray | None = None
    group: str | None = None
    source: str = ""
    origin: str = ""
    load: Callable[[], tuple[np.ndarray, np.ndarray | None]] | None = field(default=None, repr=False)
    meta: dict = field(default_factory=dict)

    def arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(image, label), calling `load` if the case is lazy."""
        if self.load is not None:
            return self.load()
        if self.image is None:
            raise BadPairError(f"{self.origin or self.case_id}: case has neither arrays nor a loader")
        return self.image, self.label


@dataclass
class Orphan:
    """A file a reader skipped (image without mask or the reverse, or another per-file reason)."""

    path: str
    problem: str = "image without mask"


def lazy_case(case_id: str, load: Callable[[], tuple[np.ndarray, np.ndarray | None]], *,
              group: str | None = None, source: str = "", origin: str = "") -> Case:
    return Case(case_id=case_id, group=group, source=source, origin=origin, load=load)


def failed_case(case_id: str, err: BadPairError, *, source: str = "", origin: str = "") -> Case:
    """A case a reader could not even open: it raises `err` when written, so `write_dataset` stops
    or, with `skip_bad`, reports and skips it, as for any other bad pair."""
    def load():
        raise err
    return lazy_case(case_id, load, source=source, origin=origin)


# ----------------------------------------------------------------------------------- helpers for readers
def sanitize_id(text: str) -> str:
    """`benign (1)` -> `benign_1`: only [A-Za-z0-9_-], runs of anything else become one `_`."""
    out = re.sub(r"[^A-Za-z0-9\-]+", "_", str(text)).strip("_-")
    if not out:
        raise ValueError(f"cannot make a case ID from {text!r}")
    return out


def list_files(folder: Path, exts: Sequence[str] = IMAGE_EXTS) -> list[Path]:
    """Plain files in `folder` with one of `exts` (case-insensitive), hidden files (.DS_Store,
    ._foo resource forks) and Thumbs.db excluded, sorted naturally (2 before 10)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LayoutError(f"{folder}: folder not found")
    exts = tuple(e.lower() for e in exts)
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.name.lower() != "thumbs.db"
             and p.suffix.lower() in exts]
    return sorted(files, key=lambda p: natural_key(p.name))


def natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def pair_by_stem(images: Iterable[Path], masks: Iterable[Path],
                 mask_stem: Callable[[str], str | Sequence[str]] = lambda s: s,
                 ) -> tuple[list[tuple[Path, Path]], list[Orphan]]:
    """Pair images with masks by stem: `mask_stem(image_stem)` is the expected mask stem, or a
    sequence of candidate stems tried in order (e.g. `lambda s: (s, "p" + s)`).
    Returns (pairs in image order, orphans: images without mask and masks without image)."""
    by_stem: dict[str, Path] = {}
    for m in masks:
        by_stem.setdefault(m.stem, m)
    pairs, orphans, used = [], [], set()
    for im in images:
        keys = mask_stem(im.stem)
        key = next((k for k in ([keys] if isinstance(keys, str) else keys) if k in by_stem and k not in used), None)
        if key is not None:
            pairs.append((im, by_stem[key]))
            used.add(key)
        else:
            orphans.append(Orphan(str(im), "image without mask"))
    orphans += [Orphan(str(m), "mask without image") for k, m in by_stem.items() if k not in used]
    return pairs, orphans


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError
    try:
        im = Image.open(path)
        im.load()  # decode now: truncated/corrupt files fail here, not later
        return im
    except FileNotFoundError:
        raise BadPairError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadPairError(f"{path}: cannot read image ({e})") from None


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.dtype in (np.uint16, np.int32, np.int64, np.uint32) or np.issubdtype(a.dtype, np.integer):
        return (a.astype(np.float64) / (65535.0 if a.max() > 255 else 255.0) * 255).round().astype(np.uint8)
    return np.clip(a, 0, 255).round().astype(np.uint8)


def read_image(path: Path | str, mode: str = "RGB") -> np.ndarray:
    """Read a 2D image as uint8: mode "RGB" -> (H,W,3) (grey replicated, alpha and palettes
    dropped), "L" -> (H,W). 16-bit images are scaled to 8 bit. Raises BadPairError."""
    path = Path(path)
    im = _open(path)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = _to_uint8(np.asarray(im))
        if a.ndim != 2:
            raise BadPairError(f"{path}: unexpected {a.ndim}-D image")
        return np.repeat(a[..., None], 3, axis=2) if mode == "RGB" else a
    if mode not in ("RGB", "L"):
        raise ValueError(mode)
    if mode == "L" and im.mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr"):
        a = np.asarray(im.convert("RGB"))
        if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
            return np.asarray(im.convert("L"))
        return np.ascontiguousarray(a[..., 0])
    return np.asarray(im.convert(mode))


def read_mask(path: Path | str, threshold: int = 128) -> np.ndarray:
    """Read a binary mask of any PNG/JPEG/TIF/BMP mode as (H,W) uint8 0/1.

    Alpha is dropped; colour channels are averaged (JPEG masks ring in every channel); 16-bit
    masks are scaled to 8 bit. Foreground is `value >= threshold`, except that a mask whose
    maximum is 1 is taken as already 0/1 coded (some re-exports store 0/1)."""
    path = Path(path)
    im = _open(path)
    a = np.asarray(im)
    if im.mode == "P":
        a = np.asarray(im.convert("RGB"))
    if a.ndim == 3:
        if a.shape[2] in (2, 4):  # LA / RGBA: drop alpha
            a = a[..., :-1]
        a = a.mean(axis=2)
    elif a.ndim != 2:
        raise BadPairError(f"{path}: mask has unexpected shape {a.shape}")
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype != np.float64 and a.max() > 255:
        a = a / 257.0
    if a.max() <= 1:
        return (a > 0.5).astype(np.uint8)
    return (a >= threshold).astype(np.uint8)


# ----------------------------------------------------------------------------------- validation
def validate_pair(image: np.ndarray, label: np.ndarray | None, *, num_channels: int, num_labels: int,
                  origin: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Check one pair against the dataset's declaration; return (image, label as uint8)."""
    where = origin or "<case>"
    if not isinstance(image, np.ndarray):
        raise BadPairError(f"{where}: image is not an array")
    if image.dtype != np.uint8:
        raise BadPairError(f"{where}: image dtype {image.dtype}, expected uint8")
    if image.ndim == 2:
        ch = 1
    elif image.ndim == 3 and image.shape[2] == 3:
        ch = 3
    else:
        raise BadPairError(f"{where}: image shape {image.shape}, expected (H,W) grey or (H,W,3) RGB"
                           + (" (RGBA: drop the alpha channel)" if image.ndim == 3 and image.shape[2] == 4 else ""))
    if ch != num_channels:
        raise BadPairError(f"{where}: image has {ch} channel(s), the dataset declares {num_channels}")
    if label is None:
        return image, None
    label = np.asarray(label)
    if label.ndim != 2:
        raise BadPairError(f"{where}: label shape {label.shape} is not single-channel (H,W)")
    if label.shape != image.shape[:2]:
        raise BadPairError(f"{where}: size mismatch, image {image.shape[1]}x{image.shape[0]} vs "
                           f"label {label.shape[1]}x{label.shape[0]} (WxH)")
    if label.dtype == bool:
        label = label.astype(np.uint8)
    if not np.issubdtype(label.dtype, np.integer):
        raise BadPairError(f"{where}: label dtype {label.dtype}, expected integers")
    lo, hi = int(label.min()), int(label.max())
    if lo < 0 or hi >= num_labels:
        found = np.unique(label)
        raise BadPairError(f"{where}: label values {found[:10].tolist()} outside the declared 0..{num_labels - 1}")
    return image, label.astype(np.uint8)


# ----------------------------------------------------------------------------------- writing
def _png(path: Path, array: np.ndarray) -> None:
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


def _check_declaration(dataset_id: int, name: str, channel_names: dict, labels: dict) -> None:
    """Refuse an ID, name, label set or channel count nnU-Net would not accept for 2D PNGs."""
    if not 0 < int(dataset_id) < 1000:
        raise ValueError(f"dataset_id must be 1..999, got {dataset_id}")
    if 1 <= int(dataset_id) <= 10:
        warnings.warn(f"dataset ID {dataset_id} is reserved for the Medical Segmentation Decathlon", stacklevel=2)
    sanitize_id(name)
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name) or "__" in name:
        raise ValueError(f"dataset name {name!r}: use only letters, digits, '-' and single '_'")
    label_values = sorted(int(v) for v in labels.values())
    if label_values != list(range(len(label_values))) or labels.get("background") != 0:
        raise ValueError(f"labels must be consecutive from background=0, got {labels}")
    if len(channel_names) not in (1, 3):
        raise ValueError("2D PNG datasets have 1 (grey) or 3 (RGB) channels")


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
        if not _ID_OK.match(item.case_id or ""):
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
        _png(self.tmp / f"images{subset}" / f"{item.case_id}_0000.png", image)
        if label is not None:
            (self.tmp / f"labels{subset}").mkdir(exist_ok=True)
            _png(self.tmp / f"labels{subset}" / f"{item.case_id}.png", label)
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


def write_dataset(cases: Iterable[Case | Orphan], *, dataset_id: int, name: str, channel_names: dict,
                  labels: dict, out_root: Path | str | None = None, overwrite: bool = False,
                  skip_bad: bool = False, folds: str | int | None = "5", seed: int = DEFAULT_SEED,
                  test_cases: Iterable[Case | Orphan] | None = None,
                  preprocessed_root: Path | str | None = None, description: str | None = None,
                  reference: str | None = None, release: str | None = None, license: str | None = None,
                  progress: bool = True, quiet: bool = False, stratify_by_source: bool = False) -> Path:
    """Validate and write `cases` as `{out_root}/Dataset{dataset_id:03d}_{name}`; return its path.

    cases: `Case`s (eager or lazy) and `Orphan`s (counted and reported, never written).
    channel_names: {0: "R", 1: "G", 2: "B"} for RGB, {0: "US"} etc. for grey (nnU-Net semantics).
    labels: {"background": 0, "lesion": 1, ...}, consecutive from 0.
    out_root: defaults to $nnUNet_raw.  preprocessed_root: defaults to $nnUNet_preprocessed (no
    splits are written there when it is unset; the raw folder still gets a copy).
    folds: "5" (nnU-Net's default 5-fold), "paper4" (4 random equal folds), an int, None, or a
    function of the sorted written case IDs returning the splits (e.g. BTD's cvind.mat folds).
    skip_bad: report and skip unusable pairs instead of stopping at the first one.
    stratify_by_source: split each source on its own and join fold k of all (merged datasets).
    test_cases: optional held-out cases written to `imagesTs/` (+ `labelsTs/` when labelled).
    """
    _check_declaration(dataset_id, name, channel_names, labels)
    where = _resolve_targets(out_root, preprocessed_root, dataset_id, name, overwrite)
    where.root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_{where.dataset_name}_", dir=where.root))
    summary = Summary(dataset=where.dataset_name, path=str(where.target))
    writer = _CaseWriter(tmp, summary, name, len(channel_names), len(labels), skip_bad, progress, quiet)
    try:
        _write_cases(writer, cases, test_cases)
        generate_dataset_json(
            str(tmp), channel_names=dict(channel_names), labels=dict(labels),
            num_training_cases=summary.cases_written, file_ending=".png", dataset_name=where.dataset_name,
            description=description, reference=reference, release=release,
            license=license or "see the original dataset's licence",
            converted_by="nnunet_unisegdiff.conversion")
        _write_table(tmp, writer.table)
        split_json = _splits(writer, folds, seed, stratify_by_source)
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
