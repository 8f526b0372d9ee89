"""BUSI: the real `Dataset_BUSI_with_GT/<class>/<class> (<n>)[_mask[_k]].png` layout and its quirks."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from nnunet_unisegdiff.conversion import busi
from nnunet_unisegdiff.conversion.common import BadPairError, LayoutError
from nnunet_unisegdiff.conversion.registry import convert
from nnunet_unisegdiff.conversion.writer import load_summary

pytestmark = pytest.mark.usefixtures("nnunet_env")


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 255
    return m


def _grey_rgb(h, w, seed):
    g = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    return np.stack([g] * 3, -1)


def make_busi(root, *, mismatch=False, corrupt=False):
    """A tiny BUSI download: varied sizes, multi-mask images, masks in L/LA/RGB/RGBA, an orphan, a normal case."""
    top = root / "Dataset_BUSI_with_GT"
    for c in ("benign", "malignant", "normal"):
        (top / c).mkdir(parents=True)
    b, m, n = top / "benign", top / "malignant", top / "normal"
    Image.fromarray(_grey_rgb(24, 30, 1)).save(b / "benign (1).png")
    Image.fromarray(_box(24, 30, 2, 8, 3, 9)).save(b / "benign (1)_mask.png")
    img = _grey_rgb(39, 47, 2)
    img[5:8, 5:20] = (255, 255, 0)  # coloured caliper marks
    Image.fromarray(img).save(b / "benign (195).png")
    Image.fromarray(_box(39, 47, 1, 5, 1, 5)).save(b / "benign (195)_mask.png")
    k1 = _box(39, 47, 10, 20, 10, 20)
    Image.fromarray(np.dstack([k1, k1, k1, np.full_like(k1, 255)]), "RGBA").save(b / "benign (195)_mask_1.png")
    k2 = _box(39 if not mismatch else 40, 47, 30, 35, 40, 45)
    Image.fromarray(np.dstack([k2, np.full_like(k2, 255)]), "LA").save(b / "benign (195)_mask_2.png")
    Image.fromarray(_grey_rgb(20, 20, 3)).save(b / "benign (7).png")  # orphan: no mask
    (b / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    Image.fromarray(_grey_rgb(30, 26, 4)).save(m / "malignant (53).png")
    Image.fromarray(_box(30, 26, 0, 10, 0, 10)).save(m / "malignant (53)_mask.png")
    Image.fromarray(np.stack([_box(30, 26, 20, 30, 16, 26)] * 3, -1)).save(m / "malignant (53)_mask_1.png")
    if corrupt:
        (m / "malignant (54).png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
        Image.fromarray(_box(30, 26, 0, 5, 0, 5)).save(m / "malignant (54)_mask.png")
    Image.fromarray(_grey_rgb(22, 22, 5)).save(n / "normal (1).png")
    Image.fromarray(np.zeros((22, 22), np.uint8)).save(n / "normal (1)_mask.png")
    return root


def _check_with_nnunet(folder):
    """nnU-Net's own per-case checks (label values, shapes, channel count) run in-process."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import check_cases, verify_labels
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    dj = json.loads((folder / "dataset.json").read_text())
    for lab in sorted((folder / "labelsTr").iterdir()):
        img = folder / "imagesTr" / f"{lab.stem}_0000.png"
        assert verify_labels(str(lab), NaturalImage2DIO, list(dj["labels"].values()))
        assert check_cases([str(img)], str(lab), len(dj["channel_names"]), NaturalImage2DIO)


def test_benign_and_malignant_with_all_masks_merged(nnunet_env, tmp_path):
    src = make_busi(tmp_path / "download")
    out = convert("busi", src, quiet=True, progress=False)
    assert out.name == "Dataset506_BUSI"
    ids = sorted(p.name[:-9] for p in (out / "imagesTr").iterdir())
    assert ids == ["BUSI_benign_0001", "BUSI_benign_0195", "BUSI_malignant_0053"]
    merged = np.asarray(Image.open(out / "labelsTr" / "BUSI_benign_0195.png"))
    expected = ((_box(39, 47, 1, 5, 1, 5) | _box(39, 47, 10, 20, 10, 20) | _box(39, 47, 30, 35, 40, 45)) > 0)
    assert merged.shape == (39, 47) and np.array_equal(merged, expected.astype(np.uint8))
    mal = np.asarray(Image.open(out / "labelsTr" / "BUSI_malignant_0053.png"))
    assert mal[:10, :10].all() and mal[20:, 16:].all() and mal.sum() == 200
    assert np.asarray(Image.open(out / "imagesTr" / "BUSI_benign_0195_0000.png")).shape == (39, 47, 3)
    s = load_summary(out)
    assert s["cases_written"] == 3 and s["empty_masks"] == 0 and s["groups_found"] == 0
    assert len(s["orphans_skipped"]) == 1 and "benign (7).png" in s["orphans_skipped"][0]
    _check_with_nnunet(out)


def test_normal_class_on_request_gives_empty_masks(nnunet_env, tmp_path):
    src = make_busi(tmp_path / "download")
    # SOURCE_DIR may also be the Dataset_BUSI_with_GT folder itself
    out = convert("busi", src / "Dataset_BUSI_with_GT", include_normal=True, folds=None, quiet=True, progress=False)
    s = load_summary(out)
    assert s["cases_written"] == 4 and s["empty_masks"] == 1
    assert (out / "labelsTr" / "BUSI_normal_0001.png").is_file()


def test_mask_size_mismatch_names_the_mask_and_leaves_nothing(nnunet_env, tmp_path):
    src = make_busi(tmp_path / "download", mismatch=True)
    with pytest.raises(BadPairError, match=r"benign \(195\)_mask_2.png: mask size"):
        convert("busi", src, quiet=True, progress=False)
    assert list((nnunet_env / "nnUNet_raw").iterdir()) == []
    out = convert("busi", src, skip_bad=True, quiet=True, progress=False)
    s = load_summary(out)
    assert s["cases_written"] == 2 and len(s["bad_pairs_skipped"]) == 1


def test_corrupt_png_via_cli_is_a_one_line_error(nnunet_env, tmp_path, capsys):
    from nnunet_unisegdiff.cli import main
    src = make_busi(tmp_path / "download", corrupt=True)
    assert main(["convert", "busi", str(src), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "malignant (54).png" in err and "cannot read" in err
    assert list((nnunet_env / "nnUNet_raw").iterdir()) == []


def test_wrong_layout_is_reported(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(LayoutError, match="no BUSI layout"):
        busi.read(tmp_path)
