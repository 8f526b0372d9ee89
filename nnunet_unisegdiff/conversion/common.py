"""The shared contract of every converter: readers yield `Case`s, `write_dataset` writes them.

A converter module (`busi.py`, `polyp.py`, ...) only *reads*: its `read(source_dir, **opts)`
yields `Case` records (and `Orphan` records for files it had to skip), with the file helpers of
`reading.py`. Everything a written dataset guarantees lives in `writer.py` (and the checks in
`validation.py`), once:

- every pair is validated (image uint8 (H,W) grey or (H,W,3) RGB; label (H,W) integer with values
  in the declared labels; same H,W; channel count equal to `channel_names`);
- files are written as nnU-Net v2 raw 2D PNGs: `imagesTr/{case_id}_0000.png` (RGB as one file,
  nnU-Net's NaturalImage2DIO exception) and `labelsTr/{case_id}.png` (uint8, values 0..K-1);
- `dataset.json` comes from nnU-Net's own `generate_dataset_json`;
- `sources.json` + `sources.csv` (case_id -> source, group, subset, origin) sit beside it, so
  results can be reported per task and splits can be rebuilt;
- `splits_final.json` (see `splits.py`) goes to `$nnUNet_preprocessed/DatasetXXX_Name/` (a copy
  stays in the raw folder); group level when cases carry groups, image level otherwise;
- all of it is written into a hidden temporary folder beside the target and moved into place
  only when complete: on any error the temporary folder is removed and nothing is left behind;
- an existing `DatasetXXX_*` (same ID, any name) is never replaced unless `overwrite=True`;
- a summary (cases, empty masks, bad pairs skipped, orphans, groups, split level) is printed and
  saved as `conversion_summary.json`.

Lazy cases. A `Case` carries either its arrays (`image`, `label`) or a `load` callable returning
`(image, label)`. Readers that open files should use `load` (see `lazy_case`): listing and pairing
stays cheap, and a file that fails to decode raises `BadPairError` *inside* `write_dataset`, which
can then skip it (`skip_bad=True`) instead of killing the reader's generator.

Errors. `ConversionError` is what the CLI turns into a one-line message and a non-zero exit:
`BadPairError` (a file or pair is unusable; the message names the file(s) and the problem),
`LayoutError` (missing folder, unknown layout, nothing found), `DatasetExistsError`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


class ConversionError(Exception):
    """Base of the errors the CLI reports as one line (no traceback)."""


class BadPairError(ConversionError, ValueError):
    """An image/label pair (or one of its files) is unusable; the message names the file(s)."""


class LayoutError(ConversionError):
    """The source folder is missing, empty, or laid out in a way the converter does not know."""


class DatasetExistsError(ConversionError):
    """The target `DatasetXXX_*` exists and `overwrite` was not given."""


# ----------------------------------------------------------------------------------- records
@dataclass
class Case:
    """One 2D training (or test) case.

    image: (H,W) uint8 grey or (H,W,3) uint8 RGB.  label: (H,W) integer, values 0..K-1
    (None only for unlabeled test cases).  Give either the arrays or `load() -> (image, label)`.
    group: patient/sequence key for grouped splits (None: no group known).
    source: task/source name (e.g. "BUSI", "Kvasir"), kept in the per-case source table.
    origin: the source file path(s), used in error messages.
    meta: extra per-case columns for the source table (e.g. BTD's tumour type).
    """

    case_id: str
    image: np.ndarray | None = None
    label: np.ndarray | None = None
    group: str | None = None
    source: str = ""
    origin: str = ""
    load: Callable[[], tuple[np.ndarray, np.ndarray | None]] | None = field(default=None, repr=False)
    meta: dict = field(default_factory=dict)

    def arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(image, label), calling `load` if the case is lazy."""
        if self.load is not None:
            return self.load()
        if self.image is None:
            raise BadPairError(f"{self.origin or self.case_id}: case has neither arrays nor a loader")
        return self.image, self.label


@dataclass
class Orphan:
    """A file a reader skipped (image without mask or the reverse, or another per-file reason)."""

    path: str
    problem: str = "image without mask"


def lazy_case(case_id: str, load: Callable[[], tuple[np.ndarray, np.ndarray | None]], *,
              group: str | None = None, source: str = "", origin: str = "") -> Case:
    return Case(case_id=case_id, group=group, source=source, origin=origin, load=load)


def failed_case(case_id: str, err: BadPairError, *, source: str = "", origin: str = "") -> Case:
    """A case a reader could not even open: it raises `err` when written, so `write_dataset` stops
    or, with `skip_bad`, reports and skips it, as for any other bad pair."""
    def load():
        raise err
    return lazy_case(case_id, load, source=source, origin=origin)
