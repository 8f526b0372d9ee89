"""`unisegdiff uncertainty`: per-pixel uncertainty maps a person can look at, and a per-case
`confidence` that ranks the cases for review (least confident first), from the class
probabilities nnU-Net saves with `--save_probabilities`.

For UniSegDiff those probabilities are the fold's chosen inference pipeline's: CFENet's softmax
(nnU-Net's own) for `cfenet`, STAPLE's posterior over the 20 staged draws for `diffusion` (paper
section 2.4), ...; with the default settings those of the pipelines that sample the draws are
tempered toward uniform where the draws disagree (model/pipelines.py `exported_map` names what a
fold exports). The map is the probabilities' entropy, normalised by log(C) so it lies in
[0, 1] for any number of classes C: 0 where one class has probability 1, 1 where all classes are
equally likely (p = 0.5 for a binary lesion). For a single-pass network (nnUNetTrainer) the same
command shows the entropy of its softmax.

    nnUNetv2_predict -i IMAGES -o PRED -d D -c 2d -tr nnUNetTrainerUniSegDiff -f 0 --save_probabilities
    unisegdiff uncertainty PRED [--images IMAGES] [-o OUT] [-m MODEL_FOLDER [-f 0]]

Per case `CASE.npz` it writes, into `PRED/uncertainty/` by default (a sub-folder, because
evaluators such as `nnUNetv2_evaluate_folder` treat every `.png` beside the labels as a prediction):

* `CASE_uncertainty.png`: the entropy as a heat map (colour map `inferno`: black = certain,
  yellow = maximal), the size of the label file (3D: a montage of slices);
* `CASE_overlay.png`: the heat map blended over the input image (with `--images`) or over the
  predicted mask, with the predicted lesion contour in cyan;
* `CASE_uncertainty.nii.gz` (3D only): the entropy map as a float image with the input image's
  spacing, origin and direction, read by nnU-Net's `SimpleITKIO` from the predicted label file
  `CASE.nii.gz` that nnUNetv2_predict wrote beside the `.npz` (or from the image in `--images`),
  so it overlays the scan in any viewer;
* `uncertainty.csv`: per case the `confidence` (below), the mean entropy, its 95th percentile,
  the fraction of pixels above 0.5, the predicted lesion's size, `review_rank` (1 = least
  confident) and, in 3D, the NIfTI map's name (empty when no geometry was found).

`confidence` is a per-case score in [0, 1], higher = more likely a good segmentation
(`nnunet_unisegdiff.evaluation.confidence`): the soft Dice between the foreground probabilities
and their own mask when a lesion is predicted, and for an empty prediction how far its most
lesion-like pixel stays below 0.5, lowered (with `--model`) when the model's empty predictions
were worse than its lesion predictions on its validation cases: a map cannot show a lesion the
network never responded to, the validation record can. It reads only the
probabilities (and, with `--model`, the summary.json nnU-Net wrote after training), so
nnUNetTrainer's softmax and UniSegDiff's fused draws are scored alike, and it is only as
informative as they are: a posterior saturated to 0/1 gives every case a confidence near 1. The
command prints the cases ranked by it, least confident first: the review list.
"""
from __future__ import annotations

import argparse
import csv
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.util import montage as skimage_montage

from nnunet_unisegdiff.evaluation.confidence import case_confidence
from nnunet_unisegdiff.evaluation.validation_record import model_record

DEFAULT_SUBDIR = "uncertainty"
DEFAULT_CMAP = "inferno"
UNCERTAIN_LEVEL = 0.5  # normalised entropy above which a pixel counts as uncertain
CONTOUR_RGB = (0, 255, 255)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
VOLUME_SUFFIXES = (".nii.gz", ".nrrd", ".mha", ".gipl")  # nnU-Net's SimpleITKIO endings
DEFAULT_REVIEW = 10  # cases printed in the review list


# ----------------------------------------------------------------------------- maps
def entropy_map(probs: np.ndarray, axis: int = 0) -> np.ndarray:
    """Normalised entropy -sum_c p_c log p_c / log C over `axis`, in [0, 1] (0 log 0 = 0).
    probs: (C, *spatial) class probabilities summing to 1 over `axis`."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    num_classes = p.shape[axis]
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes along axis {axis}, got shape {p.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    return np.clip(-plogp.sum(axis) / np.log(num_classes), 0.0, 1.0).astype(np.float32)


def load_probabilities(npz_file: str | Path) -> np.ndarray:
    """nnU-Net's `--save_probabilities` array, (C, *spatial) with singleton spatial axes dropped
    (2D images are stored as (C, 1, H, W))."""
    with np.load(npz_file) as f:
        if "probabilities" not in f:
            raise KeyError(f"{npz_file}: no 'probabilities' array (was it written by nnUNetv2_predict "
                           "--save_probabilities?)")
        probs = f["probabilities"]
    keep = [0] + [i for i in range(1, probs.ndim) if probs.shape[i] != 1]
    return probs.reshape([probs.shape[i] for i in keep])


def colormap_lut(cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """(256, 3) uint8 colour table; entry k shows the value k / 255."""
    from matplotlib import colormaps
    return (colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def to_levels(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 levels 0..255 (index into `colormap_lut`)."""
    return (np.clip(values, 0, 1) * 255).round().astype(np.uint8)


def heatmap_rgb(values: np.ndarray, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 heat map."""
    return colormap_lut(cmap)[to_levels(values)]


def montage(volume: np.ndarray, max_slices: int = 16) -> np.ndarray:
    """3D (D, H, W) -> 2D grid of up to `max_slices` evenly spaced slices along the first axis
    (scikit-image's `montage`: ceil(sqrt(n)) columns, as few rows as hold them, empty cells 0)."""
    if volume.ndim == 2:
        return volume
    if volume.ndim != 3:
        raise ValueError(f"expected a 2D or 3D map, got shape {volume.shape}")
    idx = np.unique(np.linspace(0, volume.shape[0] - 1, min(max_slices, volume.shape[0])).round().astype(int))
    cols = int(np.ceil(np.sqrt(len(idx))))
    rows = int(np.ceil(len(idx) / cols))
    return skimage_montage(volume[idx], fill=0, grid_shape=(rows, cols))


def contour(mask: np.ndarray) -> np.ndarray:
    """Pixels of a binary (H, W) mask that touch the background (4-neighbourhood); outside the
    image counts as the mask, so a lesion cut by the border is not outlined along it."""
    m = np.asarray(mask, dtype=bool)
    return m & ~ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(2, 1), border_value=1)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """Any (H, W) or (H, W, C) image -> (H, W, 3) uint8, contrast-stretched when not uint8."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 3:
        a = a[..., :3] if a.shape[2] >= 3 else np.repeat(a[..., :1], 3, axis=2)
    if a.dtype != np.uint8:
        lo, hi = np.percentile(a, (0.5, 99.5)) if a.size else (0, 1)
        a = (np.clip((a.astype(np.float64) - lo) / max(hi - lo, 1e-8), 0, 1) * 255).round().astype(np.uint8)
    return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a


def overlay_rgb(uncertainty: np.ndarray, prediction: np.ndarray, image: np.ndarray | None = None,
                cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """Heat map blended over `image` (or over the predicted mask when no image) with opacity equal to
    the uncertainty, so certain pixels show what is underneath; predicted lesion contour on top."""
    base = _as_rgb(image) if image is not None else _as_rgb((prediction > 0).astype(np.uint8) * 90)
    alpha = np.clip(uncertainty, 0, 1)[..., None] ** 0.5  # make faint uncertainty visible
    out = (1 - alpha) * base + alpha * heatmap_rgb(uncertainty, cmap)
    out = out.round().astype(np.uint8)
    out[contour(prediction > 0)] = CONTOUR_RGB
    return out


# ----------------------------------------------------------------------------- files
def _write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image
    Image.fromarray(rgb).save(path, format="PNG")


def find_image(images_dir: Path | None, case: str,
               suffixes: Sequence[str] = IMAGE_SUFFIXES) -> Path | None:
    """`CASE_0000.<ext>` (nnU-Net's naming) or `CASE.<ext>` in `images_dir`."""
    if images_dir is None:
        return None
    for stem in (f"{case}_0000", case):
        for suffix in suffixes:
            if (images_dir / f"{stem}{suffix}").is_file():
                return images_dir / f"{stem}{suffix}"
    return None


def read_image(path: Path) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im)


def case_statistics(case: str, u: np.ndarray, prediction: np.ndarray, probs: np.ndarray,
                    empty_weight: float = 1.0) -> dict:
    """One row of uncertainty.csv (`review_rank` is added once all cases are known)."""
    return {"case": case, "confidence": case_confidence(probs, empty_weight=empty_weight),
            "mean_entropy": float(u.mean()),
            "p95_entropy": float(np.percentile(u, 95)),
            "uncertain_fraction": float((u > UNCERTAIN_LEVEL).mean()),
            "foreground_pixels": int((prediction > 0).sum())}


def geometry_source(pred_dir: Path, images_dir: Path | None, case: str) -> Path | None:
    """The file whose geometry a 3D map takes: the predicted label file nnUNetv2_predict wrote
    (`PRED/CASE.nii.gz`, it carries the input image's geometry), else the input image."""
    for suffix in VOLUME_SUFFIXES:
        if (pred_dir / f"{case}{suffix}").is_file():
            return pred_dir / f"{case}{suffix}"
    return find_image(images_dir, case, VOLUME_SUFFIXES)


def write_volume_map(values: np.ndarray, path: Path, geometry_file: Path) -> bool:
    """Write a 3D float map with `geometry_file`'s spacing, origin and direction, as nnU-Net's
    SimpleITKIO reads them. Its `write_seg` casts to integer labels, so the float image is written
    with SimpleITK the way `write_seg` does. False (with a warning) when the shapes differ."""
    import SimpleITK as sitk
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    array, props = SimpleITKIO().read_images([str(geometry_file)])  # read_seg is this for one file
    spatial = array.shape[1:]
    squeezed = tuple(s for s in spatial if s != 1)  # load_probabilities drops singleton axes too
    if len(props["sitk_stuff"]["spacing"]) != 3 or squeezed != tuple(s for s in values.shape if s != 1):
        warnings.warn(f"{geometry_file}: shape {spatial} differs from the probabilities' {values.shape}; "
                      f"{path.name} not written", stacklevel=2)
        return False
    image = sitk.GetImageFromArray(np.asarray(values, dtype=np.float32).reshape(spatial))
    image.SetSpacing(props["sitk_stuff"]["spacing"])
    image.SetOrigin(props["sitk_stuff"]["origin"])
    image.SetDirection(props["sitk_stuff"]["direction"])
    sitk.WriteImage(image, str(path), True)
    return True


def write_case(npz_file: Path, out_dir: Path, images_dir: Path | None = None,
               cmap: str = DEFAULT_CMAP, empty_weight: float = 1.0) -> dict:
    """Both PNGs of one case (and the NIfTI map of a 3D case); returns its statistics row (with
    the written file names)."""
    case = npz_file.name[:-len(".npz")]
    probs = load_probabilities(npz_file)
    u = entropy_map(probs)
    prediction = probs.argmax(0)
    image = None
    image_file = find_image(images_dir, case)
    if image_file is not None and u.ndim == 2:
        image = read_image(image_file)
        if image.shape[:2] != u.shape:
            warnings.warn(f"{image_file}: size {image.shape[:2]} differs from the prediction's {u.shape}; "
                          "overlay drawn on the mask instead", stacklevel=2)
            image = None
    heat_file, overlay_file = out_dir / f"{case}_uncertainty.png", out_dir / f"{case}_overlay.png"
    _write_png(heat_file, heatmap_rgb(montage(u), cmap))
    _write_png(overlay_file, overlay_rgb(montage(u), montage(prediction), image, cmap))
    row = {**case_statistics(case, u, prediction, probs, empty_weight), "uncertainty_png": heat_file.name,
           "overlay_png": overlay_file.name}
    if u.ndim == 3:
        row["uncertainty_volume"] = _write_case_volume(u, out_dir / f"{case}_uncertainty.nii.gz",
                                                       geometry_source(npz_file.parent, images_dir, case))
    return row


def _write_case_volume(u: np.ndarray, path: Path, geometry_file: Path | None) -> str:
    """File name written, or '' when the geometry is unknown (no label file, no image)."""
    if geometry_file is None:
        warnings.warn(f"no label file or image with a geometry for {path.name}; not written "
                      f"(looked for {', '.join(VOLUME_SUFFIXES)})", stacklevel=3)
        return ""
    return path.name if write_volume_map(u, path, geometry_file) else ""


def rank_for_review(rows: Sequence[dict]) -> list[dict]:
    """Rows sorted least confident first, each given its `review_rank` (1 = review first); ties
    keep the case order."""
    ranked = sorted(rows, key=lambda r: r["confidence"])
    for i, row in enumerate(ranked, 1):
        row["review_rank"] = i
    return ranked


def write_uncertainty(pred_dir: str | Path, out_dir: str | Path | None = None,
                      images_dir: str | Path | None = None, cmap: str = DEFAULT_CMAP,
                      cases: Sequence[str] | None = None, empty_weight: float = 1.0) -> list[dict]:
    """Uncertainty PNGs for every `CASE.npz` of an nnU-Net prediction folder (or only `cases`);
    writes `uncertainty.csv` and returns its rows. empty_weight: the model's validation record's
    weight of empty predictions (`validation_record.py`; 1: the probabilities alone)."""
    pred_dir = Path(pred_dir)
    out_dir = Path(out_dir) if out_dir is not None else pred_dir / DEFAULT_SUBDIR
    files = sorted(pred_dir.glob("*.npz"))
    if cases is not None:
        wanted = set(cases)
        files = [f for f in files if f.name[:-len(".npz")] in wanted]
    if not files:
        raise FileNotFoundError(f"no .npz probability files in {pred_dir}: run nnUNetv2_predict with "
                                "--save_probabilities")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [write_case(f, out_dir, Path(images_dir) if images_dir else None, cmap, empty_weight)
            for f in files]
    rank_for_review(rows)
    fields = list(dict.fromkeys(k for row in rows for k in row))  # 2D and 3D rows may differ
    with open(out_dir / "uncertainty.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return rows


# ----------------------------------------------------------------------------- command line
def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "uncertainty", help="entropy maps and a per-case confidence from nnUNetv2_predict --save_probabilities output",
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pred", metavar="PRED_DIR", help="nnUNetv2_predict output folder holding CASE.npz files")
    p.add_argument("-o", "--output", default=None, metavar="OUT_DIR",
                   help=f"output folder (default PRED_DIR/{DEFAULT_SUBDIR})")
    p.add_argument("--images", default=None, metavar="IMAGES_DIR",
                   help="the folder given to nnUNetv2_predict -i: overlays are drawn on the images; "
                        "3D maps take their geometry from them when PRED_DIR has no label file")
    p.add_argument("--cmap", default=DEFAULT_CMAP, help=f"matplotlib colour map (default {DEFAULT_CMAP})")
    p.add_argument("-m", "--model", default=None, metavar="MODEL_FOLDER",
                   help="the trained model (TRAINER__PLANS__CONFIGURATION folder, or one fold_X): empty predictions "
                        "are weighed down when they were worse than lesion predictions on its validation cases "
                        "(fold_X/validation/summary.json)")
    p.add_argument("-f", "--folds", nargs="+", default=None, metavar="FOLD",
                   help="with --model: the folds whose validation to read (default: every fold that has one; "
                        "the folds you predicted with)")
    p.add_argument("--review", type=int, default=DEFAULT_REVIEW, metavar="N",
                   help=f"cases in the printed review list (default {DEFAULT_REVIEW}; 0 = all)")
    p.set_defaults(func=main)


def review_list(rows: Sequence[dict], limit: int | None = DEFAULT_REVIEW) -> str:
    """The printed review list: cases least confident first, with what makes them so."""
    ranked = sorted(rows, key=lambda r: r["review_rank"])
    shown = ranked if limit is None or limit <= 0 else ranked[:limit]
    lines = [f"review first (least confident of {len(rows)}; confidence 0..1, 1 = likely good):",
             f"  {'rank':>4}  {'confidence':>10}  {'lesion px':>9}  case"]
    lines += [f"  {r['review_rank']:>4}  {r['confidence']:>10.3f}  {r['foreground_pixels']:>9}  {r['case']}"
              for r in shown]
    if len(shown) < len(rows):
        lines.append(f"  ... {len(rows) - len(shown)} more in uncertainty.csv (--review 0 prints all)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if args.folds is not None and args.model is None:
        print("unisegdiff uncertainty: error: --folds needs --model", file=sys.stderr)
        return 2
    try:
        record = None if args.model is None else model_record(args.model, args.folds)
        print(record.describe() if record else
              "confidence from the probabilities alone; --model MODEL_FOLDER also weighs empty predictions by how "
              "often they were right on the model's validation cases")
        rows = write_uncertainty(args.pred, args.output, args.images, args.cmap,
                                 empty_weight=record.empty_weight if record else 1.0)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"unisegdiff uncertainty: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output) if args.output else Path(args.pred) / DEFAULT_SUBDIR
    volumes = ", CASE_uncertainty.nii.gz" if any(r.get("uncertainty_volume") for r in rows) else ""
    print(f"{len(rows)} cases -> {out} (CASE_uncertainty.png, CASE_overlay.png{volumes}, uncertainty.csv)")
    print(review_list(rows, args.review))
    return 0
