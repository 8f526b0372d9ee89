"""Helpers for readers: listing and pairing files, case IDs, decoding images and masks to uint8."""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from .common import BadPairError, LayoutError, Orphan

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def sanitize_id(text: str) -> str:
    """`benign (1)` -> `benign_1`: only [A-Za-z0-9_-], runs of anything else become one `_`."""
    out = re.sub(r"[^A-Za-z0-9\-]+", "_", str(text)).strip("_-")
    if not out:
        raise ValueError(f"cannot make a case ID from {text!r}")
    return out


def list_files(folder: Path, exts: Sequence[str] = IMAGE_EXTS) -> list[Path]:
    """Plain files in `folder` with one of `exts` (case-insensitive), hidden files (.DS_Store,
    ._foo resource forks) and Thumbs.db excluded, sorted naturally (2 before 10)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LayoutError(f"{folder}: folder not found")
    exts = tuple(e.lower() for e in exts)
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.name.lower() != "thumbs.db"
             and p.suffix.lower() in exts]
    return sorted(files, key=lambda p: natural_key(p.name))


def natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def pair_by_stem(images: Iterable[Path], masks: Iterable[Path],
                 mask_stem: Callable[[str], str | Sequence[str]] = lambda s: s,
                 ) -> tuple[list[tuple[Path, Path]], list[Orphan]]:
    """Pair images with masks by stem: `mask_stem(image_stem)` is the expected mask stem, or a
    sequence of candidate stems tried in order (e.g. `lambda s: (s, "p" + s)`).
    Returns (pairs in image order, orphans: images without mask and masks without image)."""
    by_stem: dict[str, Path] = {}
    for m in masks:
        by_stem.setdefault(m.stem, m)
    pairs, orphans, used = [], [], set()
    for im in images:
        keys = mask_stem(im.stem)
        key = next((k for k in ([keys] if isinstance(keys, str) else keys) if k in by_stem and k not in used), None)
        if key is not None:
            pairs.append((im, by_stem[key]))
            used.add(key)
        else:
            orphans.append(Orphan(str(im), "image without mask"))
    orphans += [Orphan(str(m), "mask without image") for k, m in by_stem.items() if k not in used]
    return pairs, orphans


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError
    try:
        im = Image.open(path)
        im.load()  # decode now: truncated/corrupt files fail here, not later
        return im
    except FileNotFoundError:
        raise BadPairError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadPairError(f"{path}: cannot read image ({e})") from None


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.dtype in (np.uint16, np.int32, np.int64, np.uint32) or np.issubdtype(a.dtype, np.integer):
        return (a.astype(np.float64) / (65535.0 if a.max() > 255 else 255.0) * 255).round().astype(np.uint8)
    return np.clip(a, 0, 255).round().astype(np.uint8)


def read_image(path: Path | str, mode: str = "RGB") -> np.ndarray:
    """Read a 2D image as uint8: mode "RGB" -> (H,W,3) (grey replicated, alpha and palettes
    dropped), "L" -> (H,W). 16-bit images are scaled to 8 bit. Raises BadPairError."""
    path = Path(path)
    im = _open(path)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = _to_uint8(np.asarray(im))
        if a.ndim != 2:
            raise BadPairError(f"{path}: unexpected {a.ndim}-D image")
        return np.repeat(a[..., None], 3, axis=2) if mode == "RGB" else a
    if mode not in ("RGB", "L"):
        raise ValueError(mode)
    if mode == "L" and im.mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr"):
        a = np.asarray(im.convert("RGB"))
        if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
            return np.asarray(im.convert("L"))
        return np.ascontiguousarray(a[..., 0])
    return np.asarray(im.convert(mode))


def read_mask(path: Path | str, threshold: int = 128) -> np.ndarray:
    """Read a binary mask of any PNG/JPEG/TIF/BMP mode as (H,W) uint8 0/1.

    Alpha is dropped; colour channels are averaged (JPEG masks ring in every channel); 16-bit
    masks are scaled to 8 bit. Foreground is `value >= threshold`, except that a mask whose
    maximum is 1 is taken as already 0/1 coded (some re-exports store 0/1)."""
    path = Path(path)
    im = _open(path)
    a = np.asarray(im)
    if im.mode == "P":
        a = np.asarray(im.convert("RGB"))
    if a.ndim == 3:
        if a.shape[2] in (2, 4):  # LA / RGBA: drop alpha
            a = a[..., :-1]
        a = a.mean(axis=2)
    elif a.ndim != 2:
        raise BadPairError(f"{path}: mask has unexpected shape {a.shape}")
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype != np.float64 and a.max() > 255:
        a = a / 257.0
    if a.max() <= 1:
        return (a > 0.5).astype(np.uint8)
    return (a >= threshold).astype(np.uint8)
