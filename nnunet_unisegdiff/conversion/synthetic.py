"""A synthetic multi-modality lesion set for the demo and the end-to-end tests (no download).

Three "modalities", all written as 3-channel RGB so every case shares one channel layout:

- `grey`: smooth MRI/CT-like texture (grey replicated to RGB), lesions brighter;
- `endo`: endoscopy-like pink mucosa with vignetting and specular spots, lesions redder/raised;
- `us`: ultrasound-like multiplicative speckle, lesions hypoechoic (darker).

Each lesion is an irregular ellipse whose contrast fades smoothly across its border (a sigmoid
of the distance to the contour), so the border is soft and ambiguous while the lesion stays easy
for a tiny UNet to find within a few epochs. The label is the contour at mid-contrast. Some cases
have no lesion (empty masks). With `num_classes=2`, a second lesion class has its own appearance
(grey: darker; endo: bluish; us: hyperechoic).

Deterministic: case i depends only on (seed, stream, i), so a dataset and its held-out test set
are reproducible for a seed, and asking for more cases keeps the first ones unchanged.

    unisegdiff convert synthetic -d 599 --num-cases 40 --num-test 10 --size 64 [--num-classes 2]

writes `imagesTr/labelsTr` and the held-out `imagesTs/labelsTs`. From Python:
`write_synthetic_dataset(...)` (a whole nnU-Net dataset) or `write_heldout_images(folder, ...)`
(an `imagesTs`-style folder with its labels, outside any dataset).
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_unisegdiff.defaults import DEFAULT_SEED

from .common import Case
from .registry import BINARY, DEFAULT_IDS, RGB, ConverterSpec
from .writer import DatasetDeclaration, write_dataset, write_png

MODALITIES = ("grey", "endo", "us")
SOURCES = {"grey": "SynGrey", "endo": "SynEndo", "us": "SynUS"}
TRAIN_STREAM, TEST_STREAM = 0, 1


@dataclass(frozen=True)
class SyntheticDefaults:
    """The generator's defaults, declared once for its functions and its command line."""
    num_cases: int = 40
    num_test: int = 10
    size: int = 64
    num_classes: int = 1
    empty_fraction: float = 0.15


DEFAULTS = SyntheticDefaults()


def labels_for(num_classes: int) -> dict[str, int]:
    if num_classes == 1:
        return dict(BINARY)
    return {"background": 0, **{f"lesion_{k}": k for k in range(1, num_classes + 1)}}


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter
    n = gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return n / (n.std() + 1e-8)


def _lesion_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """Signed, normalised 'distance' of each pixel to an irregular ellipse contour: > 0 inside."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    a, b = rng.uniform(0.12, 0.26, 2) * size
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    th = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(th) + dy * np.sin(th)) / a
    v = (-dx * np.sin(th) + dy * np.cos(th)) / b
    r = np.sqrt(u ** 2 + v ** 2)
    ang = np.arctan2(v, u)
    k1, k2 = rng.integers(2, 5, 2)
    wobble = 1 + 0.12 * np.sin(k1 * ang + rng.uniform(0, 6.3)) + 0.06 * np.sin(k2 * ang + rng.uniform(0, 6.3))
    return 1 - r / wobble


def _soft(field: np.ndarray, width: float) -> np.ndarray:
    """Contrast profile: 1 deep inside, 0.5 on the contour, fading to 0 outside."""
    return 1 / (1 + np.exp(-field / width))


def generate_pair(rng: np.random.Generator, *, size: int = DEFAULTS.size, modality: str = "grey",
                  num_classes: int = DEFAULTS.num_classes, empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One (image (size,size,3) uint8, label (size,size) uint8) pair."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; choose from {MODALITIES}")
    label = np.zeros((size, size), np.uint8)
    blobs: list[tuple[np.ndarray, int]] = []
    if not empty:
        for _attempt in range(int(rng.integers(1, 3)) * 4):  # 1-2 lesions, never touching
            f = _lesion_field(rng, size)
            if label[f > -0.35].any():
                continue
            cls = int(rng.integers(1, num_classes + 1))
            blobs.append((_soft(f, rng.uniform(0.08, 0.14)), cls))
            label[f > 0] = cls
            if len(blobs) == 2:
                break
    tex = _smooth_noise(rng, size, size / 16)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)

    if modality == "grey":
        img = 0.45 + 0.035 * tex + 0.08 * (xx - 0.5) * rng.uniform(-1, 1)
        for s, cls in blobs:
            contrast = 0.32 if cls == 1 else -0.28
            img = img + contrast * s * (1 + 0.1 * tex)
        img = img + 0.02 * rng.standard_normal((size, size))
        rgb = np.repeat(img[..., None], 3, axis=2)
    elif modality == "endo":
        vignette = 1 - 0.55 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 2
        base = np.array([0.78, 0.42, 0.38]) + rng.uniform(-0.05, 0.05, 3)
        rgb = base[None, None] * (vignette * (1 + 0.05 * tex))[..., None]
        for s, cls in blobs:
            shift = np.array([0.18, -0.16, -0.12]) if cls == 1 else np.array([-0.2, -0.05, 0.25])
            rgb = rgb + shift[None, None] * s[..., None] * (1.1 - 0.2 * yy[..., None])
        spots = (_smooth_noise(rng, size, 1.0) > 2.6).astype(np.float64)
        rgb = rgb + 0.35 * spots[..., None]
        rgb = rgb + 0.015 * rng.standard_normal((size, size, 3))
    else:  # us
        from scipy.ndimage import gaussian_filter
        fan = 1 - 0.4 * yy ** 2
        img = 0.5 * fan * (1 + 0.1 * tex)
        for s, cls in blobs:
            img = img * (1 - 0.7 * s) if cls == 1 else img * (1 + 0.6 * s)
        speckle = gaussian_filter(rng.rayleigh(1 / np.sqrt(np.pi / 2), (size, size)), 0.6)  # mean ~1
        img = img * (0.45 + 0.55 * speckle / speckle.mean())
        rgb = np.repeat(img[..., None], 3, axis=2)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), label


def generate_cases(num_cases: int, *, seed: int = DEFAULT_SEED, size: int = DEFAULTS.size,
                   num_classes: int = DEFAULTS.num_classes, empty_fraction: float = DEFAULTS.empty_fraction,
                   modalities: Sequence[str] = MODALITIES,
                   group_by_modality: bool = False, stream: int = TRAIN_STREAM,
                   prefix: str = "SYN") -> list[Case]:
    """`num_cases` deterministic cases; modality i cycles through `modalities`; a share
    `empty_fraction` of them, spread evenly with the first among the first three cases, have an
    empty mask. Case i does not depend on `num_cases` (asking for more keeps the first ones)."""
    if num_classes < 1:
        raise ValueError("num_classes counts lesion classes: at least 1")
    if size < 16:
        raise ValueError("size must be at least 16")
    if not 0 <= empty_fraction <= 1:
        raise ValueError("empty_fraction must be within [0, 1]")
    r = int(np.random.default_rng([seed, stream, 999_983]).integers(0, 3))
    phase = 1 - empty_fraction * (1 + r)

    def is_empty(i: int) -> bool:
        return np.floor((i + 1) * empty_fraction + phase + 1e-9) > np.floor(i * empty_fraction + phase + 1e-9)

    cases = []
    for i in range(num_cases):
        mod = modalities[i % len(modalities)]
        rng = np.random.default_rng([seed, stream, i])
        img, lab = generate_pair(rng, size=size, modality=mod, num_classes=num_classes, empty=is_empty(i))
        cases.append(Case(case_id=f"{prefix}_{i:04d}_{mod}", image=img, label=lab,
                          group=mod if group_by_modality else None, source=SOURCES[mod],
                          origin=f"synthetic(seed={seed}, stream={stream}, index={i})"))
    return cases


def read(source_dir: Path | None = None, *, num_cases: int = DEFAULTS.num_cases, size: int = DEFAULTS.size,
         num_classes: int = DEFAULTS.num_classes, empty_fraction: float = DEFAULTS.empty_fraction,
         modalities: Sequence[str] = MODALITIES, group_by_modality: bool = False,
         num_test: int = DEFAULTS.num_test, seed: int = DEFAULT_SEED) -> list[Case]:
    """Training cases (SOURCE_DIR is ignored)."""
    return generate_cases(num_cases, seed=seed, size=size, num_classes=num_classes, empty_fraction=empty_fraction,
                          modalities=modalities, group_by_modality=group_by_modality)


def read_test(source_dir: Path | None = None, *, num_cases: int = DEFAULTS.num_cases, size: int = DEFAULTS.size,
              num_classes: int = DEFAULTS.num_classes, empty_fraction: float = DEFAULTS.empty_fraction,
              modalities: Sequence[str] = MODALITIES, group_by_modality: bool = False,
              num_test: int = DEFAULTS.num_test, seed: int = DEFAULT_SEED) -> list[Case] | None:
    """Held-out cases (another random stream, IDs `SYNTS_*`), written to imagesTs/labelsTs."""
    if num_test <= 0:
        return None
    return generate_cases(num_test, seed=seed, size=size, num_classes=num_classes, empty_fraction=empty_fraction,
                          modalities=modalities, stream=TEST_STREAM, prefix="SYNTS")


def write_synthetic_dataset(out_root: Path | str | None = None, *, dataset_id: int = DEFAULT_IDS["synthetic"],
                            name: str = "Synthetic", num_cases: int = DEFAULTS.num_cases,
                            num_test: int = DEFAULTS.num_test, size: int = DEFAULTS.size,
                            num_classes: int = DEFAULTS.num_classes, empty_fraction: float = DEFAULTS.empty_fraction,
                            modalities: Sequence[str] = MODALITIES, seed: int = DEFAULT_SEED,
                            folds: str | int | None = "5",
                            overwrite: bool = False, preprocessed_root: Path | str | None = None,
                            progress: bool = False, quiet: bool = True) -> Path:
    """A complete nnU-Net raw dataset (imagesTr/labelsTr + imagesTs/labelsTs); returns its folder."""
    opts = dict(num_cases=num_cases, size=size, num_classes=num_classes, empty_fraction=empty_fraction,
                modalities=tuple(modalities), num_test=num_test, seed=seed)
    declaration = DatasetDeclaration(dataset_id=dataset_id, name=name, channel_names=dict(RGB),
                                     labels=labels_for(num_classes), folds=folds, seed=seed,
                                     description=SPEC.description)
    return write_dataset(read(None, **opts), declaration, test_cases=read_test(None, **opts), out_root=out_root,
                         preprocessed_root=preprocessed_root, overwrite=overwrite, progress=progress, quiet=quiet)


def write_heldout_images(folder: Path | str, num_cases: int = DEFAULTS.num_test, *, seed: int = DEFAULT_SEED,
                         size: int = DEFAULTS.size, num_classes: int = DEFAULTS.num_classes,
                         empty_fraction: float = DEFAULTS.empty_fraction,
                         modalities: Sequence[str] = MODALITIES) -> tuple[Path, Path]:
    """Write held-out cases as `folder/imagesTs/{id}_0000.png` (ready for nnUNetv2_predict) and
    their labels as `folder/labelsTs/{id}.png`; returns (images folder, labels folder)."""
    folder = Path(folder)
    img_dir, lab_dir = folder / "imagesTs", folder / "labelsTs"
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    for c in generate_cases(num_cases, seed=seed, size=size, num_classes=num_classes,
                            empty_fraction=empty_fraction, modalities=modalities, stream=TEST_STREAM,
                            prefix="SYNTS"):
        write_png(img_dir / f"{c.case_id}_0000.png", c.image)
        write_png(lab_dir / f"{c.case_id}.png", c.label)
    return img_dir, lab_dir


def _add_arguments(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    p.add_argument("--num-cases", type=int, default=d.num_cases, help=f"training cases (default {d.num_cases})")
    p.add_argument("--num-test", type=int, default=d.num_test,
                   help=f"held-out cases in imagesTs/labelsTs (default {d.num_test})")
    p.add_argument("--size", type=int, default=d.size, help=f"image side in pixels (default {d.size})")
    p.add_argument("--num-classes", type=int, default=d.num_classes,
                   help=f"lesion classes (default {d.num_classes}; 2 for multi-class)")
    p.add_argument("--empty-fraction", type=float, default=d.empty_fraction,
                   help=f"share of cases without lesion (default {d.empty_fraction})")
    p.add_argument("--modalities", nargs="+", choices=MODALITIES, default=list(MODALITIES))
    p.add_argument("--group-by-modality", action="store_true",
                   help="use the modality as split group (default: no groups, image-level splits)")


SPEC = ConverterSpec(
    name="synthetic",
    description="Synthetic multi-modality lesion images (grey/endoscopy/ultrasound-like, soft borders, "
                "some empty masks) for the demo and tests; SOURCE_DIR is not needed.",
    read=read,
    read_test=read_test,
    dataset_name="Synthetic",
    channel_names=dict(RGB),
    labels=lambda o: labels_for(o.get("num_classes", DEFAULTS.num_classes)),
    add_arguments=_add_arguments,
    source_required=False,
    seeded=True,
)
