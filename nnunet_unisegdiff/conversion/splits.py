"""Cross-validation splits for nnU-Net (`splits_final.json`): pure functions plus one writer.

nnU-Net reads `$nnUNet_preprocessed/DatasetXXX_Name/splits_final.json` (a list of
`{"train": [ids], "val": [ids]}`) and keeps it if present. Two protocols:

- `"5"`: nnU-Net's default 5 folds. At image level this is exactly nnU-Net's own split
  (`generate_crossval_split` over the sorted identifiers, seed `DEFAULT_SEED` by default).
- `"paper4"`: the UniSegDiff protocol, 4 random folds of equal size.

Level: when cases carry group keys (patient, video sequence, ...) the folds are built from whole
groups, so no group straddles train and val; cases without a group count as their own group.
Otherwise (or with fewer groups than folds) the split is at image level. The chosen level is
returned so the converter can say which one it used.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunet_unisegdiff.defaults import DEFAULT_SEED

log = logging.getLogger("nnunet_unisegdiff.conversion")

FOLD_SCHEMES = {"5": 5, "paper4": 4}


def num_folds(folds: str | int) -> int:
    """"5" -> 5, "paper4" -> 4, an int -> itself."""
    if isinstance(folds, str) and folds in FOLD_SCHEMES:
        return FOLD_SCHEMES[folds]
    n = int(folds)
    if n < 2:
        raise ValueError(f"need at least 2 folds, got {folds!r}")
    return n


def image_level_splits(case_ids: Sequence[str], n_folds: int = 5, seed: int = DEFAULT_SEED) -> list[dict]:
    """nnU-Net's own KFold split over the sorted case IDs."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    splits = generate_crossval_split(sorted(case_ids), seed=seed, n_splits=n_folds)
    return [{"train": [str(i) for i in s["train"]], "val": [str(i) for i in s["val"]]} for s in splits]


def group_level_splits(case_ids: Sequence[str], groups: Sequence[str], n_folds: int = 5,
                       seed: int = DEFAULT_SEED) -> list[dict]:
    """Whole groups per fold, folds as equal in case count as the groups allow.

    Groups are shuffled with `seed`, then placed largest first into the fold that holds the fewest
    cases so far (ties: lowest fold index).

    This is scikit-learn's unshuffled `GroupKFold` with seeded tie-breaking among equal-sized groups.
    It is not delegated to scikit-learn: `GroupKFold(shuffle=True)` deals the shuffled groups out in
    equal numbers, not equal case counts (other folds), and the unshuffled one breaks ties by its
    internal sort order, which its documentation does not promise; the splits written for existing
    datasets must not change with the installed scikit-learn."""
    members: dict[str, list[str]] = {}
    for cid, g in zip(case_ids, groups):
        members.setdefault(g, []).append(cid)
    if len(members) < n_folds:
        raise ValueError(f"{len(members)} groups cannot fill {n_folds} folds")
    names = sorted(members)
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[i] for i in order]
    shuffled.sort(key=lambda g: -len(members[g]))  # stable: equal sizes keep the shuffled order
    fold_of: dict[str, int] = {}
    sizes = [0] * n_folds
    for g in shuffled:
        k = int(np.argmin(sizes))
        fold_of[g] = k
        sizes[k] += len(members[g])
    out = []
    for k in range(n_folds):
        val = sorted(c for g, cs in members.items() if fold_of[g] == k for c in cs)
        train = sorted(c for g, cs in members.items() if fold_of[g] != k for c in cs)
        out.append({"train": train, "val": val})
    return out


def make_splits(case_ids: Sequence[str], groups: Sequence[str | None] | None = None, *, n_folds: int = 5,
                seed: int = DEFAULT_SEED, strata: Sequence[str] | None = None) -> tuple[list[dict], str]:
    """(splits, level) with level "group" or "image"; ([], "none") when there are fewer cases than
    folds. Cases whose group is None become their own group when others have groups.

    strata: e.g. the source task of each case. Each stratum is split on its own and fold k is the
    union of the strata's folds k (every task is cross-validated as if alone, as in the paper's
    per-dataset 4 folds); a stratum with fewer cases than folds spreads them one per fold."""
    case_ids = list(case_ids)
    if strata is not None:
        return _stratified(case_ids, groups, list(strata), n_folds, seed)
    if len(case_ids) < n_folds:
        log.warning("only %d cases: no %d-fold split written", len(case_ids), n_folds)
        return [], "none"
    if groups is not None and any(g is not None for g in groups):
        keys = [f"group:{g}" if g is not None else f"case:{c}" for c, g in zip(case_ids, groups)]
        if len(set(keys)) >= n_folds:
            return group_level_splits(case_ids, keys, n_folds, seed), "group"
        log.warning("only %d groups for %d folds: splitting at image level", len(set(keys)), n_folds)
    return image_level_splits(case_ids, n_folds, seed), "image"


def _stratified(case_ids, groups, strata, n_folds, seed) -> tuple[list[dict], str]:
    if len(case_ids) < n_folds:
        return [], "none"
    groups = list(groups) if groups is not None else [None] * len(case_ids)
    folds = [{"train": [], "val": []} for _ in range(n_folds)]
    levels = set()
    for stratum in sorted(set(strata)):
        idx = [i for i, s in enumerate(strata) if s == stratum]
        ids = [case_ids[i] for i in idx]
        sub, level = make_splits(ids, [groups[i] for i in idx], n_folds=n_folds, seed=seed)
        if not sub:  # too few cases: one per fold, in a seeded order
            order = np.random.default_rng(seed).permutation(len(ids))
            sub = [{"val": [ids[j] for j in order[k::n_folds]]} for k in range(n_folds)]
            sub = [{"train": sorted(set(ids) - set(f["val"])), "val": sorted(f["val"])} for f in sub]
            level = "image"
        levels.add(level)
        for k in range(n_folds):
            folds[k]["train"] += sub[k]["train"]
            folds[k]["val"] += sub[k]["val"]
    folds = [{"train": sorted(f["train"]), "val": sorted(f["val"])} for f in folds]
    level = levels.pop() if len(levels) == 1 else "group/image"
    return folds, f"{level} (per source)"


def straddling_groups(splits: list[dict], group_of: dict[str, str | None]) -> set[str]:
    """Groups that appear in both train and val of some fold (should be empty)."""
    bad = set()
    for s in splits:
        tr = {group_of[c] for c in s["train"] if group_of.get(c) is not None}
        va = {group_of[c] for c in s["val"] if group_of.get(c) is not None}
        bad |= tr & va
    return bad


def write_splits(splits: list[dict], dataset_name: str, preprocessed_root: Path | str | None = None) -> Path:
    """Write `splits_final.json` into `{preprocessed_root or $nnUNet_preprocessed}/{dataset_name}/`."""
    root = preprocessed_root if preprocessed_root is not None else os.environ.get("nnUNet_preprocessed")
    if not root:
        raise RuntimeError("nnUNet_preprocessed is not set: cannot write splits_final.json")
    folder = Path(root) / dataset_name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "splits_final.json"
    if path.is_file():
        try:
            same = json.loads(path.read_text()) == splits
        except ValueError:
            same = False
        if not same:
            log.warning("replacing existing %s", path)
    path.write_text(json.dumps(splits, indent=1))
    return path
