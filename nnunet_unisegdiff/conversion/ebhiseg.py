"""EBHI-Seg (Shi et al. 2023; figshare 21540159): H&E colorectal histology, 224x224 RGB PNGs.

Real layout (docs/datasets.md, EBHI-Seg): `EBHI-SEG/<Class>/image/<name>.png` with
`EBHI-SEG/<Class>/label/<name>.png` (same name); class folders contain spaces (`High-grade IN`);
stray `.DS_Store` files. SOURCE_DIR may be the folder holding `EBHI-SEG/`, `EBHI-SEG/` itself,
or a Kaggle copy with one more folder level.

Labels are 8-bit grey and *not* binary (anti-aliased edges, one label is all 253), so foreground
is `value >= 128`, never `== 255`. The Adenocarcinoma subset (795 images, the paper's) is the
default; `--classes` picks others (`all`, or a comma-separated list). Images without a label
(Low-grade IN has two) are reported as orphans. Case IDs carry the class
(`EBHI_Adeno_GT2001837-1-400-001`: 46 names occur in several classes); the group is the
case-folded token before the first `-` (`GTxc2014065` and `GTXC2014065` are the same case), so
grouped splits never put one case on both sides even across classes.
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

from .common import Case, LayoutError, Orphan, lazy_case
from .reading import list_files, natural_key, pair_by_stem, read_image, read_mask, sanitize_id
from .registry import RGB, ConverterSpec

SOURCE = "EBHI-Seg"
THRESHOLD = 128
# folder name -> short name used in case IDs
CLASSES = {
    "Adenocarcinoma": "Adeno",
    "High-grade IN": "HGIN",
    "Low-grade IN": "LGIN",
    "Normal": "Normal",
    "Polyp": "Polyp",
    "Serrated adenoma": "Serrated",
}
DEFAULT_CLASSES = "Adenocarcinoma"


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.casefold())


def _is_class_dir(p: Path) -> bool:
    return p.is_dir() and (p / "image").is_dir()


def find_root(source_dir: Path) -> Path:
    """The folder whose children are the class folders (each with `image/` and `label/`)."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise LayoutError(f"{source_dir}: folder not found")
    frontier = [source_dir]
    for _ in range(3):  # SOURCE_DIR, EBHI-SEG/, one extra wrapper level
        for d in frontier:
            if any(_is_class_dir(c) for c in d.iterdir()):
                return d
        frontier = [c for d in frontier for c in sorted(d.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    raise LayoutError(f"{source_dir}: unknown EBHI-Seg layout; expected EBHI-SEG/<Class>/image/*.png "
                      "and EBHI-SEG/<Class>/label/*.png (the unpacked figshare/Kaggle download)")


def select_classes(root: Path, classes: str | list[str] = DEFAULT_CLASSES) -> list[Path]:
    """Class folders named by `classes` ("all", a name, or a comma-separated list; matching ignores
    case, spaces and punctuation: `high-grade-in` finds `High-grade IN`)."""
    available = {(_norm(p.name)): p for p in sorted(root.iterdir(), key=lambda p: natural_key(p.name))
                 if _is_class_dir(p)}
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    if [c.casefold() for c in classes] == ["all"]:
        return list(available.values())
    chosen = []
    for c in classes:
        key = _norm(c)
        if key not in available:
            raise LayoutError(f"{root}: class {c!r} not found; available: "
                              f"{', '.join(p.name for p in available.values())}")
        if available[key] not in chosen:
            chosen.append(available[key])
    if not chosen:
        raise ValueError("no EBHI-Seg class selected")
    return chosen


def group_of(stem: str) -> str:
    """Case-folded token before the first '-': `GTXC2014065-1-400-002` -> `gtxc2014065`."""
    return stem.split("-", 1)[0].casefold()


def short_name(class_folder: str) -> str:
    by_norm = {_norm(k): v for k, v in CLASSES.items()}
    return by_norm.get(_norm(class_folder), sanitize_id(class_folder))


def load_pair(image_path: Path, label_path: Path):
    """(RGB image, 0/1 label at >= 128); sizes are checked by `write_dataset` (origin names both)."""
    return read_image(image_path, "RGB"), read_mask(label_path, threshold=THRESHOLD)


def read(source_dir, classes: str | list[str] = DEFAULT_CLASSES, **_) -> Iterator[Case | Orphan]:
    """Yield a lazy `Case` per image/label pair of the chosen classes, and an `Orphan` per
    unpaired file."""
    root = find_root(Path(source_dir))
    for cdir in select_classes(root, classes):
        images = list_files(cdir / "image", (".png",))
        labels = list_files(cdir / "label", (".png",)) if (cdir / "label").is_dir() else []
        pairs, orphans = pair_by_stem(images, labels)
        yield from orphans
        tag = short_name(cdir.name)
        for im, lab in pairs:
            yield lazy_case(f"EBHI_{tag}_{sanitize_id(im.stem)}", lambda im=im, lab=lab: load_pair(im, lab),
                            group=group_of(im.stem), source=SOURCE, origin=f"{im} + {lab}")


def dataset_name(opts: dict) -> str:
    classes = opts.get("classes", DEFAULT_CLASSES)
    names = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else list(classes)
    if [_norm(c) for c in names] == [_norm(DEFAULT_CLASSES)]:
        return "EBHISeg"
    if [c.casefold() for c in names] == ["all"]:
        return "EBHISeg_all"
    return "EBHISeg_" + "-".join(short_name(c) for c in names)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classes", default=DEFAULT_CLASSES,
                   help="class folder(s), comma-separated, or 'all' (default Adenocarcinoma; others: "
                        + ", ".join(k for k in CLASSES if k != DEFAULT_CLASSES) + ")")


SPEC = ConverterSpec(
    name="ebhiseg",
    paper_task="ADC",
    sources=(SOURCE, "EBHI", "Adenocarcinoma"),
    description="EBHI-Seg H&E histology (Adenocarcinoma by default), labels thresholded at 128; "
                "groups = case-folded case tokens.",
    read=read,
    dataset_name=dataset_name,
    channel_names=RGB,
    add_arguments=add_arguments,
    download="figshare https://doi.org/10.6084/m9.figshare.21540159 (Kaggle mirror "
             "orvile/ebhi-seg-colorectal-cancer)",
    reference="Shi et al., EBHI-Seg (2023)",
)
