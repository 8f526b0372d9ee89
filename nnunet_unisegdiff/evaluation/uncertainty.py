"""`unisegdiff uncertainty`: per-pixel uncertainty maps a person can look at, from the class
probabilities nnU-Net saves with `--save_probabilities`.

For UniSegDiff those probabilities are the STAPLE posterior of the 20 staged samples (paper
section 2.4): where the samples agree the posterior is 0 or 1, where they disagree it moves towards
0.5. The map is the posterior's entropy, normalised by log(C) so it lies in [0, 1] for any number
of classes C: 0 where one class has probability 1, 1 where all classes are equally likely (p = 0.5
for a binary lesion). For a single-pass network (nnUNetTrainer) the same command shows the entropy
of its softmax.

    nnUNetv2_predict -i IMAGES -o PRED -d D -c 2d -tr nnUNetTrainerUniSegDiff -f 0 --save_probabilities
    unisegdiff uncertainty PRED [--images IMAGES] [-o OUT]

Per case `CASE.npz` it writes, into `PRED/uncertainty/` by default (a sub-folder, because
evaluators such as `nnUNetv2_evaluate_folder` treat every `.png` beside the labels as a prediction):

* `CASE_uncertainty.png`: the entropy as a heat map (colour map `inferno`: black = certain,
  yellow = maximal), the size of the label file (3D: a montage of slices);
* `CASE_overlay.png`: the heat map blended over the input image (with `--images`) or over the
  predicted mask, with the predicted lesion contour in cyan;
* `uncertainty.csv`: per case the mean entropy, its 95th percentile and the fraction of pixels
  above 0.5: a list of the cases worth a second look.
"""
from __future__ import annotations

import argparse
import csv
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

DEFAULT_SUBDIR = "uncertainty"
DEFAULT_CMAP = "inferno"
UNCERTAIN_LEVEL = 0.5  # normalised entropy above which a pixel counts as uncertain
CONTOUR_RGB = (0, 255, 255)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


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
    """3D (D, H, W) -> 2D grid of up to `max_slices` evenly spaced slices along the first axis."""
    if volume.ndim == 2:
        return volume
    if volume.ndim != 3:
        raise ValueError(f"expected a 2D or 3D map, got shape {volume.shape}")
    idx = np.unique(np.linspace(0, volume.shape[0] - 1, min(max_slices, volume.shape[0])).round().astype(int))
    cols = int(np.ceil(np.sqrt(len(idx))))
    rows = int(np.ceil(len(idx) / cols))
    h, w = volume.shape[1:]
    out = np.zeros((rows * h, cols * w), dtype=volume.dtype)
    for k, i in enumerate(idx):
        r, c = divmod(k, cols)
        out[r * h:(r + 1) * h, c * w:(c + 1) * w] = volume[i]
    return out


def contour(mask: np.ndarray) -> np.ndarray:
    """Pixels of a binary (H, W) mask that touch the background (4-neighbourhood)."""
    m = np.asarray(mask, dtype=bool)
    padded = np.pad(m, 1, mode="edge")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return m & ~interior


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


def find_image(images_dir: Path | None, case: str) -> Path | None:
    """`CASE_0000.<ext>` (nnU-Net's naming) or `CASE.<ext>` in `images_dir`."""
    if images_dir is None:
        return None
    for stem in (f"{case}_0000", case):
        for suffix in IMAGE_SUFFIXES:
            if (images_dir / f"{stem}{suffix}").is_file():
                return images_dir / f"{stem}{suffix}"
    return None


def read_image(path: Path) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im)


def case_statistics(case: str, u: np.ndarray, prediction: np.ndarray) -> dict:
    return {"case": case, "mean_entropy": float(u.mean()), "p95_entropy": float(np.percentile(u, 95)),
            "uncertain_fraction": float((u > UNCERTAIN_LEVEL).mean()),
            "foreground_pixels": int((prediction > 0).sum())}


def write_case(npz_file: Path, out_dir: Path, images_dir: Path | None = None,
               cmap: str = DEFAULT_CMAP) -> dict:
    """Both PNGs of one case; returns its statistics row (with the written paths)."""
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
    return {**case_statistics(case, u, prediction), "uncertainty_png": heat_file.name,
            "overlay_png": overlay_file.name}


def write_uncertainty(pred_dir: str | Path, out_dir: str | Path | None = None,
                      images_dir: str | Path | None = None, cmap: str = DEFAULT_CMAP,
                      cases: Sequence[str] | None = None) -> list[dict]:
    """Uncertainty PNGs for every `CASE.npz` of an nnU-Net prediction folder (or only `cases`);
    writes `uncertainty.csv` and returns its rows."""
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
    rows = [write_case(f, out_dir, Path(images_dir) if images_dir else None, cmap) for f in files]
    with open(out_dir / "uncertainty.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return rows


# ----------------------------------------------------------------------------- command line
def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "uncertainty", help="entropy heat maps from nnUNetv2_predict --save_probabilities output",
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pred", metavar="PRED_DIR", help="nnUNetv2_predict output folder holding CASE.npz files")
    p.add_argument("-o", "--output", default=None, metavar="OUT_DIR",
                   help=f"output folder (default PRED_DIR/{DEFAULT_SUBDIR})")
    p.add_argument("--images", default=None, metavar="IMAGES_DIR",
                   help="the folder given to nnUNetv2_predict -i: overlays are drawn on the images")
    p.add_argument("--cmap", default=DEFAULT_CMAP, help=f"matplotlib colour map (default {DEFAULT_CMAP})")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        rows = write_uncertainty(args.pred, args.output, args.images, args.cmap)
    except (FileNotFoundError, KeyError) as e:
        print(f"unisegdiff uncertainty: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output) if args.output else Path(args.pred) / DEFAULT_SUBDIR
    worst = sorted(rows, key=lambda r: -r["mean_entropy"])[:5]
    print(f"{len(rows)} cases -> {out} (CASE_uncertainty.png, CASE_overlay.png, uncertainty.csv)")
    print("most uncertain: " + ", ".join(f"{r['case']} ({r['mean_entropy']:.3f})" for r in worst))
    return 0
