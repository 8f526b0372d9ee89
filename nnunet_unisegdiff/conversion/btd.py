"""BTD: Jun Cheng's Figshare "brain tumor dataset" (article 1512427), 3,064 T1-CE MRI slices.

Real layout (docs/datasets.md, BTD): the download unpacks to four parts (`brainTumorDataPublic_1-766`,
... or Kaggle's `brainTumorDataPublic_7671532`-style names), each either a folder or a still-zipped
`.zip`, holding globally numbered `1.mat` ... `3064.mat`, plus `cvind.mat` and `README.txt`.
All parts found anywhere under SOURCE_DIR are read (zips directly, without unpacking).

Each `.mat` is MATLAB v7.3 = HDF5 with a `cjdata` group: `image` (int16), `tumorMask` (0/1),
`label` (1 meningioma, 2 glioma, 3 pituitary), `PID` (uint16 character codes), `tumorBorder`.
HDF5 stores MATLAB's column-major arrays transposed, so image and mask both get `.T` (the one
operation, applied to both) to recover MATLAB's (row, column) orientation. Intensities are windowed
per slice to the robust [0.5, 99.5] percentile range and scaled to uint8. The decoded PID is the
group; `cvind.mat` (fold 1..5 per slice, patient-wise) can be written as the splits
(`--folds cvind`). The tumour type is kept per case (`tumor_type` in the source table).
"""
from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import BadPairError, Case, LayoutError, failed_case
from .registry import ConverterSpec

SOURCE = "BTD"
TUMOR_TYPES = {1: "meningioma", 2: "glioma", 3: "pituitary"}
LABELS = {"background": 0, "tumor": 1}
PERCENTILES = (0.5, 99.5)

_MAT = re.compile(r"^(\d+)\.mat$", re.IGNORECASE)
_SPLIT_PART = re.compile(r"\.(z\d\d|zip\.\d{3}|\d{3})$", re.IGNORECASE)


@dataclass(frozen=True)
class MatRef:
    """One `<n>.mat`, either a file or a member of a (not unpacked) inner zip."""
    number: int
    path: Path              # the file, or the zip that holds it
    member: str | None = None

    def __str__(self):
        return f"{self.path}:{self.member}" if self.member else str(self.path)

    def h5(self):
        """The file opened with h5py (a zip member is read into memory first)."""
        import h5py
        if self.member is None:
            return h5py.File(self.path, "r")
        with zipfile.ZipFile(self.path) as zf:
            return h5py.File(io.BytesIO(zf.read(self.member)), "r")


def find_mats(source_dir: Path) -> tuple[list[MatRef], Path | zipfile.Path | None]:
    """All numbered slice files under `source_dir` (folders and inner zips) and `cvind.mat`.

    A number found twice (e.g. a part both unpacked and still zipped) is read once, preferring the
    unpacked file."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise LayoutError(f"{source_dir}: folder not found")
    refs: dict[int, MatRef] = {}
    cvind = None
    zips, fragments = [], []
    for p in sorted(source_dir.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        m = _MAT.match(p.name)
        if m:
            refs.setdefault(int(m[1]), MatRef(int(m[1]), p))
        elif p.name.lower() == "cvind.mat":
            cvind = cvind or p
        elif p.suffix.lower() == ".zip":
            zips.append(p)
        elif _SPLIT_PART.search(p.name):
            fragments.append(p)
    for z in zips:
        try:
            with zipfile.ZipFile(z) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile as e:
            raise BadPairError(f"{z}: unreadable zip ({e}); if the download came as split parts, "
                               "join and repair them first (`zip -FF`)") from e
        for name in names:
            base = name.rsplit("/", 1)[-1]
            m = _MAT.match(base)
            if m:
                refs.setdefault(int(m[1]), MatRef(int(m[1]), z, name))
            elif base.lower() == "cvind.mat" and cvind is None:
                cvind = zipfile.Path(z, name)
    if not refs:
        hint = ""
        if fragments:
            hint = (f"; found split-archive fragments ({', '.join(f.name for f in fragments[:3])}): "
                    "join and repair them first (`zip -FF`) and unpack")
        elif (source_dir / "images").is_dir() and (source_dir / "masks").is_dir():
            hint = ("; this looks like the Kaggle PNG re-export, which has no patient IDs: use the "
                    "figshare .mat release")
        raise LayoutError(f"{source_dir}: unknown BTD layout, no <n>.mat slice files found "
                           f"(expected brainTumorDataPublic_*/<n>.mat or its zips){hint}")
    return [refs[k] for k in sorted(refs)], cvind


def decode_pid(codes: np.ndarray) -> str:
    """MATLAB char array stored as uint16 codes (shape (n, 1)) -> string."""
    return "".join(chr(int(c)) for c in np.asarray(codes).ravel() if int(c)).strip()


def to_uint8(image: np.ndarray, percentiles=PERCENTILES) -> np.ndarray:
    """Robust per-slice window: clip to the [p_lo, p_hi] intensity percentiles, scale to 0..255."""
    img = image.astype(np.float64)
    lo, hi = np.percentile(img, percentiles)
    if hi <= lo:
        hi = lo + 1.0
    return np.rint((np.clip(img, lo, hi) - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def read_mat(ref: MatRef) -> dict:
    """Read one slice file; arrays returned in MATLAB orientation (`.T` of what h5py gives)."""
    try:
        with ref.h5() as f:
            if "cjdata" not in f:
                raise BadPairError(f"{ref}: no 'cjdata' group (keys: {sorted(f.keys())})")
            g = f["cjdata"]
            missing = [k for k in ("image", "tumorMask") if k not in g]
            if missing:
                raise BadPairError(f"{ref}: cjdata lacks {missing}")
            image = np.asarray(g["image"][()]).T
            mask = np.asarray(g["tumorMask"][()]).T
            pid = decode_pid(g["PID"][()]) if "PID" in g else ""
            label = int(np.asarray(g["label"][()]).ravel()[0]) if "label" in g else 0
    except BadPairError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise BadPairError(f"{ref}: unreadable, expected a MATLAB v7.3 (HDF5) file ({e})") from e
    if image.ndim != 2:
        raise BadPairError(f"{ref}: image has shape {image.shape}, expected a 2D slice")
    if image.shape != mask.shape:
        raise BadPairError(f"{ref}: image shape {image.shape} != tumorMask shape {mask.shape}")
    return {"image": image, "mask": mask, "pid": pid, "tumor_type": label}


def read_cvind(cvind) -> np.ndarray:
    """`cvind.mat` -> int array, fold (1..5) of slice i at index i-1."""
    import h5py
    try:
        with cvind.open("rb") as fh, h5py.File(io.BytesIO(fh.read()), "r") as f:
            return np.asarray(f["cvind"][()]).ravel().astype(int)
    except (OSError, KeyError, ValueError) as e:
        raise BadPairError(f"{cvind}: unreadable cvind.mat ({e})") from e


def cvind_splits(source_dir, case_ids: list[str] | None = None) -> list[dict[str, list[str]]]:
    """nnU-Net splits from `cvind.mat`: split k validates on the slices with fold k+1 (only the
    folds and cases present in `case_ids`, when given: the slices actually written)."""
    refs, cvind = find_mats(Path(source_dir))
    wanted = None if case_ids is None else set(case_ids)
    if cvind is None:
        raise LayoutError(f"{source_dir}: --folds cvind needs cvind.mat, none found")
    folds = read_cvind(cvind)
    ids_by_fold: dict[int, list[str]] = {}
    for ref in refs:
        if ref.number > len(folds):
            raise BadPairError(f"{cvind}: has {len(folds)} entries, no fold for slice {ref.number}")
        cid = case_id_for(ref.number)
        if wanted is None or cid in wanted:
            ids_by_fold.setdefault(int(folds[ref.number - 1]), []).append(cid)
    splits = []
    for k in sorted(ids_by_fold):
        val = ids_by_fold[k]
        train = [c for j in sorted(ids_by_fold) if j != k for c in ids_by_fold[j]]
        splits.append({"train": train, "val": val})
    return splits


def case_id_for(number: int) -> str:
    return f"BTD_{number:04d}"


def convert_slice(d: dict) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB-oriented slice -> (uint8 image, 0/1 label)."""
    return to_uint8(d["image"]), (d["mask"] > 0).astype(np.uint8)


def read(source_dir, **_) -> Iterator[Case]:
    """Yield one `Case` per slice, group = decoded patient ID (the slice itself when absent)."""
    refs, _cvind = find_mats(Path(source_dir))
    for ref in refs:
        cid = case_id_for(ref.number)
        try:
            d = read_mat(ref)  # the PID (group) is needed up front, so slices are read eagerly
        except BadPairError as e:
            yield failed_case(cid, e, source=SOURCE, origin=str(ref))
            continue
        image, label = convert_slice(d)
        yield Case(case_id=cid, image=image, label=label, group=d["pid"] or cid, source=SOURCE,
                   origin=str(ref), meta={"tumor_type": TUMOR_TYPES.get(d["tumor_type"], str(d["tumor_type"]))})


SPEC = ConverterSpec(
    name="btd",
    paper_task="BT",
    sources=(SOURCE, "brain tumor", "brain tumour"),
    description="Figshare brain tumour dataset (MATLAB v7.3 .mat slices, folders or inner zips), "
                "T1-CE MRI to uint8 by a robust percentile window; groups = patient IDs.",
    read=read,
    dataset_name="BTD",
    channel_names={0: "MRI"},
    labels=LABELS,
    fold_schemes={"cvind": lambda source_dir, opts, case_ids: cvind_splits(source_dir, case_ids)},
    download="figshare https://doi.org/10.6084/m9.figshare.1512427 (brainTumorDataPublic_*.zip parts + cvind.mat)",
    reference="Cheng et al., PLoS ONE 10(10):e0140381 (2015); Cheng et al., PLoS ONE 11(6):e0157112 (2016)",
)
