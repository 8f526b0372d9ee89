"""AMD-SD converter: side-by-side composites (left OCT, right colour labels) with anti-aliased,
slightly-off colours, patient folders as groups, binary and 5-class label maps, bad inputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import read_png, verify_integrity
from PIL import Image

from nnunet_unisegdiff.conversion import amdsd
from nnunet_unisegdiff.conversion.common import BadPairError, LayoutError
from nnunet_unisegdiff.conversion.registry import convert

H, HALF = 12, 16  # composite is H x (2*HALF)
# class id -> a slightly-off version of its pure colour (as real anti-aliased PNGs carry)
OFF_COLOURS = {1: (250, 6, 244), 2: (3, 241, 12), 3: (236, 20, 0), 4: (251, 230, 18), 5: (9, 2, 229)}
BLENDS = {1: (130, 0, 128), 2: (100, 140, 90), 3: (200, 110, 60), 4: (140, 129, 120), 5: (60, 90, 131)}


def composite(gt: np.ndarray, seed: int) -> np.ndarray:
    """RGB composite from a class map `gt` (H, HALF) with values 0..5; returns (H, 2*HALF, 3).

    Each lesion's first pixel is an anti-aliased blend that still snaps to its class colour; a
    grey (200, 200, 200) background pixel snaps to white = background ("weird borders") and a dim
    (90, 60, 100) one to black."""
    rng = np.random.default_rng(seed)
    oct_grey = rng.integers(0, 256, (H, HALF), dtype=np.uint8)
    right = np.zeros((H, HALF, 3), np.uint8)
    for k, col in OFF_COLOURS.items():
        right[gt == k] = col
        if (gt == k).any():
            r, c = np.argwhere(gt == k)[0]
            right[r, c] = BLENDS[k]
    right[0, 0] = (200, 200, 200)  # snaps to white: background
    right[H - 1, 0] = (90, 60, 100)  # dim anti-aliased pixel: snaps to black
    return np.concatenate([np.repeat(oct_grey[..., None], 3, axis=2), right], axis=1)


def class_map(kind: int) -> np.ndarray:
    gt = np.zeros((H, HALF), np.uint8)
    if kind == 0:
        return gt  # lesion-free B-scan
    gt[2:5, 2:6] = 1 + (kind % 5)
    gt[6:9, 8:12] = 1 + ((kind + 1) % 5)
    gt[9:11, 13:15] = 1 + ((kind + 2) % 5)
    return gt


def make_amdsd(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """`AMD-SD/images/<pid>/<pid>_<k>.png` for 3 patients; returns case_id -> (oct, gt, pid)."""
    base = root / "AMD-SD"
    expected = {}
    for n, (pid, ks) in enumerate({"7": (1, 2), "126": (19, 3), "45": (5,)}.items()):
        d = base / "images" / pid
        d.mkdir(parents=True)
        for j, k in enumerate(ks):
            gt = class_map((n * 2 + j) % 5 if (pid, k) != ("45", 5) else 0)
            comp = composite(gt, seed=n * 10 + j)
            Image.fromarray(comp).save(d / f"{pid}_{k}.png")
            expected[f"AMDSD_{pid}_{k:03d}"] = (comp[:, :HALF, 0], gt, pid)
    (base / "images" / "7" / ".DS_Store").write_bytes(b"\0\1")
    (base / "training.txt").write_text("7_1\n7_2\n126_19\n126_3\n")
    (base / "validation.txt").write_text("45_5\n")
    return expected


def test_binary_conversion_maps_every_colour_to_lesion_and_groups_by_patient(tmp_path, nnunet_env, monkeypatch):
    expected = make_amdsd(tmp_path / "src")
    out = convert("amdsd", tmp_path / "src", dataset_id=501, progress=False, quiet=True, folds=3)
    assert out.name == "Dataset501_AMDSD"
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "OCT"} and ds["labels"] == {"background": 0, "lesion": 1}
    assert ds["numTraining"] == len(expected) == 5
    for cid, (oct_grey, gt, _) in expected.items():
        img = read_png(out / "imagesTr" / f"{cid}_0000.png")
        lab = read_png(out / "labelsTr" / f"{cid}.png")
        assert img.ndim == 2 and np.array_equal(img, oct_grey)  # left half, one grey channel
        assert np.array_equal(lab, (gt > 0).astype(np.uint8))
    assert not read_png(out / "labelsTr" / "AMDSD_45_005.png").any()  # lesion-free scan stays empty
    verify_integrity(out, monkeypatch)
    table = json.loads((out / "sources.json").read_text())
    assert {c: r["group"] for c, r in table.items()} == {c: e[2] for c, e in expected.items()}
    assert json.loads((out / "conversion_summary.json").read_text())["split_level"] == "group"
    splits = json.loads((nnunet_env / "nnUNet_preprocessed" / out.name / "splits_final.json").read_text())
    for s in splits:  # no patient on both sides
        assert not {table[c]["group"] for c in s["train"]} & {table[c]["group"] for c in s["val"]}


def test_multi_class_follows_torch_em_colour_order(tmp_path, nnunet_env):
    expected = make_amdsd(tmp_path / "src")
    out = convert("amdsd", tmp_path / "src", dataset_id=502, progress=False, quiet=True, classes="multi")
    ds = json.loads((out / "dataset.json").read_text())
    assert out.name == "Dataset502_AMDSD_multiclass"
    assert ds["labels"] == {"background": 0, "EZ_disruption": 1, "IRF": 2, "SRF": 3, "SHRM": 4, "PED": 5}
    seen = set()
    for cid, (_, gt, _) in expected.items():
        lab = read_png(out / "labelsTr" / f"{cid}.png")
        assert np.array_equal(lab, gt)
        seen |= set(np.unique(lab).tolist())
    assert seen == {0, 1, 2, 3, 4, 5}


def test_colour_snapping_at_128_per_channel():
    right = np.array([[[128, 0, 128], [127, 0, 127], [128, 128, 0], [255, 255, 255], [0, 127, 200]]], np.uint8)
    lab = amdsd.colours_to_label(right, Path("x.png"), "multi")
    assert lab.tolist() == [[1, 0, 4, 0, 5]]


def test_unknown_colour_names_the_file_and_leaves_no_dataset(tmp_path, nnunet_env):
    make_amdsd(tmp_path / "src")
    bad = tmp_path / "src" / "AMD-SD" / "images" / "126" / "126_3.png"
    comp = np.asarray(Image.open(bad)).copy()
    comp[5, HALF + 3] = (0, 250, 240)  # cyan: no AMD-SD class
    Image.fromarray(comp).save(bad)
    with pytest.raises(BadPairError, match=r"126_3\.png.*unexpected colour \(0, 255, 255\)"):
        convert("amdsd", tmp_path / "src", dataset_id=501, progress=False, quiet=True)
    assert list((nnunet_env / "nnUNet_raw").iterdir()) == []


@pytest.mark.parametrize("problem, match", [("odd", r"width 33 is odd"), ("grey", r"grey PNG cannot carry"),
                                            ("corrupt", r"cannot read image")])
def test_bad_composites_are_reported_by_file(tmp_path, nnunet_env, problem, match):
    make_amdsd(tmp_path / "src")
    bad = tmp_path / "src" / "AMD-SD" / "images" / "7" / "7_2.png"
    if problem == "odd":
        Image.fromarray(np.zeros((H, 2 * HALF + 1, 3), np.uint8)).save(bad)
    elif problem == "grey":
        Image.fromarray(np.zeros((H, 2 * HALF), np.uint8)).save(bad)
    else:
        bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(BadPairError, match=r"7_2\.png.*" + match):
        convert("amdsd", tmp_path / "src", dataset_id=501, progress=False, quiet=True)
    assert list((nnunet_env / "nnUNet_raw").iterdir()) == []
    # asked to skip bad pairs: the other four cases are written and the skip is reported
    out = convert("amdsd", tmp_path / "src", dataset_id=501, progress=False, quiet=True, skip_bad=True)
    assert len(list((out / "labelsTr").iterdir())) == 4
    assert "7_2.png" in json.loads((out / "conversion_summary.json").read_text())["bad_pairs_skipped"][0]


def test_unknown_layout_is_a_layout_error(tmp_path, nnunet_env):
    (tmp_path / "src" / "masks").mkdir(parents=True)
    with pytest.raises(LayoutError, match="unknown AMD-SD layout"):
        convert("amdsd", tmp_path / "src", dataset_id=501, progress=False, quiet=True)
    assert list((nnunet_env / "nnUNet_raw").iterdir()) == []
