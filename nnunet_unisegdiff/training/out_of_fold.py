"""Out-of-fold conditions for phase B, as nnU-Net's cascade trains its second stage.

Fold k's CFENet is nearly perfect on its own training cases, so a DNet trained on its features of those
cases learns to copy it, and copies its errors on new images. Here each training case of fold k is
conditioned instead by the CFENet of the fold j whose training keys do not contain it (the other folds of
the same five-fold split, trained with the same plans and configuration), carried into fold k's feature
basis by a linear stitch (model/stitch.py) fitted on cases both networks trained on. Fold k's own
validation cases and every new image are out of fold for fold k's CFENet, so DNet sees at training what
it sees at validation and at prediction, in one basis: the checkpoint and inference do not change.

The other folds' checkpoints are looked for beside fold k's CFENet checkpoint (MODEL/fold_K/NAME ->
MODEL/fold_J/NAME): nnUNetTrainer's folds, or UniSegDiff's own (their `cfenet.` weights).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from nnunet_unisegdiff.model.cfenet import CFENetTap
from nnunet_unisegdiff.model.stitch import Stitch, fit_stitch

RECORD = "out_of_fold_conditions.json"  # in the fold's output folder
CFENET_PREFIX = "cfenet."  # CFENet's weights inside a UniSegDiff checkpoint


@dataclass(frozen=True)
class Lookup:
    """Which other folds' checkpoints were found beside fold `fold`'s CFENet checkpoint."""
    model_folder: Path
    checkpoint_name: str
    fold: int
    found: dict[int, Path] = field(default_factory=dict)
    missing: dict[int, str] = field(default_factory=dict)  # fold -> why it is not used

    def describe(self) -> str:
        found = ", ".join(map(str, sorted(self.found))) or "none"
        text = f"other folds' CFENets in {self.model_folder} ({self.checkpoint_name}): found {found}"
        if self.missing:
            text += "; not used: " + "; ".join(f"fold {j} ({why})" for j, why in sorted(self.missing.items()))
        return text


def find_other_folds(cfenet_checkpoint: Path, fold: int, num_folds: int, configuration: str) -> Lookup:
    """Folds j != `fold` (of `num_folds`) whose checkpoint of the same name lies beside `cfenet_checkpoint`,
    trained on fold j with `configuration` (their recorded init_args)."""
    cfenet_checkpoint = Path(cfenet_checkpoint)
    model_folder, name = cfenet_checkpoint.parent.parent, cfenet_checkpoint.name
    lookup = Lookup(model_folder, name, fold)
    if cfenet_checkpoint.parent.name != f"fold_{fold}":
        lookup.missing.update({j: f"the CFENet checkpoint is not in a folder fold_{fold}"
                               for j in range(num_folds) if j != fold})
        return lookup
    for j in range(num_folds):
        if j == fold:
            continue
        path = model_folder / f"fold_{j}" / name
        if not path.is_file():
            lookup.missing[j] = f"no {path.relative_to(model_folder)}"
            continue
        args = torch.load(path, map_location="cpu", weights_only=False).get("init_args", {})
        if args.get("fold") not in (j, str(j)) or args.get("configuration") != configuration:
            lookup.missing[j] = (f"{path.relative_to(model_folder)} was trained on fold {args.get('fold')}, "
                                 f"configuration {args.get('configuration')}")
            continue
        lookup.found[j] = path
    return lookup


def assign_condition_folds(keys: Sequence[str], fold: int, splits: Sequence[Mapping[str, Sequence[str]]],
                           available: Sequence[int]) -> dict[str, int | None]:
    """{key: the first fold j != `fold` among `available` whose training keys do not contain the key}, None where
    there is none (that case keeps fold `fold`'s own, in-sample condition). splits: nnU-Net's splits_final.json."""
    train_sets = {j: set(splits[j]["train"]) for j in available if j != fold}
    return {key: next((j for j in sorted(train_sets) if key not in train_sets[j]), None) for key in keys}


def cfenet_state_dict(checkpoint: Mapping) -> dict[str, Tensor]:
    """CFENet's weights from an nnUNetTrainer checkpoint or from a UniSegDiff one (its composite's CFENet)."""
    weights = {k[len("module."):] if k.startswith("module.") else k: v
               for k, v in checkpoint["network_weights"].items()}
    if any(k.startswith(CFENET_PREFIX) for k in weights):
        weights = {k[len(CFENET_PREFIX):]: v for k, v in weights.items() if k.startswith(CFENET_PREFIX)}
    return weights


def fitting_images(cases: Iterator[tuple[str, np.ndarray, np.ndarray]], patch_size: Sequence[int],
                   device: torch.device) -> Iterator[Tensor]:
    """Each case's preprocessed image, centre-cropped or zero-padded to the patch: (1, C, *patch). nnU-Net stores
    a 2D configuration's case as (C, slices, H, W); its middle slice is taken, as the 2D data loader takes one."""
    for _, data, _ in cases:
        if data.ndim == len(patch_size) + 2:
            data = data[:, data.shape[1] // 2]
        image = torch.from_numpy(np.ascontiguousarray(data)).float()
        for axis, size in enumerate(patch_size, start=1):
            excess = image.shape[axis] - size
            if excess > 0:
                image = image.narrow(axis, excess // 2, size)
            elif excess < 0:
                pad = [0, 0] * (image.ndim - 1 - axis) + [-excess // 2, -excess - (-excess // 2)]
                image = torch.nn.functional.pad(image, pad)
        yield image[None].to(device)


class OutOfFoldConditions:
    """Condition features of a training batch: each case's from the CFENet of its out-of-fold fold, stitched
    into fold k's basis; fold k's own for cases that have none."""

    def __init__(self, own: Callable[[Tensor], tuple[Tensor, list[Tensor]]], others: Mapping[int, nn.Module],
                 stitches: Mapping[int, Stitch], fold_of: Mapping[str, int | None]) -> None:
        self.own = own
        self.taps = {j: CFENetTap(net) for j, net in others.items()}
        self.stitches = dict(stitches)
        self.fold_of = dict(fold_of)

    @torch.no_grad()
    def __call__(self, data: Tensor, keys: Sequence[str]) -> list[Tensor]:
        """data: (B, C_in, *spatial) of `keys` -> CF_0..CF_{S-1}, each (B, F_s, *spatial_s)."""
        if keys is None or len(keys) != data.shape[0]:
            raise ValueError(f"out-of-fold conditions need the case key of each of the batch's {data.shape[0]} "
                             f"images ('keys', as nnU-Net's data loader gives them), got {keys!r}")
        rows_of: dict[int | None, list[int]] = {}
        for i, key in enumerate(keys):
            rows_of.setdefault(self.fold_of.get(key), []).append(i)
        cond: list[Tensor] = []
        for j, rows in rows_of.items():  # each image through one CFENet: its out-of-fold one, or fold k's own
            idx = torch.tensor(rows, device=data.device)
            features = self.own(data[idx])[1] if j is None else self.stitches[j](self.taps[j](data[idx])[1])
            if not cond:
                cond = [f.new_empty((data.shape[0], *f.shape[1:])) for f in features]
            for c, f in zip(cond, features):
                c[idx] = f.to(c.dtype)
        return cond


def fit_stitches(own: Callable[[Tensor], tuple[Tensor, list[Tensor]]], others: Mapping[int, nn.Module], ridge: float,
                 images_of: Callable[[int], Iterator[Tensor]]) -> dict[int, Stitch]:
    """{j: stitch from fold j's CFENet into `own`'s basis}, fitted on images_of(j) (images both trained on)."""
    taps = {j: CFENetTap(net) for j, net in others.items()}

    def pairs(j: int):
        with torch.no_grad():
            for image in images_of(j):
                yield taps[j](image)[1], own(image)[1]
    return {j: fit_stitch(pairs(j), ridge) for j in others}


def write_record(folder: str, lookup: Lookup, fold_of: Mapping[str, int | None], stitches: Mapping[int, Stitch],
                 fit_cases: Mapping[int, int]) -> dict:
    """The fold's record of where its training conditions came from (out_of_fold_conditions.json)."""
    counts: dict[str, int] = {}
    for j in fold_of.values():
        counts[str(j) if j is not None else "own"] = counts.get(str(j) if j is not None else "own", 0) + 1
    record = {"model_folder": str(lookup.model_folder), "checkpoint": lookup.checkpoint_name,
              "found": sorted(lookup.found), "missing": {str(j): why for j, why in lookup.missing.items()},
              "cases_by_condition_fold": counts, "stitch_fit_cases": {str(j): n for j, n in fit_cases.items()},
              "stitch_r2": {str(j): [round(r, 4) for r in s.r2] for j, s in stitches.items()}}
    Path(folder, RECORD).write_text(json.dumps(record, indent=2))
    return record
