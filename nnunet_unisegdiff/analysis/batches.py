"""The fixed batch `unisegdiff gradients` measures on: preprocessed cases cropped around their lesion,
or cases of the synthetic generator."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

from nnunet_unisegdiff.analysis.models import GradientError
from nnunet_unisegdiff.conversion.synthetic import generate_cases
from nnunet_unisegdiff.defaults import DEFAULT_SEED


def crop_or_pad(array: np.ndarray, patch: Sequence[int], centre: Sequence[float]) -> np.ndarray:
    """(C, *spatial) -> (C, *patch), a window around `centre` (zero padding where needed)."""
    out = np.zeros((array.shape[0], *patch), dtype=array.dtype)
    src, dst = [slice(None)], [slice(None)]
    for size, p, c in zip(array.shape[1:], patch, centre):
        start = int(round(c - p / 2))
        start = min(max(start, 0), max(size - p, 0)) if size >= p else start
        lo, hi = max(start, 0), min(start + p, size)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, lo - start + hi - lo))
    out[tuple(dst)] = array[tuple(src)]
    return out


def load_preprocessed_batch(folder: Path, cm, batch_size: int,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A batch of preprocessed cases (lesion cases first), cropped around the lesion to the patch
    size; 2d configurations take each case's slice with the most foreground."""
    data_dir = folder / cm.data_identifier
    if not data_dir.is_dir():
        raise GradientError(f"no preprocessed data in {data_dir}: run nnUNetv2_plan_and_preprocess first, "
                            "or use --data synthetic")
    dataset = infer_dataset_class(str(data_dir))(str(data_dir))
    ids = list(dataset.identifiers)
    np.random.default_rng(seed).shuffle(ids)
    images, spare = [], []
    patch = list(cm.patch_size)
    for case in ids:
        data, seg, _, _ = dataset.load_case(case)
        data, seg = np.asarray(data, dtype=np.float32), np.asarray(seg)
        seg = np.where(seg < 0, 0, seg)  # nnU-Net marks outside-the-image with -1
        if len(patch) == 2:  # (C, Z, H, W): the slice with the most foreground
            z = int((seg[0] > 0).reshape(seg.shape[1], -1).sum(1).argmax())
            data, seg = data[:, z], seg[:, z]
        fg = np.argwhere(seg[0] > 0)
        centre = fg.mean(0) if len(fg) else np.array(seg.shape[1:]) / 2
        item = (crop_or_pad(data, patch, centre), crop_or_pad(seg, patch, centre), case)
        (images if len(fg) else spare).append(item)
        if len(images) >= batch_size:
            break
    chosen = (images + spare)[:batch_size]
    if not chosen:
        raise GradientError(f"no cases in {data_dir}")
    return (np.stack([c[0] for c in chosen]), np.stack([c[1] for c in chosen]).astype(np.int64),
            [c[2] for c in chosen])


def synthetic_batch(batch_size: int, size: int, seed: int = DEFAULT_SEED) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Cases of the synthetic generator (with lesions), z-scored per channel like nnU-Net's
    ZScoreNormalization: images (B, 3, size, size), labels (B, 1, size, size)."""
    cases = [c for c in generate_cases(3 * batch_size, seed=seed, size=size, empty_fraction=0.0)][:batch_size]
    images = np.stack([c.image.transpose(2, 0, 1).astype(np.float32) for c in cases])
    mean, std = images.mean(axis=(2, 3), keepdims=True), images.std(axis=(2, 3), keepdims=True)
    images = (images - mean) / np.maximum(std, 1e-8)
    labels = np.stack([c.label[None].astype(np.int64) for c in cases])
    return images, labels, [c.case_id for c in cases]


def load_batch(data: str, cm, dataset_json: dict, preprocessed: Path | None, batch_size: int,
               seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(images, labels, description) of the fixed batch: preprocessed cases or synthetic ones."""
    if data == "auto":
        data = "preprocessed" if preprocessed is not None and (Path(preprocessed) / cm.data_identifier).is_dir() \
            else "synthetic"
    if data == "preprocessed":
        if preprocessed is None:
            raise GradientError("--data preprocessed needs MODEL_DIR or --preprocessed")
        images, labels, cases = load_preprocessed_batch(Path(preprocessed), cm, batch_size, seed)
        info = {"source": "preprocessed", "folder": str(preprocessed)}
    else:
        patch = list(cm.patch_size)
        if len(patch) != 2 or patch[0] != patch[1]:
            raise GradientError(f"the synthetic generator makes square 2D images; this model's patch is {patch}")
        if len(dataset_json["channel_names"]) != 3:
            raise GradientError("the synthetic generator makes RGB images; this model takes "
                                f"{len(dataset_json['channel_names'])} input channels")
        images, labels, cases = synthetic_batch(batch_size, patch[0])
        info = {"source": "synthetic generator (in memory)"}
    info.update(cases=cases, patch_size=list(images.shape[2:]), batch_size=len(cases))
    return images, labels, info
