"""Does `unisegdiff convert polyp` turn the original Kvasir-SEG release into exactly its masks? (issue 27, item 1)

    .venv/bin/python benchmarks/experiments/kvasir_check.py DOWNLOAD [--work WORK]
    .venv/bin/python benchmarks/experiments/kvasir_check.py --smoke   # a tiny fake Kvasir-SEG written on the spot

DOWNLOAD: the release's unpacked `Kvasir-SEG` folder (`images/*.jpg`, `masks/*.jpg`, `kavsir_bboxes.json`).
It is converted with the polyp converter (original layout, no splits) into WORK (a temporary folder, removed
afterwards, unless --work). Then, for every image/mask pair: the label rebuilt by hand from the JPEG mask (the
three channels averaged, foreground `>= 128`, the rule docs/datasets.md states) is compared with the written
label pixel for pixel, and the written image with the decoded JPEG; the image's height and width with
`kavsir_bboxes.json`'s, its mask's and the written label's; and the files are screened for what may need
special handling (JPEG residue, values between the two levels, channels that differ, EXIF rotation, empty
masks, single-pixel foreground components, odd names, orphans, boxes outside the image). Machine paths are
written as DOWNLOAD and WORK; the table also goes to a .md beside the JSON.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import _path  # noqa: F401  (first: benchmarks/ on the module path)
import numpy as np
import torch
from _common import add_smoke_arg, apply_smoke, meta, print_table, replace_paths, write_json
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from nnunet_unisegdiff.conversion.registry import convert
from nnunet_unisegdiff.conversion.writer import load_summary, read_sources

NAME = "kvasir_check"
THRESHOLD = 128  # docs/datasets.md, polyps: masks averaged over channels, foreground >= 128
NEAR = 32  # mask values in [NEAR, 255 - NEAR] are near neither level: ambiguous, not JPEG residue
BBOXES = "kavsir_bboxes.json"  # the release's spelling
PLAIN_NAME = re.compile(r"^[a-z0-9]+\.jpg$")
EXIF_ORIENTATION = 0x0112


def expected_label(mask: np.ndarray) -> np.ndarray:
    """(H,W) uint8 0/1 from a decoded (H,W,3) mask: channel mean `>= THRESHOLD`, built without the converter."""
    return (mask.astype(np.float64).mean(axis=2) >= THRESHOLD).astype(np.uint8)


def decode(path: Path) -> tuple[np.ndarray, str, int]:
    """(H,W,3) uint8 RGB decode of an image file, its PIL mode and its EXIF orientation (1: none)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")), im.mode, int(im.getexif().get(EXIF_ORIENTATION, 1))


def read_png(path: Path) -> np.ndarray | None:
    """A written PNG as an array, or None when the file is missing."""
    if not path.is_file():
        return None
    with Image.open(path) as im:
        return np.asarray(im)


def mask_screen(mask: np.ndarray, label: np.ndarray) -> dict:
    """What a decoded (H,W,3) mask holds besides clean 0/255, and the foreground's single-pixel components."""
    grey = mask.astype(np.float64).mean(axis=2)
    below, above = grey[grey < THRESHOLD], grey[grey >= THRESHOLD]
    components, n = ndimage.label(label)
    sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
    singles = np.flatnonzero(sizes == 1) + 1
    return {"channels_differ": bool((mask != mask[..., :1]).any()),
            "residue": int(((grey != 0) & (grey != 255)).sum()),
            "ambiguous": int(((grey >= NEAR) & (grey <= 255 - NEAR)).sum()),
            "background_max": float(below.max()) if below.size else None,
            "foreground_min": float(above.min()) if above.size else None,
            "foreground": int(label.sum()), "components": int(n), "single_pixel_components": int(singles.size),
            "single_pixel_at_origin": bool(singles.size and components[0, 0] in singles)}


def boxes_outside(entry: dict) -> int:
    """How many of one image's boxes leave [0, width] x [0, height] or are empty."""
    return sum(not (0 <= b["xmin"] < b["xmax"] <= entry["width"] and 0 <= b["ymin"] < b["ymax"] <= entry["height"])
               for b in entry.get("bbox", []))


def check_pair(image_file: Path, mask_file: Path, case: str | None, raw: Path, entry: dict | None) -> dict:
    """One pair's record: sizes, modes, the label and image mismatches against the written case (a written file
    missing or of another size counts all its pixels), the mask screen."""
    image, image_mode, image_exif = decode(image_file)
    mask, mask_mode, mask_exif = decode(mask_file)
    expected = expected_label(mask)
    size = list(image.shape[:2])
    rec = {"name": image_file.name, "size": size, "mask_size": list(mask.shape[:2]), "image_mode": image_mode,
           "mask_mode": mask_mode, "exif_rotated": image_exif != 1 or mask_exif != 1,
           "bboxes_size": [entry["height"], entry["width"]] if entry else None,
           "boxes": len(entry.get("bbox", [])) if entry else 0, "boxes_outside": boxes_outside(entry) if entry else 0,
           "case": case, **mask_screen(mask, expected)}
    written = read_png(raw / "imagesTr" / f"{case}_0000.png") if case else None
    label = read_png(raw / "labelsTr" / f"{case}.png") if case else None
    rec["written_image_size"] = list(written.shape[:2]) if written is not None else None
    rec["label_size"] = list(label.shape[:2]) if label is not None else None
    rec["label_values"] = sorted(int(v) for v in np.unique(label)) if label is not None else []
    same = label is not None and label.shape == expected.shape
    rec["label_mismatch"] = int((label != expected).sum()) if same else int(expected.size)
    same = written is not None and written.shape == image.shape
    rec["image_mismatch"] = int((written != image).any(axis=-1).sum()) if same else int(expected.size)
    return rec


def pair_files(download: Path) -> tuple[list[tuple[Path, Path]], list[str], list[str], list[str]]:
    """(image/mask pairs by identical file name, images without mask, masks without image, odd names)."""
    images = {p.name: p for p in sorted((download / "images").iterdir()) if p.is_file()}
    masks = {p.name: p for p in sorted((download / "masks").iterdir()) if p.is_file()}
    odd = sorted(f"{d}/{n}" for d, files in (("images", images), ("masks", masks))
                 for n in files if not PLAIN_NAME.match(n))
    pairs = [(images[n], masks[n]) for n in images if n in masks]
    return pairs, sorted(set(images) - set(masks)), sorted(set(masks) - set(images)), odd


def converted_cases(raw: Path) -> dict[str, str]:
    """{image file name: case ID} from the written dataset's source table (origin `IMAGE + MASK`)."""
    return {Path(row["origin"].split(" + ")[0]).name: case for case, row in read_sources(raw).items()}


def summarise(records: list[dict], bboxes: dict, conversion: dict, listing: tuple) -> dict:
    """The results: counts and the names of the files each finding concerns."""
    _, no_mask, no_image, odd = listing
    names = lambda key: [r["name"] for r in records if r[key]]  # noqa: E731
    stems = {Path(r["name"]).stem for r in records}
    at = lambda test: [r["name"] for r in records if test(r)]  # noqa: E731
    background = [r["background_max"] for r in records if r["background_max"] is not None]
    foreground = [r["foreground_min"] for r in records if r["foreground_min"] is not None]
    sizes = sorted({tuple(r["size"]) for r in records})
    return {
        "download": {"pairs": len(records), "images_without_mask": no_mask, "masks_without_image": no_image,
                     "odd_names": odd, "bboxes_entries": len(bboxes),
                     "bboxes_without_pair": sorted(set(bboxes) - stems),
                     "pairs_without_bboxes": sorted(stems - set(bboxes))},
        "conversion": {k: conversion[k] for k in ("cases_written", "empty_masks", "bad_pairs_skipped",
                                                            "orphans_skipped")},
        "labels": {"rule": f"channel mean >= {THRESHOLD}", "pairs_checked": len(records),
                   "pairs_not_converted": at(lambda r: r["case"] is None),
                   "mismatching_files": {r["name"]: r["label_mismatch"] for r in records if r["label_mismatch"]},
                   "mismatching_pixels": sum(r["label_mismatch"] for r in records),
                   "pixels_checked": sum(r["size"][0] * r["size"][1] for r in records),
                   "foreground_pixels": sum(r["foreground"] for r in records),
                   "values_outside_0_1": at(lambda r: not set(r["label_values"]) <= {0, 1})},
        "images": {"mismatching_files": {r["name"]: r["image_mismatch"] for r in records if r["image_mismatch"]},
                   "mismatching_pixels": sum(r["image_mismatch"] for r in records)},
        "sizes": {"image_vs_mask": at(lambda r: r["size"] != r["mask_size"]),
                  "image_vs_bboxes": at(lambda r: r["bboxes_size"] is not None and r["size"] != r["bboxes_size"]),
                  "written_image_vs_label": at(lambda r: r["written_image_size"] != r["label_size"]),
                  "written_vs_original": at(lambda r: r["written_image_size"] != r["size"]),
                  "distinct": len(sizes), "smallest": list(min(sizes, key=lambda s: s[0] * s[1])),
                  "largest": list(max(sizes, key=lambda s: s[0] * s[1]))},
        "boxes": {"boxes": sum(r["boxes"] for r in records),
                  "per_image": {str(k): v for k, v in sorted(Counter(r["boxes"] for r in records).items())},
                  "outside_image": at(lambda r: r["boxes_outside"])},
        "masks": {"image_modes": dict(Counter(r["image_mode"] for r in records)),
                  "mask_modes": dict(Counter(r["mask_mode"] for r in records)),
                  "exif_rotated": names("exif_rotated"), "channels_differ": names("channels_differ"),
                  "files_with_residue": len(names("residue")), "residue_pixels": sum(r["residue"] for r in records),
                  "ambiguous_band": [NEAR, 255 - NEAR], "ambiguous_files": names("ambiguous"),
                  "ambiguous_pixels": sum(r["ambiguous"] for r in records),
                  "background_max": max(background, default=None), "foreground_min": min(foreground, default=None),
                  "empty": at(lambda r: r["foreground"] == 0),
                  "more_than_one_component": len(at(lambda r: r["components"] > 1)),
                  "single_pixel_component_files": names("single_pixel_components"),
                  "single_pixel_components": sum(r["single_pixel_components"] for r in records),
                  "single_pixel_at_origin": len(names("single_pixel_at_origin"))},
    }


def table(res: dict) -> list[dict]:
    """The printed/markdown rows: one per check, files concerned and pixels where counted."""
    lab, siz, msk, dl = res["labels"], res["sizes"], res["masks"], res["download"]
    return [
        {"check": "image/mask pairs (orphans, odd names)", "files": dl["pairs"],
         "note": f"{len(dl['images_without_mask']) + len(dl['masks_without_image'])} orphans, "
                 f"{len(dl['odd_names'])} odd names"},
        {"check": "pairs the converter wrote", "files": res["conversion"]["cases_written"],
         "note": f"{len(res['conversion']['bad_pairs_skipped'])} bad pairs, "
                 f"{len(res['conversion']['orphans_skipped'])} orphans skipped"},
        {"check": f"label != hand-built ({lab['rule']})", "files": len(lab["mismatching_files"]),
         "pixels": lab["mismatching_pixels"], "note": f"of {lab['pixels_checked']} pixels"},
        {"check": "written image != decoded JPEG", "files": len(res["images"]["mismatching_files"]),
         "pixels": res["images"]["mismatching_pixels"]},
        {"check": "size: image != mask", "files": len(siz["image_vs_mask"])},
        {"check": f"size: image != {BBOXES}", "files": len(siz["image_vs_bboxes"]),
         "note": f"{dl['bboxes_entries']} entries, {len(dl['pairs_without_bboxes'])} pairs without"},
        {"check": "size: written image != written label", "files": len(siz["written_image_vs_label"]),
         "note": f"{siz['distinct']} distinct sizes, {siz['smallest']} to {siz['largest']}"},
        {"check": "size: written image != original", "files": len(siz["written_vs_original"])},
        {"check": "boxes outside the image", "files": len(res["boxes"]["outside_image"]),
         "note": f"{res['boxes']['boxes']} boxes"},
        {"check": "masks with JPEG residue (not 0/255)", "files": msk["files_with_residue"],
         "pixels": msk["residue_pixels"],
         "note": f"background <= {msk['background_max']}, foreground >= {msk['foreground_min']}"},
        {"check": f"mask values in {msk['ambiguous_band']}", "files": len(msk["ambiguous_files"]),
         "pixels": msk["ambiguous_pixels"]},
        {"check": "mask channels differ", "files": len(msk["channels_differ"])},
        {"check": "EXIF-rotated image or mask", "files": len(msk["exif_rotated"])},
        {"check": "empty masks", "files": len(msk["empty"])},
        {"check": "single-pixel foreground components", "files": len(msk["single_pixel_component_files"]),
         "pixels": msk["single_pixel_components"], "note": f"{msk['single_pixel_at_origin']} at (0, 0)"},
    ]


COLUMNS = [("check", "check", "s"), ("files", "files", "d"), ("pixels", "pixels", "d"), ("note", "note", "s")]


def markdown(rows: list[dict], command: str) -> str:
    lines = [f"Kvasir-SEG through `unisegdiff convert polyp`: `{command}`", "",
             "| check | files | pixels | note |", "|---|---:|---:|---|"]
    lines += [f"| {r['check']} | {r['files']} | {r.get('pixels', '-')} | {r.get('note', '')} |" for r in rows]
    return "\n".join(lines) + "\n"


def fake_download(folder: Path, n: int = 4, seed: int = 0) -> Path:
    """A tiny Kvasir-SEG in the release's layout: random RGB JPEG images, JPEG masks of one white ellipse
    each (RGB, JPEG-ringing as the release's), and `kavsir_bboxes.json` with each image's size and box."""
    rng = np.random.default_rng(seed)
    root = folder / "Kvasir-SEG"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    bboxes = {}
    for i in range(n):
        h, w = 36 + 4 * i, 52 - 2 * i
        stem = "cju" + "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz0123456789"), 22))
        yy, xx = np.mgrid[:h, :w]
        cy, cx, ry, rx = h / 2, w / 2 + i, h / 4, w / 5
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.jpg")
        Image.fromarray(np.repeat(inside[..., None] * np.uint8(255), 3, axis=2)).save(root / "masks" / f"{stem}.jpg")
        ys, xs = np.nonzero(inside)
        bboxes[stem] = {"height": h, "width": w, "bbox": [{"label": "polyp", "xmin": int(xs.min()),
                                                           "ymin": int(ys.min()), "xmax": int(xs.max()) + 1,
                                                           "ymax": int(ys.max()) + 1}]}
    (root / BBOXES).write_text(json.dumps(bboxes))
    return root


def run_checks(download: Path, work: Path, progress: bool) -> dict:
    """Convert `download` into `work` and check every pair (see the module docstring)."""
    raw = convert("polyp", download, out_root=work / "nnUNet_raw", preprocessed_root=work / "nnUNet_preprocessed",
                  folds=None, overwrite=True, skip_bad=True, progress=progress, quiet=True, layout="original")
    bboxes = json.loads((download / BBOXES).read_text())
    listing = pair_files(download)
    cases = converted_cases(raw)
    records = [check_pair(image, mask, cases.get(image.name), raw, bboxes.get(image.stem))
               for image, mask in tqdm(listing[0], desc="pairs", unit="pair", disable=not progress)]
    return summarise(records, bboxes, load_summary(raw), listing)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("download", type=Path, nargs="?", help="the unpacked Kvasir-SEG folder")
    ap.add_argument("--work", type=Path, default=None, help="where the converted dataset goes (kept)")
    ap.add_argument("--json", type=Path, default=None)
    add_smoke_arg(ap)
    args = ap.parse_args(argv)
    apply_smoke(args, NAME)
    if not args.smoke and args.download is None:
        ap.error("DOWNLOAD is required (or --smoke)")
    temporary = Path(tempfile.mkdtemp(prefix=f"{NAME}_"))
    work = args.work or temporary
    try:
        download = fake_download(temporary / "download") if args.smoke else args.download.resolve()
        results = run_checks(download, work.resolve(), progress=not args.smoke)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    placeholders = {str(download): "DOWNLOAD", str(work.resolve()): "WORK"}
    if args.download is not None:
        placeholders[str(args.download)] = "DOWNLOAD"
    if args.work is not None:
        placeholders[str(args.work)] = "WORK"
    results = replace_paths(results, placeholders)
    info = replace_paths(meta(torch.device("cpu"), settings={"threshold": THRESHOLD, "near": NEAR}), placeholders)
    rows = table(results)
    print_table(rows, COLUMNS)
    path = write_json(NAME, info, results, args.json)
    path.with_suffix(".md").write_text(markdown(rows, info["command"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
