"""What `write_dataset` accepts: one image/label pair, and a dataset's declaration (ID, name,
labels, channels) as nnU-Net would take it for 2D PNGs."""
from __future__ import annotations

import re
import warnings

import numpy as np

from .common import BadPairError
from .reading import sanitize_id

CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def validate_pair(image: np.ndarray, label: np.ndarray | None, *, num_channels: int, num_labels: int,
                  origin: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Check one pair against the dataset's declaration; return (image, label as uint8)."""
    where = origin or "<case>"
    if not isinstance(image, np.ndarray):
        raise BadPairError(f"{where}: image is not an array")
    if image.dtype != np.uint8:
        raise BadPairError(f"{where}: image dtype {image.dtype}, expected uint8")
    if image.ndim == 2:
        ch = 1
    elif image.ndim == 3 and image.shape[2] == 3:
        ch = 3
    else:
        raise BadPairError(f"{where}: image shape {image.shape}, expected (H,W) grey or (H,W,3) RGB"
                           + (" (RGBA: drop the alpha channel)" if image.ndim == 3 and image.shape[2] == 4 else ""))
    if ch != num_channels:
        raise BadPairError(f"{where}: image has {ch} channel(s), the dataset declares {num_channels}")
    if label is None:
        return image, None
    label = np.asarray(label)
    if label.ndim != 2:
        raise BadPairError(f"{where}: label shape {label.shape} is not single-channel (H,W)")
    if label.shape != image.shape[:2]:
        raise BadPairError(f"{where}: size mismatch, image {image.shape[1]}x{image.shape[0]} vs "
                           f"label {label.shape[1]}x{label.shape[0]} (WxH)")
    if label.dtype == bool:
        label = label.astype(np.uint8)
    if not np.issubdtype(label.dtype, np.integer):
        raise BadPairError(f"{where}: label dtype {label.dtype}, expected integers")
    lo, hi = int(label.min()), int(label.max())
    if lo < 0 or hi >= num_labels:
        found = np.unique(label)
        raise BadPairError(f"{where}: label values {found[:10].tolist()} outside the declared 0..{num_labels - 1}")
    return image, label.astype(np.uint8)


def check_declaration(dataset_id: int, name: str, channel_names: dict, labels: dict) -> None:
    """Refuse an ID, name, label set or channel count nnU-Net would not accept for 2D PNGs."""
    if not 0 < int(dataset_id) < 1000:
        raise ValueError(f"dataset_id must be 1..999, got {dataset_id}")
    if 1 <= int(dataset_id) <= 10:
        warnings.warn(f"dataset ID {dataset_id} is reserved for the Medical Segmentation Decathlon", stacklevel=2)
    sanitize_id(name)
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name) or "__" in name:
        raise ValueError(f"dataset name {name!r}: use only letters, digits, '-' and single '_'")
    label_values = sorted(int(v) for v in labels.values())
    if label_values != list(range(len(label_values))) or labels.get("background") != 0:
        raise ValueError(f"labels must be consecutive from background=0, got {labels}")
    if len(channel_names) not in (1, 3):
        raise ValueError("2D PNG datasets have 1 (grey) or 3 (RGB) channels")
