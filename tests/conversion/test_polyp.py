"""Polyps: PraNet TrainDataset/TestDataset and the original releases, with their naming and format quirks."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from nnunet_unisegdiff.conversion import polyp
from nnunet_unisegdiff.conversion.common import Case, LayoutError
from nnunet_unisegdiff.conversion.registry import convert
from nnunet_unisegdiff.conversion.splits import straddling_groups
from nnunet_unisegdiff.conversion.writer import load_summary, read_sources

KV = ("cju0qkwl35piu0993l0dewei2", "cju2y5zas8m7f0801d34g5owq", "cju1c8ffau5770835g0g343o8")


pytestmark = pytest.mark.usefixtures("nnunet_env")


def _img(h=20, w=24, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(h=20, w=24, residue=False, rgb=False):
    m = np.zeros((h, w), np.uint8)
    m[4:12, 6:16] = 255
    if residue:  # JPEG residue kept in PraNet's Kvasir PNGs: 0-7 and 248-255
        m[m == 0] = np.random.default_rng(1).integers(0, 8, (m == 0).sum())
        m[3, 6:16] = 250
        m[12, 6:16] = 5
    return np.stack([m] * 3, -1) if rgb else m


def _pair(folder, stem, img_ext=".png", mask_ext=".png", mask_stem=None, img_dir="images", mask_dir="masks",
          residue=False, rgb_mask=False, seed=0, size=(20, 24)):
    (folder / img_dir).mkdir(parents=True, exist_ok=True)
    (folder / mask_dir).mkdir(parents=True, exist_ok=True)
    Image.fromarray(_img(*size, seed=seed)).save(folder / img_dir / f"{stem}{img_ext}")
    mask = _mask(*size, residue=residue, rgb=rgb_mask)
    Image.fromarray(mask).save(folder / mask_dir / f"{mask_stem or stem}{mask_ext}")


def make_pranet(root):
    tr = root / "TrainDataset"
    for i, k in enumerate(KV[:2]):
        _pair(tr, k, residue=True, rgb_mask=True, seed=i)
    for n in (149, 150, 30):
        _pair(tr, str(n), seed=n)
    te = root / "TestDataset"
    _pair(te / "CVC-300", "149", seed=1149)
    _pair(te / "CVC-ClinicDB", "25", seed=25)
    _pair(te / "CVC-ClinicDB", "26", seed=26, mask_ext=".tif")
    _pair(te / "CVC-ColonDB", "2", seed=2)
    _pair(te / "ETIS-LaribPolypDB", "71", seed=71, size=(30, 38))
    _pair(te / "Kvasir", KV[2], seed=7, residue=True, rgb_mask=True)
    Image.fromarray(_mask()).save(te / "ETIS-LaribPolypDB" / "masks" / "72.png")  # orphan mask (PraNet #69)
    return root


def make_originals(root):
    kv = root / "Kvasir-SEG"
    for i, k in enumerate(KV):
        _pair(kv, k, img_ext=".jpg", mask_ext=".jpg", rgb_mask=True, seed=i)
    (kv / "kavsir_bboxes.json").write_text(json.dumps({KV[0]: {"height": 20, "width": 24, "bbox": []}}))
    cl = root / "CVC-ClinicDB"
    for n in (1, 2, 30):
        _pair(cl, str(n), img_ext=".tif", mask_ext=".tif", img_dir="Original", mask_dir="Ground Truth", seed=n)
    etis = root / "ETIS-LaribPolypDB"
    for n in (1, 2):
        (etis / "GroundTruth").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_img(30, 38, seed=n)).save(etis / f"{n}.tif")
        Image.fromarray(_mask(30, 38)).save(etis / "GroundTruth" / f"p{n}.tif")
    _pair(root / "CVC-ColonDB", "1", seed=5)
    es = root / "CVC-EndoSceneStill" / "CVC-300"
    _pair(es, "1", img_ext=".bmp", mask_ext=".bmp", img_dir="bbdd", mask_dir="gtpolyp", seed=6)
    (es / "gtlumen").mkdir()
    Image.fromarray(_mask()).save(es / "gtlumen" / "1.bmp")
    return root


def test_pranet_layout_ids_are_unique_source_prefixed_and_grouped(nnunet_env, tmp_path):
    src = make_pranet(tmp_path / "polyps")
    out = convert("polyp", src, folds="paper4", quiet=True, progress=False)
    ids = sorted(p.name[:-9] for p in (out / "imagesTr").iterdir())
    assert len(ids) == 11 == len(set(ids))
    assert {"Polyp_ClinicDB_0149", "Polyp_CVC300_0149", "Polyp_ETIS_0071", "Polyp_ColonDB_0002",
            f"Polyp_Kvasir_{KV[0]}", f"Polyp_Kvasir_{KV[2]}"} <= set(ids)
    table = read_sources(out)
    assert table["Polyp_ClinicDB_0149"]["group"] == table["Polyp_ClinicDB_0150"]["group"] == "ClinicDB_seq07"
    assert table["Polyp_ClinicDB_0025"]["group"] != table["Polyp_ClinicDB_0026"]["group"]
    assert table[f"Polyp_Kvasir_{KV[0]}"]["source"] == "Kvasir" and table["Polyp_ClinicDB_0030"]["source"] == "ClinicDB"
    for name in ids:  # JPEG residue and RGB masks binarised to one 0/1 channel
        lab = np.asarray(Image.open(out / "labelsTr" / f"{name}.png"))
        assert lab.ndim == 2 and set(np.unique(lab)) == {0, 1}
    kv = np.asarray(Image.open(out / "labelsTr" / f"Polyp_Kvasir_{KV[0]}.png"))
    assert kv[3, 6] == 1 and kv[12, 6] == 0 and kv.sum() == 8 * 10 + 10
    s = load_summary(out)
    assert s["split_level"] == "group" and len(s["orphans_skipped"]) == 1 and "72.png" in s["orphans_skipped"][0]
    splits = json.loads((nnunet_env / "nnUNet_preprocessed" / out.name / "splits_final.json").read_text())
    assert len(splits) == 4
    assert straddling_groups(splits, {k: v["group"] for k, v in table.items()}) == set()


def test_pranet_test_split_can_stay_held_out(nnunet_env, tmp_path):
    src = make_pranet(tmp_path / "polyps")
    out = convert("polyp", src, pranet_test="imagesTs", folds=None, quiet=True, progress=False)
    assert len(list((out / "imagesTr").iterdir())) == 5
    assert len(list((out / "imagesTs").iterdir())) == 6 == len(list((out / "labelsTs").iterdir()))


def test_original_releases_with_jpeg_tif_bmp_and_etis_p_masks(nnunet_env, tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import check_cases, verify_labels
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    src = make_originals(tmp_path / "downloads")
    out = convert("polyp", src, folds=None, quiet=True, progress=False)
    s = load_summary(out)
    assert s["sources"] == {"CVC300": 1, "ClinicDB": 3, "ColonDB": 1, "ETIS": 2, "Kvasir": 3}
    assert s["orphans_skipped"] == []
    ids = {p.name[:-4] for p in (out / "labelsTr").iterdir()}
    assert {"Polyp_ETIS_0001", "Polyp_ClinicDB_0030", "Polyp_CVC300_0001", f"Polyp_Kvasir_{KV[1]}"} <= ids
    kv = np.asarray(Image.open(out / "labelsTr" / f"Polyp_Kvasir_{KV[0]}.png"))
    assert (kv == (_mask() > 0)).mean() > 0.97  # JPEG mask thresholded back to the box
    assert np.asarray(Image.open(out / "imagesTr" / "Polyp_ETIS_0002_0000.png")).shape == (30, 38, 3)
    for lab in sorted((out / "labelsTr").iterdir()):
        img = out / "imagesTr" / f"{lab.stem}_0000.png"
        assert verify_labels(str(lab), NaturalImage2DIO, [0, 1])
        assert check_cases([str(img)], str(lab), 3, NaturalImage2DIO)


def test_size_mismatch_is_a_bad_pair_and_orphan_images_are_reported(tmp_path):
    src = tmp_path / "CVC-ColonDB"
    _pair(src, "1")
    (src / "masks" / "2.png").write_bytes(b"")
    Image.fromarray(_img(20, 24)).save(src / "images" / "3.png")  # no mask
    Image.fromarray(_mask(21, 24)).save(src / "masks" / "2.png")
    Image.fromarray(_img(20, 24)).save(src / "images" / "2.png")
    items = polyp.read(src)
    cases = [c for c in items if isinstance(c, Case)]
    assert [c.case_id for c in cases] == ["Polyp_ColonDB_0001", "Polyp_ColonDB_0002"]
    assert [o.problem for o in items if not isinstance(o, Case)] == ["image without mask"]
    from nnunet_unisegdiff.conversion.common import BadPairError
    from nnunet_unisegdiff.conversion.writer import DatasetDeclaration, write_dataset
    with pytest.raises(BadPairError, match=r"2.png.*size mismatch"):
        write_dataset(items, DatasetDeclaration(504, "Polyp", {0: "R", 1: "G", 2: "B"}, {"background": 0, "lesion": 1}),
                      out_root=tmp_path / "raw", progress=False, quiet=True)
    assert not any((tmp_path / "raw").iterdir())


def test_unknown_layout_is_an_error(tmp_path):
    (tmp_path / "stuff" / "masks").mkdir(parents=True)
    (tmp_path / "stuff" / "images").mkdir()
    with pytest.raises(LayoutError, match="cannot tell which polyp dataset"):
        polyp.read(tmp_path)
    with pytest.raises(LayoutError, match="no polyp images/masks folders"):
        polyp.read(tmp_path / "stuff" / "masks")
