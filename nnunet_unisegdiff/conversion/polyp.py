"""The five colon-polyp sets (Kvasir-SEG, CVC-ClinicDB, CVC-ColonDB, ETIS-LaribPolypDB, CVC-300)
-> one nnU-Net raw dataset.

SOURCE_DIR may hold either (docs/datasets.md, polyps):

- the PraNet distribution (1450 + 798 = 2248): `TrainDataset/{images,masks}/` (900 Kvasir + 550
  ClinicDB; `image`/`mask` in some forks) and `TestDataset/<name>/{images,masks}/` for CVC-300,
  CVC-ClinicDB, CVC-ColonDB, ETIS-LaribPolypDB, Kvasir;
- the original releases, in any combination: `Kvasir-SEG/{images,masks}/*.jpg` (JPEG masks,
  averaged over channels and thresholded at 128), `CVC-ClinicDB/Original/<n>.tif` +
  `CVC-ClinicDB/Ground Truth/<n>.tif` (or Kaggle's `PNG/Original`, `PNG/Ground Truth`),
  `CVC-ColonDB/{images,masks}/`, `ETIS-LaribPolypDB/<n>.tif` + `GroundTruth/p<n>.tif` (images may
  also sit in a sub-folder; `Ground Truth` with a space also accepted), EndoScene
  `CVC-EndoSceneStill/{CVC-612,CVC-300}/bbdd` + `gtpolyp`, Kaggle `CVC-300/{images,masks}/`.

With `--layout auto` the PraNet folders win when present. Case IDs carry the source, because the
integer names collide across sets (`TrainDataset/masks/149.png` is ClinicDB frame 149,
`TestDataset/CVC-300/masks/149.png` another frame): `Polyp_ClinicDB_0149`, `Polyp_CVC300_0149`,
`Polyp_Kvasir_cju0qkwl35piu0993l0dewei2`. In PraNet's TrainDataset numeric names are ClinicDB and
hashed names Kvasir. ClinicDB frames are grouped by their 29 video sequences (the other sets have no
known groups, so their frames are their own groups). Pairs are matched by identical stem only and
orphans are reported (PraNet issue #69); image/mask size mismatches are bad pairs (PraNet drops them
silently). The PraNet test split is merged into imagesTr by default, as in the paper's 4 random
folds over all 2248 images; `--pranet-test imagesTs` keeps it apart.
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .common import Case, LayoutError, Orphan, lazy_case
from .reading import IMAGE_EXTS, list_files, natural_key, pair_by_stem, read_image, read_mask, sanitize_id
from .registry import BINARY, RGB, ConverterSpec

log = logging.getLogger("nnunet_unisegdiff.conversion")

SOURCES = ("Kvasir", "ClinicDB", "ColonDB", "ETIS", "CVC300")
_SOURCE_PATTERNS = (  # checked in order on a lower-cased folder name
    ("CVC300", ("cvc-300", "cvc300", "cvc_300")),
    ("ClinicDB", ("clinicdb", "cvc-612", "cvc612", "cvc_612")),
    ("ColonDB", ("colondb",)),
    ("ETIS", ("etis",)),
    ("Kvasir", ("kvasir",)),
)
IMAGE_DIRS = ("images", "image", "Original", "original", "bbdd")
MASK_DIRS = ("masks", "mask", "Ground Truth", "GroundTruth", "ground truth", "groundtruth", "gtpolyp")
PRANET_DIRS = ("TrainDataset", "TestDataset")

# CVC-ClinicDB: the 29 video sequences as frame ranges (dataset-ninja/cvc-612 convert.py)
CLINICDB_SEQUENCES = ((1, 25), (26, 50), (51, 67), (68, 78), (79, 103), (104, 126), (127, 151), (152, 177),
                      (178, 199), (200, 205), (206, 227), (228, 252), (253, 277), (278, 297), (298, 317),
                      (318, 342), (343, 363), (364, 383), (384, 408), (409, 428), (429, 447), (448, 466),
                      (467, 478), (479, 503), (504, 528), (529, 546), (547, 571), (572, 591), (592, 612))
DOWNLOAD = ("PraNet TrainDataset/TestDataset: https://github.com/DengPingFan/PraNet (Google Drive links in its "
            "README); originals: Kvasir-SEG https://datasets.simula.no/kvasir-seg/, CVC-ClinicDB "
            "https://polyp.grand-challenge.org/CVCClinicDB/, ETIS-LaribPolypDB, CVC-ColonDB, CVC-EndoSceneStill")


def clinicdb_sequence(frame: int) -> int | None:
    for k, (lo, hi) in enumerate(CLINICDB_SEQUENCES, 1):
        if lo <= frame <= hi:
            return k
    return None


def source_of_name(name: str) -> str | None:
    low = name.lower()
    for source, keys in _SOURCE_PATTERNS:
        if any(k in low for k in keys):
            return source
    return None


@dataclass
class PairSet:
    """One images-folder/masks-folder pair of one source (None: PraNet's mixed TrainDataset)."""
    images: Path
    masks: Path
    source: str | None
    layout: str  # "pranet" or "original"
    subset: str  # "train", "test" (PraNet) or "all" (originals)
    image_files: list[Path] | None = None  # when images sit beside the mask folder (ETIS)


def _subdir(folder: Path, names) -> Path | None:
    for n in names:
        if (folder / n).is_dir():
            return folder / n
    lower = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    for n in names:
        if n.lower() in lower:
            return lower[n.lower()]
    return None


def _source_for(folder: Path, root: Path) -> str | None:
    for part in reversed((root.name,) + folder.relative_to(root).parts if folder != root else (root.name,)):
        if (s := source_of_name(part)) is not None:
            return s
    return None


def discover(source_dir: Path, layout: str = "auto") -> list[PairSet]:
    """Every images/masks folder pair under `source_dir` (depth <= 6), PraNet or original."""
    root = Path(source_dir)
    found: list[PairSet] = []
    for dirpath, dirnames, _ in os.walk(root):
        d = Path(dirpath)
        depth = len(d.relative_to(root).parts)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".")) if depth < 6 else []
        masks = _subdir(d, MASK_DIRS) if dirnames else None
        if masks is None:
            continue
        parts = d.relative_to(root).parts
        in_pranet = next((p for p in (root.name, *parts) if p in PRANET_DIRS), None)
        images = _subdir(d, IMAGE_DIRS)
        image_files = None
        if images is None:  # ETIS original: <n>.tif beside GroundTruth/, or in another sub-folder
            image_files = list_files(d)
            if not image_files:
                others = [p for p in d.iterdir() if p.is_dir() and p != masks and not p.name.startswith(".")]
                for o in sorted(others):
                    if any(f.stem.isdigit() for f in list_files(o)):
                        image_files = list_files(o)
                        break
            if not image_files:
                continue
            images = d
        if in_pranet == "TrainDataset":
            found.append(PairSet(images, masks, None, "pranet", "train", image_files))
        else:
            source = _source_for(d, root)
            if source is None:
                raise LayoutError(f"{d}: cannot tell which polyp dataset this is (expected a folder name with "
                                  f"Kvasir, ClinicDB/CVC-612, ColonDB, ETIS or CVC-300)")
            found.append(PairSet(images, masks, source, "pranet" if in_pranet else "original",
                                 "test" if in_pranet else "all", image_files))
    if layout == "auto":
        layout = "pranet" if any(s.layout == "pranet" for s in found) else "original"
    chosen = [s for s in found if s.layout == layout]
    for s in found:
        if s.layout != layout:
            log.warning("ignoring %s (%s layout; using the %s layout)", s.images, s.layout, layout)
    if layout == "original":  # one copy per source (ClinicDB comes as TIF, PNG and inside EndoScene)
        seen: dict[str, PairSet] = {}
        for s in chosen:
            if s.source in seen:
                log.warning("ignoring %s: %s already read from %s", s.images, s.source, seen[s.source].images)
            else:
                seen[s.source] = s
        chosen = list(seen.values())
    if not chosen:
        raise LayoutError(f"{root}: no polyp images/masks folders found (expected PraNet TrainDataset/"
                          f"TestDataset or Kvasir-SEG, CVC-ClinicDB, CVC-ColonDB, ETIS-LaribPolypDB, CVC-300)")
    return chosen


def _case_id(source: str, stem: str) -> str:
    return f"Polyp_{source}_{int(stem):04d}" if stem.isdigit() else f"Polyp_{source}_{sanitize_id(stem)}"


def _group(source: str, stem: str) -> str | None:
    if source == "ClinicDB" and stem.isdigit() and (k := clinicdb_sequence(int(stem))) is not None:
        return f"ClinicDB_seq{k:02d}"
    return None


def _load(image: Path, mask: Path):
    return lambda: (read_image(image, "RGB"), read_mask(mask, 128))


def _read(source_dir: Path, layout: str, sources, subsets) -> list[Case | Orphan]:
    out: list[Case | Orphan] = []
    taken: dict[str, str] = {}
    for ps in discover(source_dir, layout):
        if ps.subset not in subsets:
            continue
        image_files = ps.image_files if ps.image_files is not None else list_files(ps.images)
        pairs, orphans = pair_by_stem(image_files, list_files(ps.masks, IMAGE_EXTS),
                                      lambda s: (s, f"p{s}", f"{s}_mask"))
        out += orphans
        for img, msk in pairs:
            source = ps.source or ("ClinicDB" if img.stem.isdigit() else "Kvasir")
            if source not in sources:
                continue
            cid = _case_id(source, img.stem)
            if cid in taken:
                out.append(Orphan(str(img), f"duplicate of {taken[cid]} (same source and frame), skipped"))
                continue
            taken[cid] = str(img)
            out.append(lazy_case(cid, _load(img, msk), group=_group(source, img.stem), source=source,
                                 origin=f"{img} + {msk}"))
    if not any(isinstance(c, Case) for c in out) and subsets != ("test",):
        raise LayoutError(f"{source_dir}: no polyp image/mask pairs found for {', '.join(sources)}")
    return sorted(out, key=lambda c: natural_key(c.case_id) if isinstance(c, Case) else [""])


def read(source_dir: Path, *, layout: str = "auto", sources=SOURCES, pranet_test: str = "merge") -> list[Case | Orphan]:
    subsets = ("train", "all", "test") if pranet_test == "merge" else ("train", "all")
    return _read(source_dir, layout, tuple(sources), subsets)


def read_test(source_dir: Path, *, layout: str = "auto", sources=SOURCES, pranet_test: str = "merge"):
    """PraNet's TestDataset as imagesTs/labelsTs when `pranet_test == "imagesTs"`."""
    if pranet_test != "imagesTs":
        return None
    return _read(source_dir, layout, tuple(sources), ("test",))


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layout", choices=("auto", "pranet", "original"), default="auto",
                   help="PraNet TrainDataset/TestDataset or the original releases (auto: PraNet if present)")
    p.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES), help="which polyp sets to keep")
    p.add_argument("--pranet-test", choices=("merge", "imagesTs", "skip"), default="merge",
                   help="PraNet's 798 test images: merged into imagesTr (paper, default), kept as imagesTs, "
                        "or left out")


SPEC = ConverterSpec(
    name="polyp",
    paper_task="CP",
    sources=(*SOURCES, "colon polyp", "Kvasir-SEG", "CVC-ClinicDB", "CVC-612", "CVC-ColonDB", "ETIS-LaribPolypDB",
             "ETIS-Larib", "EndoScene", "CVC-EndoSceneStill"),
    description="Colon polyps: Kvasir-SEG, CVC-ClinicDB, CVC-ColonDB, ETIS-LaribPolypDB, CVC-300 (PraNet "
                "1450+798 layout or original releases); ClinicDB grouped by video sequence.",
    read=read,
    read_test=read_test,
    dataset_name="Polyp",
    channel_names=dict(RGB),
    labels=dict(BINARY),
    add_arguments=_add_arguments,
    download=DOWNLOAD,
    reference="Fan D.-P. et al., PraNet, MICCAI 2020 (train/test split)",
)
