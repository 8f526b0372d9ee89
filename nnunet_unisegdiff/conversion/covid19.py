"""COVID-19 CT lung infection: Ma et al. (Zenodo 3757476) and MedSeg (figshare 13521488/13521509),
axial slices exported as 2D grey PNGs.

Sources found anywhere under SOURCE_DIR (docs/datasets.md, COVID-19):
- Ma et al.: images in `COVID-19-CT-Seg_20cases/` (Kaggle: `ct_scans/`), masks in `Infection_Mask/`
  (Kaggle: `infection_mask/`), else `Lung_and_Infection_Mask/` (label 3 = infection). Pairs are
  matched on the case key, not on exact names (`coronacases_org_001` <-> `coronacases_001`,
  `radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm` <-> `radiopaedia_4_85506_1`; irregular names
  such as `coronacases_org_case007` match on the number). Infection = mask > 0.
- MedSeg dataset 1: `tr_im.nii.gz` + `tr_mask.nii.gz` (100 slices of >40 patients, no patient
  IDs: each slice is its own group); `val_im` has no masks and is ignored.
- MedSeg dataset 2: `rp_im/<k>.nii[.gz]` + `rp_msk/<k>.nii[.gz]`, one patient per volume.
  MedSeg masks: 1 ground glass, 2 consolidation, 3 pleural effusion; lesion = mask >= 1, or
  {1, 2} with `--effusion drop`.

Intensities are detected per volume: values within [-1, 256] are taken as already 0-255 greyscale
(Radiopaedia) and kept; anything else is HU (Coronacases) and mapped through a lung window
(centre -600, width 1500 by default). Each choice is printed.

Orientation: image and mask are read with nibabel and each reoriented to the closest canonical
(RAS) orientation, so they agree even when their headers store different axis orders; their
shapes must then match (else an error naming both files). Axial slices are the third axis, shown
upright (anterior up, patient right on the image left).

Slice filter (`--slices`): `all`, `lesion` (infection-positive only, the default) or `fraction`
(all lesion slices plus `--empty-fraction F` of the empty ones per volume, drawn with `--seed`).
The paper blames its weak lung-infection scores on a third of its masks being empty, so the kept
lesion/empty counts are printed. Group = patient (volume; the Radiopaedia 10_* and 29_* pairs are
merged).
"""
from __future__ import annotations

import argparse
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_unisegdiff.defaults import DEFAULT_SEED

from .common import BadPairError, Case, LayoutError, Orphan, failed_case
from .reading import natural_key, sanitize_id
from .registry import ConverterSpec

SOURCE = "COVID-19"
CHANNELS = {0: "CT_window"}  # already windowed to 0..255: nnU-Net's z-score, not its CT scheme
SLICE_MODES = ("all", "lesion", "fraction")
DEFAULT_WINDOW = (-600.0, 1500.0)  # lung window: centre, width (HU)

NII = (".nii.gz", ".nii")
MA_IMAGE_DIRS = ("covid-19-ct-seg_20cases", "ct_scans")
MA_MASK_DIRS = ("infection_mask",)
MA_COMBINED_DIRS = ("lung_and_infection_mask",)  # 1 left lung, 2 right lung, 3 infection


@dataclass
class Volume:
    """One image/mask pair of volumes and how its mask becomes a lesion mask."""
    key: str            # e.g. coronacases_001, radiopaedia_4_85506_1, medseg_rp_3, medseg_tr
    image: Path
    mask: Path
    group: str | None   # None: per-slice groups (MedSeg tr, no patient IDs)
    lesion_values: tuple[int, ...] | None  # None: mask > 0


def _stem(p: Path) -> str:
    name = p.name
    for ext in NII:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return p.stem


def _niftis(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name.lower().endswith(NII)), key=lambda p: natural_key(p.name))


def ma_key(stem: str) -> str | None:
    """Case key of a Ma et al. file name, the same for an image and its mask."""
    s = stem.lower()
    if "radiopaedia" in s:
        m = re.search(r"(\d+_\d+_\d+)", s) or re.search(r"(\d+)(?!.*\d)", s)
        return f"radiopaedia_{m[1]}" if m else None
    if "coronacases" in s or re.fullmatch(r"case_?\d+", s):
        m = re.search(r"(\d+)(?!.*\d)", s)
        return f"coronacases_{int(m[1]):03d}" if m else None
    return None


def ma_group(key: str) -> str:
    """Patient of a Ma case: Radiopaedia case number (10_85902_1 and 10_85902_3 are one patient)."""
    if key.startswith("radiopaedia_"):
        return "radiopaedia_" + key.split("_")[1]
    return key


def _dirs_named(source_dir: Path, names: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in source_dir.rglob("*") if p.is_dir() and p.name.lower() in names)


def _ma_volumes(source_dir: Path) -> tuple[list[Volume], list[Orphan]]:
    """Ma et al.: images and infection masks in their own folders, paired on the case key."""
    vols, orphans = [], []
    images: dict[str, Path] = {}
    for d in _dirs_named(source_dir, MA_IMAGE_DIRS):
        for p in _niftis(d):
            key = ma_key(_stem(p))
            if key is None:
                orphans.append(Orphan(str(p), "unrecognised case name"))
            else:
                images.setdefault(key, p)
    masks: dict[str, tuple[Path, tuple[int, ...] | None]] = {}
    for dirs, values in ((MA_MASK_DIRS, None), (MA_COMBINED_DIRS, (3,))):
        for d in _dirs_named(source_dir, dirs):
            for p in _niftis(d):
                key = ma_key(_stem(p))
                if key is not None:
                    masks.setdefault(key, (p, values))  # Infection_Mask wins over the combined one
    for key in sorted(images, key=natural_key):
        if key in masks:
            vols.append(Volume(key, images[key], masks[key][0], ma_group(key), masks[key][1]))
        else:
            orphans.append(Orphan(str(images[key]), "image without infection mask"))
    return vols, orphans


def _medseg_volumes(source_dir: Path, values: tuple[int, ...]) -> tuple[list[Volume], list[Orphan]]:
    """MedSeg dataset 1 (tr_im / tr_mask stacks, no patients) and 2 (rp_im/<k> + rp_msk/<k>)."""
    vols, orphans = [], []
    for im in sorted(p for p in source_dir.rglob("tr_im.nii*") if p.is_file()):
        mask = next((im.with_name(f"tr_mask{ext}") for ext in NII if im.with_name(f"tr_mask{ext}").is_file()), None)
        if mask is None:
            orphans.append(Orphan(str(im), "image without mask (tr_mask.nii.gz)"))
        else:
            vols.append(Volume("medseg_tr", im, mask, None, values))
    for d in sorted(p for p in source_dir.rglob("rp_im") if p.is_dir()):
        mdir = d.with_name("rp_msk")
        by_stem = {_stem(p): p for p in _niftis(mdir)} if mdir.is_dir() else {}
        for p in _niftis(d):
            k = _stem(p)
            if k in by_stem:
                key = f"medseg_rp_{sanitize_id(k)}"
                vols.append(Volume(key, p, by_stem[k], key, values))
            else:
                orphans.append(Orphan(str(p), "image without mask in rp_msk/"))
    return vols, orphans


def find_volumes(source_dir: Path, effusion: str = "keep") -> tuple[list[Volume], list[Orphan]]:
    """All image/mask volume pairs under `source_dir` (any mix of Ma and MedSeg) and the orphans."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise LayoutError(f"{source_dir}: folder not found")
    ma, ma_orphans = _ma_volumes(source_dir)
    medseg, medseg_orphans = _medseg_volumes(source_dir, (1, 2, 3) if effusion == "keep" else (1, 2))
    vols = ma + medseg
    if not vols:
        zips = sorted(p.name for p in source_dir.rglob("*.zip"))
        hint = f"; unpack these first: {', '.join(zips)}" if zips else ""
        raise LayoutError(
            f"{source_dir}: unknown COVID-19 layout, no image/mask volume pairs found (expected "
            "COVID-19-CT-Seg_20cases/ + Infection_Mask/, tr_im.nii.gz + tr_mask.nii.gz, or "
            f"rp_im/ + rp_msk/){hint}")
    return vols, ma_orphans + medseg_orphans


def load_canonical(path: Path, what: str) -> np.ndarray:
    import nibabel as nib
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises many types (ImageFileError, EOFError, zlib errors, ...)
        raise BadPairError(f"{path}: cannot read {what} NIfTI ({type(e).__name__}: {e})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise BadPairError(f"{path}: {what} has shape {data.shape}, expected a 3D volume")
    return data


def window_to_uint8(vol: np.ndarray, window: tuple[float, float] = DEFAULT_WINDOW) -> tuple[np.ndarray, str]:
    """Per-volume intensity detection: 0-255 greyscale is kept, HU goes through the lung window."""
    vol = np.asarray(vol, dtype=np.float32)
    lo_v, hi_v = float(vol.min()), float(vol.max())
    if lo_v >= -1.0 and hi_v <= 256.0:
        return np.clip(np.rint(vol), 0, 255).astype(np.uint8), f"0-255 greyscale (range {lo_v:g}..{hi_v:g}), kept"
    centre, width = window
    lo, hi = centre - width / 2, centre + width / 2
    out = np.rint((np.clip(vol, lo, hi) - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return out, f"HU (range {lo_v:g}..{hi_v:g}), lung window [{lo:g}, {hi:g}]"


def upright(slice_ras: np.ndarray) -> np.ndarray:
    """RAS axial slice [x, y] -> display rows anterior->posterior, columns patient right->left."""
    return np.ascontiguousarray(slice_ras[::-1, ::-1].T)


def lesion_mask(mask: np.ndarray, values: tuple[int, ...] | None) -> np.ndarray:
    m = np.rint(np.asarray(mask, dtype=np.float32)).astype(np.int32)
    if values is None:
        return (m > 0).astype(np.uint8)
    return np.isin(m, values).astype(np.uint8)


def choose_slices(has_lesion: np.ndarray, mode: str, empty_fraction: float | None, rng_key: tuple) -> np.ndarray:
    """Indices of the kept slices of one volume (sorted)."""
    lesion = np.flatnonzero(has_lesion)
    empty = np.flatnonzero(~has_lesion)
    if mode == "all":
        return np.arange(len(has_lesion))
    if mode == "lesion":
        return lesion
    n_keep = int(np.floor(empty_fraction * len(empty) + 0.5))  # round half up
    rng = np.random.default_rng(list(rng_key))
    kept_empty = rng.choice(empty, size=n_keep, replace=False) if n_keep else np.array([], int)
    return np.sort(np.concatenate([lesion, kept_empty]).astype(int))


def _check_options(slices: str, empty_fraction: float | None, effusion: str) -> None:
    if slices not in SLICE_MODES:
        raise ValueError(f"--slices must be one of {SLICE_MODES}, got {slices!r}")
    if slices == "fraction":
        if empty_fraction is None or not 0.0 <= float(empty_fraction) <= 1.0:
            raise ValueError("--slices fraction needs --empty-fraction F with 0 <= F <= 1")
    elif empty_fraction is not None:
        raise ValueError(f"--empty-fraction only applies to --slices fraction (got --slices {slices})")
    if effusion not in ("keep", "drop"):
        raise ValueError(f"--effusion must be keep or drop, got {effusion!r}")


def read(source_dir, slices: str = "lesion", empty_fraction: float | None = None, effusion: str = "keep",
         window: tuple[float, float] = DEFAULT_WINDOW, seed: int = DEFAULT_SEED) -> Iterator[Case | Orphan]:
    """Yield one `Case` per kept axial slice, an `Orphan` per unpaired volume; print per-volume
    intensity handling and the kept lesion/empty slice counts."""
    _check_options(slices, empty_fraction, effusion)
    vols, orphans = find_volumes(Path(source_dir), effusion)
    yield from orphans
    totals = {"lesion": 0, "empty": 0, "lesion_kept": 0, "empty_kept": 0}
    for v in vols:
        origin = f"{v.image} + {v.mask}"
        prefix = f"COVID_{sanitize_id(v.key).replace('_', '-')}"  # COVID_coronacases-001_z042
        try:
            image = load_canonical(v.image, "image")
            mask = load_canonical(v.mask, "mask")
            if image.shape != mask.shape:
                raise BadPairError(f"{v.image} / {v.mask}: image shape {image.shape} != mask shape "
                                   f"{mask.shape} (after reorienting both to RAS)")
        except BadPairError as e:
            yield failed_case(prefix, e, source=SOURCE, origin=origin)
            continue
        image8, how = window_to_uint8(image, window)
        lesion = lesion_mask(mask, v.lesion_values)
        del image, mask
        has = lesion.reshape(-1, lesion.shape[2]).any(axis=0)
        keep = choose_slices(has, slices, empty_fraction, (int(seed), zlib.crc32(v.key.encode())))
        n_les, n_emp = int(has.sum()), int((~has).sum())
        k_les = int(has[keep].sum())
        k_emp = len(keep) - k_les
        for k, n in (("lesion", n_les), ("empty", n_emp), ("lesion_kept", k_les), ("empty_kept", k_emp)):
            totals[k] += n
        print(f"covid19: {v.key}: {how}; {lesion.shape[2]} slices, kept {k_les}/{n_les} lesion and "
            f"{k_emp}/{n_emp} empty")
        for z in keep:
            z = int(z)
            yield Case(case_id=f"{prefix}_z{z:03d}", image=upright(image8[:, :, z]),
                       label=upright(lesion[:, :, z]),
                       group=v.group if v.group is not None else f"{v.key}_z{z:03d}",
                       source=SOURCE, origin=f"{origin} [axial z={z} (RAS)]")
    desc = {"all": "all slices", "lesion": "lesion slices only",
            "fraction": f"lesion slices + {empty_fraction} of empty slices, seed {seed}"}[slices]
    print(f"covid19: slice filter '{slices}' ({desc}): kept {totals['lesion_kept']} lesion slices "
        f"(of {totals['lesion']}) and {totals['empty_kept']} empty slices (of {totals['empty']}) "
        f"from {len(vols)} volumes")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slices", choices=SLICE_MODES, default="lesion",
                   help="which axial slices to export: all, lesion-positive only (default), or all lesion "
                        "slices plus a fraction of the empty ones (--empty-fraction); counts are printed")
    p.add_argument("--empty-fraction", type=float, default=None, metavar="F",
                   help="with --slices fraction: share of each volume's empty slices to keep (0..1, drawn with --seed)")
    p.add_argument("--effusion", choices=("keep", "drop"), default="keep",
                   help="MedSeg label 3 (pleural effusion): part of the lesion (keep, as mask >= 1) or background")
    p.add_argument("--window", type=float, nargs=2, default=DEFAULT_WINDOW, metavar=("CENTRE", "WIDTH"),
                   help="lung window for HU volumes (default -600 1500)")


SPEC = ConverterSpec(
    name="covid19",
    paper_task="LI",
    sources=(SOURCE, "COVID", "lung infection", "MedSeg", "COVID-19-CT-Seg"),
    description="COVID-19 CT lung infection (Ma et al. 20 cases + MedSeg tr/rp), axial slices as grey PNGs "
                "with a lung window; slice filter all/lesion/fraction.",
    read=read,
    dataset_name="COVID19",
    channel_names=CHANNELS,
    add_arguments=add_arguments,
    seeded=True,
    download="Ma et al.: https://zenodo.org/record/3757476 (COVID-19-CT-Seg_20cases.zip + Infection_Mask.zip); "
             "MedSeg: https://medicalsegmentation.com/covid19/ (figshare 13521488: tr_im/tr_mask; "
             "13521509: rp_im.zip/rp_msk.zip)",
    reference="Ma et al., COVID-19 CT Lung and Infection Segmentation Dataset (Zenodo 3757476); "
              "MedSeg COVID-19 CT segmentation dataset",
)
