"""A shifted copy of a raw 2D dataset's held-out images (issue 14, item 4): each image corrupted by noise,
blur or lost contrast, so that a model trained on the clean images fails on a share of them and a per-case
confidence has failures to find. Labels are copied unchanged.

    .venv/bin/python benchmarks/experiments/shifted_copy.py RAW_DATASET OUT_FOLDER [--seed 0] [--scale 1.0]
    .venv/bin/python benchmarks/draw_agreement.py MODEL_FOLDER OUT_FOLDER      # then score it

Cases take the three kinds in turn, each at one of three severities drawn per case (seeded); `--scale`
multiplies every severity. OUT_FOLDER gets imagesTs/, labelsTs/, dataset.json and corruptions.json
(case -> kind, severity). Written into a temporary folder and moved into place whole.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import _path  # noqa: F401  (first: benchmarks/ on the module path)
import numpy as np
import torch
from _common import add_smoke_arg, apply_smoke, meta, write_json
from scipy.ndimage import gaussian_filter
from skimage.io import imread, imsave

# kind: severities (noise: sd as a fraction of 255; blur: Gaussian sigma in pixels; contrast: kept fraction)
SEVERITIES = {"noise": (0.1, 0.2, 0.3), "blur": (1.0, 1.5, 2.5), "contrast": (0.5, 0.3, 0.15)}


def corrupt(image: np.ndarray, kind: str, severity: float, rng: np.random.Generator) -> np.ndarray:
    """image: (H, W) or (H, W, C) uint8 -> the same shape and dtype, corrupted."""
    x = image.astype(np.float64)
    if kind == "noise":
        x = x + rng.normal(0.0, 255.0 * severity, x.shape)
    elif kind == "blur":
        x = gaussian_filter(x, sigma=(severity, severity) + (0,) * (x.ndim - 2))
    elif kind == "contrast":
        mean = x.mean(axis=(0, 1), keepdims=True)
        x = mean + (x - mean) * severity
    else:
        raise ValueError(f"unknown corruption {kind!r}; one of {', '.join(SEVERITIES)}")
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def write_shifted_copy(raw: Path, out: Path, seed: int = 0, scale: float = 1.0) -> dict[str, dict]:
    """{case: {kind, severity}} of the copy written to `out` (refused if `out` exists)."""
    images = sorted((raw / "imagesTs").glob("*_0000.png"))
    if not images:
        raise FileNotFoundError(f"{raw / 'imagesTs'}: no *_0000.png images (a raw 2D nnU-Net dataset with imagesTs)")
    if out.exists():
        raise FileExistsError(f"{out} exists; give a new folder")
    for image_file in images:
        label_file = raw / "labelsTs" / image_file.name.replace("_0000.png", ".png")
        if not label_file.is_file():
            raise FileNotFoundError(f"{label_file}: the label of {image_file.name} is missing")
    rng = np.random.default_rng(seed)
    kinds = list(SEVERITIES)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "imagesTs").mkdir()
        (tmp / "labelsTs").mkdir()
        record = {}
        for i, image_file in enumerate(images):
            case = image_file.name[: -len("_0000.png")]
            kind = kinds[i % len(kinds)]
            severity = scale * float(rng.choice(SEVERITIES[kind]))
            imsave(tmp / "imagesTs" / image_file.name, corrupt(imread(image_file), kind, severity, rng),
                   check_contrast=False)
            shutil.copy2(raw / "labelsTs" / f"{case}.png", tmp / "labelsTs" / f"{case}.png")
            record[case] = {"kind": kind, "severity": severity}
        if (raw / "dataset.json").is_file():
            shutil.copy2(raw / "dataset.json", tmp / "dataset.json")
        (tmp / "corruptions.json").write_text(json.dumps({"source": str(raw), "seed": seed, "scale": scale,
                                                          "cases": record}, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.move(str(tmp), str(out))
    return record


def write_smoke_raw(folder: Path, n: int = 6) -> Path:
    from nnunet_unisegdiff.conversion.synthetic import generate_cases
    for sub in ("imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True)
    for c in generate_cases(n, size=32, empty_fraction=0.3):
        imsave(folder / "imagesTs" / f"{c.case_id}_0000.png", c.image, check_contrast=False)
        imsave(folder / "labelsTs" / f"{c.case_id}.png", c.label.astype(np.uint8), check_contrast=False)
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("raw", type=Path, nargs="?", help="raw nnU-Net dataset with imagesTs and labelsTs")
    ap.add_argument("out", type=Path, nargs="?", help="the new folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every severity")
    ap.add_argument("--json", type=Path, default=None, help="also write the record here")
    add_smoke_arg(ap)
    args = ap.parse_args(argv)
    if args.smoke:
        root = Path(tempfile.mkdtemp(prefix="shifted_smoke_"))
        apply_smoke(args, "shifted_copy", raw=write_smoke_raw(root / "raw"), out=root / "shifted")
    elif args.raw is None or args.out is None:
        ap.error("RAW_DATASET and OUT_FOLDER are required (or --smoke)")
    try:
        record = write_shifted_copy(args.raw, args.out, args.seed, args.scale)
    except (FileNotFoundError, FileExistsError) as e:
        print(f"shifted_copy: error: {e}", file=sys.stderr)
        return 2
    counts = {k: sum(r["kind"] == k for r in record.values()) for k in SEVERITIES}
    print(f"wrote {len(record)} shifted cases to {args.out} ({', '.join(f'{k} {n}' for k, n in counts.items())})")
    if args.json is not None:
        write_json("shifted_copy", meta(torch.device("cpu"), settings={k: str(v) for k, v in vars(args).items()}),
                   {"counts": counts, "cases": record}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
