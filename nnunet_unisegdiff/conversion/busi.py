"""BUSI breast ultrasound (Al-Dhabyani et al., Data in Brief 2020) -> nnU-Net raw.

Source: `Dataset_BUSI.zip` unpacks to `Dataset_BUSI_with_GT/{benign,malignant,normal}/`; SOURCE_DIR
may be that folder, its parent, or a folder one level above (Kaggle's `archive/`).

Quirks handled (docs/datasets.md, BUSI):
- names `benign (1).png` / `benign (1)_mask.png` / `_mask_1.png` / `_mask_2.png` (space and
  parentheses) -> sanitised IDs `BUSI_benign_0001`;
- every `_mask*` of an image merged by pixel-wise OR (17 images have 2-3 masks);
- masks in L, LA, RGB, RGBA, P or 16-bit modes reduced to one 0/1 channel (alpha dropped);
- images: grey content stored as RGB, some with coloured calipers -> written as RGB (alpha dropped);
- each mask must match its image's size (the error names the mask file);
- benign + malignant = 647 cases as in the paper; `--include-normal` adds the 133 empty-mask
  normal images; no patient IDs exist, so splits are image level.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from .common import BadPairError, Case, LayoutError, Orphan, lazy_case
from .reading import list_files, read_image, read_mask
from .registry import BINARY, RGB, ConverterSpec

CLASSES = ("benign", "malignant", "normal")
_IMAGE = re.compile(r"^(?P<cls>[A-Za-z]+)\s*\((?P<n>\d+)\)$")
_MASK = re.compile(r"^(?P<cls>[A-Za-z]+)\s*\((?P<n>\d+)\)_mask(?:_(?P<k>\d+))?$")
DOWNLOAD = ("https://scholar.cu.edu.eg/?q=afahmy/pages/dataset "
            "(Dataset_BUSI.zip; Kaggle: aryashah2k/breast-ultrasound-images-dataset)")


def find_root(source_dir: Path) -> Path:
    """The folder that holds `benign/` and/or `malignant/`."""
    source_dir = Path(source_dir)
    candidates = [source_dir, source_dir / "Dataset_BUSI_with_GT"]
    candidates += sorted(p for p in source_dir.glob("*") if p.is_dir())
    candidates += sorted(p for p in source_dir.glob("*/*") if p.is_dir())
    for c in candidates:
        if (c / "benign").is_dir() or (c / "malignant").is_dir():
            return c
    raise LayoutError(f"{source_dir}: no BUSI layout found (expected Dataset_BUSI_with_GT/benign, "
                      f"malignant, normal with 'benign (1).png' and 'benign (1)_mask.png')")


def _load(image_path: Path, mask_paths: list[Path]):
    def load() -> tuple[np.ndarray, np.ndarray]:
        image = read_image(image_path, "RGB")
        merged = np.zeros(image.shape[:2], np.uint8)
        for m in mask_paths:
            mask = read_mask(m)
            if mask.shape != merged.shape:
                raise BadPairError(f"{m}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image "
                                   f"{image_path.name} {merged.shape[1]}x{merged.shape[0]} (WxH)")
            merged |= mask
        return image, merged
    return load


def read(source_dir: Path, *, include_normal: bool = False) -> list[Case | Orphan]:
    root = find_root(source_dir)
    classes = ["benign", "malignant"] + (["normal"] if include_normal else [])
    out: list[Case | Orphan] = []
    for cls in classes:
        folder = root / cls
        if not folder.is_dir():
            raise LayoutError(f"{folder}: class folder not found")
        images: dict[int, Path] = {}
        masks: dict[int, list[tuple[int, Path]]] = {}
        for p in list_files(folder, (".png",)):
            if m := _MASK.match(p.stem):
                masks.setdefault(int(m["n"]), []).append((int(m["k"] or 0), p))
            elif m := _IMAGE.match(p.stem):
                images[int(m["n"])] = p
            else:
                out.append(Orphan(str(p), "unrecognised BUSI file name"))
        for n in sorted(images):
            if n not in masks:
                out.append(Orphan(str(images[n]), "image without mask"))
                continue
            mask_paths = [p for _, p in sorted(masks[n])]
            out.append(lazy_case(f"BUSI_{cls}_{n:04d}", _load(images[n], mask_paths), group=None, source="BUSI",
                                 origin=" + ".join(str(p) for p in [images[n], *mask_paths])))
        for n in sorted(set(masks) - set(images)):
            out += [Orphan(str(p), "mask without image") for _, p in sorted(masks[n])]
    if not any(isinstance(c, Case) for c in out):
        raise LayoutError(f"{root}: no BUSI image/mask pairs found")
    return out


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--include-normal", action="store_true",
                   help="also convert the 133 'normal' images (empty masks); default benign+malignant = 647")


SPEC = ConverterSpec(
    name="busi",
    paper_task="BL",
    sources=("BUSI", "breast lesion", "breast ultrasound"),
    description="BUSI breast ultrasound, benign + malignant (647; --include-normal for 780), all _mask* "
                "files of an image merged.",
    read=read,
    dataset_name="BUSI",
    channel_names=dict(RGB),
    labels=dict(BINARY),
    add_arguments=_add_arguments,
    download=DOWNLOAD,
    reference="Al-Dhabyani W. et al., Dataset of breast ultrasound images, Data in Brief 28 (2020) 104863",
)
