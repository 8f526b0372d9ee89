"""AMD-SD (Hu et al., Sci Data 11:1014, 2024): OCT B-scans of wet AMD with five lesion classes.

Real layout (docs/datasets.md, AMD-SD): `AMD-SD/images/<patient_id>/<patient_id>_<k>.png`, plus
`training.txt`/`validation.txt` at the root. Every PNG is a side-by-side composite: the left half
(columns `[0, W//2)`) is the raw B-scan stored as RGB, the right half (`[W//2, W)`) a colour-coded
label map on black. Colours are snapped channel-wise to 0/255 (threshold 128) before mapping, so
anti-aliased edge pixels join their nearest pure colour; snapped white ("weird borders") is
background. Any other snapped colour is an error naming the file.

Classes follow torch-em's order: 1 EZ disruption (magenta), 2 IRF (green), 3 SRF (red),
4 SHRM (yellow), 5 PED (blue). By default they are merged into one `lesion` label (the unified
papers train AMD-SD as lesion vs background); `--classes multi` keeps all five.
Group = the patient folder. The official `training.txt`/`validation.txt` lists are not used (it
is unknown whether they are patient-disjoint); splits are built from the patient groups.
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .common import BadPairError, Case, LayoutError, lazy_case
from .reading import list_files, natural_key, sanitize_id
from .registry import BINARY, ConverterSpec

SOURCE = "AMD-SD"

# snapped RGB -> (multi-class id, lesion name), torch-em's order
COLOURS = {
    (255, 0, 255): (1, "EZ_disruption"),
    (0, 255, 0): (2, "IRF"),
    (255, 0, 0): (3, "SRF"),
    (255, 255, 0): (4, "SHRM"),
    (0, 0, 255): (5, "PED"),
    (0, 0, 0): (0, "background"),
    (255, 255, 255): (0, "background"),  # "weird borders" after snapping
}
LABELS_MULTI = {"background": 0, **{name: i for (i, name) in COLOURS.values() if i}}

_STEM = re.compile(r"^(?P<pid>[^_]+)_(?P<k>\d+)$")


def labels_for(classes: str) -> dict[str, int]:
    if classes not in ("binary", "multi"):
        raise ValueError(f"classes must be 'binary' or 'multi', got {classes!r}")
    return dict(BINARY if classes == "binary" else LABELS_MULTI)


def find_images_dir(source_dir: Path) -> Path:
    """`images/` of an unpacked AMD-SD download: SOURCE_DIR may be the folder holding `AMD-SD/`,
    `AMD-SD/` itself, or its `images/` folder."""
    source_dir = Path(source_dir)
    for cand in (source_dir / "AMD-SD" / "images", source_dir / "images", source_dir):
        if cand.is_dir() and any(p.is_dir() and any(p.glob("*.png")) for p in cand.iterdir()):
            return cand
    raise LayoutError(
        f"{source_dir}: unknown AMD-SD layout; expected AMD-SD/images/<patient_id>/<patient_id>_<k>.png "
        "(the unpacked figshare AMD-SD.zip)")


def split_composite(rgb: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) composite -> left OCT half (H, W/2) uint8 grey, right label half (H, W/2, 3)."""
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
        raise BadPairError(f"{path}: expected an RGB composite (left OCT | right colour labels), "
                           f"got array of shape {rgb.shape}; a grey PNG cannot carry colour labels")
    rgb = rgb[..., :3]
    h, w = rgb.shape[:2]
    if w % 2:
        raise BadPairError(f"{path}: composite width {w} is odd, cannot split into two equal "
                           "halves (left OCT, right labels)")
    left, right = rgb[:, : w // 2], rgb[:, w // 2:]
    if (left == left[..., :1]).all():
        grey = left[..., 0].copy()
    else:  # ITU-R 601 luma, as PIL's convert('L')
        grey = np.clip(np.rint(left.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)),
                       0, 255).astype(np.uint8)
    return grey, right


def colours_to_label(right: np.ndarray, path: Path, classes: str = "binary") -> np.ndarray:
    """Right half (H, W, 3) -> label (H, W) uint8: channel-wise snap at 128, then colour map."""
    snapped = (right >= 128).astype(np.uint8)  # 0/1 per channel
    code = snapped[..., 0] * 4 + snapped[..., 1] * 2 + snapped[..., 2]  # 3-bit colour code
    lut = np.full(8, 255, np.uint8)  # 255 = unknown colour
    for (r, g, b), (i, _) in COLOURS.items():
        lut[(r // 255) * 4 + (g // 255) * 2 + b // 255] = i
    label = lut[code]
    bad = label == 255
    if bad.any():
        codes = [int(c) for c in np.unique(code[bad])]
        names = ", ".join(str(((c >> 2) * 255, ((c >> 1) & 1) * 255, (c & 1) * 255)) for c in codes)
        raise BadPairError(f"{path}: right (label) half has {int(bad.sum())} pixels of unexpected "
                           f"colour {names} after snapping to 0/255; known colours: magenta EZ, "
                           "green IRF, red SRF, yellow SHRM, blue PED, black/white background")
    if classes == "binary":
        label = (label > 0).astype(np.uint8)
    return label


def read_composite(path: Path, classes: str = "binary") -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.load()
            # grey ('L') stays 2D and is rejected by split_composite; palette/LA/... become RGB
            arr = np.asarray(im if im.mode in ("RGB", "RGBA", "L") else im.convert("RGB"))
    except FileNotFoundError:
        raise BadPairError(f"{path}: file not found") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadPairError(f"{path}: cannot read image ({e})") from None
    grey, right = split_composite(arr, path)
    return grey, colours_to_label(right, path, classes)


def case_id_for(pid: str, stem: str) -> str:
    m = _STEM.match(stem)
    if m and m["pid"] == pid:
        return f"AMDSD_{sanitize_id(pid)}_{int(m['k']):03d}"
    return f"AMDSD_{sanitize_id(pid)}_{sanitize_id(stem)}"


def read(source_dir, classes: str = "binary", **_) -> Iterator[Case]:
    """Yield one lazy `Case` per composite PNG under `images/<patient_id>/`, group = patient folder."""
    labels_for(classes)  # validates
    images_dir = find_images_dir(Path(source_dir))
    for pdir in sorted((p for p in images_dir.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
        for png in list_files(pdir, (".png",)):
            yield lazy_case(case_id_for(pdir.name, png.stem),
                            lambda png=png: read_composite(png, classes),
                            group=pdir.name, source=SOURCE, origin=str(png))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classes", choices=("binary", "multi"), default="binary",
                   help="binary: lesion (any of the five colours) vs background (default, as the unified "
                        "papers); multi: 1 EZ disruption, 2 IRF, 3 SRF, 4 SHRM, 5 PED")


SPEC = ConverterSpec(
    name="amdsd",
    paper_task="WA",
    sources=(SOURCE, "wet AMD"),
    description="AMD-SD OCT B-scans (side-by-side composites: left OCT, right colour labels), "
                "binary lesion or 5 lesion classes; groups = patient folders.",
    read=read,
    dataset_name=lambda o: "AMDSD" if o.get("classes", "binary") == "binary" else "AMDSD_multiclass",
    channel_names={0: "OCT"},
    labels=lambda o: labels_for(o.get("classes", "binary")),
    add_arguments=add_arguments,
    download="https://springernature.figshare.com/collections/7157554 (AMD-SD.zip; "
             "Kaggle mirror gaoweihao/amd-sd)",
    reference="Hu et al., Sci Data 11:1014 (2024), doi:10.1038/s41597-024-03844-6",
)
