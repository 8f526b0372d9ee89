"""unified: merging converted datasets into one RGB dataset with a per-case task table."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from nnunet_unisegdiff.conversion.common import Case, LayoutError
from nnunet_unisegdiff.conversion.registry import convert
from nnunet_unisegdiff.conversion.splits import straddling_groups
from nnunet_unisegdiff.conversion.writer import DatasetDeclaration, load_summary, read_sources, write_dataset

pytestmark = pytest.mark.usefixtures("nnunet_env")


def _inputs():
    rng = np.random.default_rng(0)
    grey = []
    for i in range(8):  # 1-channel MRI-like, 2 slices per patient, 20x30
        lab = np.zeros((20, 30), np.uint8)
        lab[5:10, 5 + i:15 + i] = 1
        grey.append(Case(f"MRI_{i:03d}", rng.integers(0, 256, (20, 30), dtype=np.uint8), lab, group=f"pat{i // 2}",
                         source="MRI"))
    write_dataset(grey, DatasetDeclaration(521, "MRI", {0: "MRI"}, {"background": 0, "tumour": 1}, folds=None),
                  progress=False, quiet=True)
    rgb = []
    for i in range(5):  # 3-class RGB, no groups, 24x24, plus held-out cases
        lab = np.zeros((24, 24), np.uint8)
        lab[2:8, 2:8] = 1
        lab[12:20, 12:20] = 2
        rgb.append(Case(f"c{i}", rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), lab, source="Oct"))
    test = [Case(f"t{i}", rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), np.ones((24, 24), np.uint8))
            for i in range(2)]
    oct_ = DatasetDeclaration(522, "Oct", {0: "R", 1: "G", 2: "B"}, {"background": 0, "fluid": 1, "tumour": 2},
                              folds=None)
    write_dataset(rgb, oct_, test_cases=test, progress=False, quiet=True)


def test_merge_replicates_grey_binarises_resizes_and_keeps_the_task_table(nnunet_env):
    from nnunetv2.experiment_planning.verify_dataset_integrity import check_cases, verify_labels
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    _inputs()
    out = convert("unified", None, datasets=["521", "Dataset522_Oct"], resize=16, folds="paper4", quiet=True,
                  progress=False)
    assert out.name == "Dataset510_Unified"
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["numTraining"] == 13 and dj["labels"] == {"background": 0, "lesion": 1} and len(dj["channel_names"]) == 3
    table = read_sources(out)
    mri = nnunet_env / "nnUNet_raw" / "Dataset521_MRI"
    assert table["MRI_003"] == {"source": "MRI", "group": "MRI/pat1", "subset": "Tr",
                                "origin": str(mri / "imagesTr" / "MRI_003_0000.png")
                                + " + " + str(mri / "labelsTr" / "MRI_003.png")}
    assert table["Oct_c0"]["source"] == "Oct" and table["Oct_t1"]["subset"] == "Ts"
    img = np.asarray(Image.open(out / "imagesTr" / "MRI_000_0000.png"))
    assert img.shape == (16, 16, 3) and np.array_equal(img[..., 0], img[..., 2])
    lab = np.asarray(Image.open(out / "labelsTr" / "Oct_c0.png"))
    assert lab.shape == (16, 16) and set(np.unique(lab)) == {0, 1}  # classes 1 and 2 -> lesion, no blending
    assert len(list((out / "imagesTs").iterdir())) == 2
    splits = json.loads((nnunet_env / "nnUNet_preprocessed" / out.name / "splits_final.json").read_text())
    assert load_summary(out)["split_level"] == "group/image (per source)"
    assert len(splits) == 4 and straddling_groups(splits, {k: v["group"] for k, v in table.items()}) == set()
    for task, n in (("MRI_", 8), ("Oct_", 5)):  # every task is cross-validated on its own
        assert sum(c.startswith(task) for f in splits for c in f["val"]) == n
    assert load_summary(out)["sources"] == {"MRI": 8, "Oct": 5}
    for lab in sorted((out / "labelsTr").iterdir()):
        assert verify_labels(str(lab), NaturalImage2DIO, [0, 1])
        assert check_cases([str(out / "imagesTr" / f"{lab.stem}_0000.png")], str(lab), 3, NaturalImage2DIO)


def test_keep_labels_merges_classes_by_name(nnunet_env):
    _inputs()
    out = convert("unified", nnunet_env / "nnUNet_raw", datasets=["521", "522"], keep_labels=True, folds=None,
                  quiet=True, progress=False, dataset_id=511)
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "tumour": 1, "fluid": 2}
    lab = np.asarray(Image.open(out / "labelsTr" / "Oct_c0.png"))
    assert lab[3, 3] == 2 and lab[15, 15] == 1  # Oct fluid(1) -> 2, Oct tumour(2) -> 1
    assert np.asarray(Image.open(out / "imagesTr" / "Oct_c0_0000.png")).shape == (24, 24, 3)


def test_missing_input_dataset_is_a_clear_error(nnunet_env, capsys):
    from nnunet_unisegdiff.cli import main
    _inputs()
    with pytest.raises(LayoutError, match="no Dataset599_"):
        convert("unified", None, datasets=["521", "599"], quiet=True, progress=False)
    assert main(["convert", "unified", "--datasets", "521", "/no/such/folder", "-q"]) == 1
    assert "/no/such/folder" in capsys.readouterr().err
    assert sorted(p.name for p in (nnunet_env / "nnUNet_raw").iterdir()) == ["Dataset521_MRI", "Dataset522_Oct"]
