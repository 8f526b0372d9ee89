"""The synthetic lesion generator: deterministic, multi-modality RGB, soft borders, empty masks, held-out set."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from nnunet_unisegdiff.conversion import synthetic
from nnunet_unisegdiff.conversion.writer import load_summary, read_sources

pytestmark = pytest.mark.usefixtures("nnunet_env")


def test_generator_is_deterministic_for_a_seed_and_prefix_stable():
    a = synthetic.generate_cases(6, seed=7, size=32)
    b = synthetic.generate_cases(9, seed=7, size=32)
    c = synthetic.generate_cases(6, seed=8, size=32)
    for x, y in zip(a, b[:6]):
        assert x.case_id == y.case_id
        assert np.array_equal(x.image, y.image) and np.array_equal(x.label, y.label)
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(a, c))


def test_cases_cycle_modalities_are_rgb_and_include_empty_masks():
    cases = synthetic.generate_cases(12, seed=1, size=48)
    assert {c.source for c in cases} == {"SynGrey", "SynEndo", "SynUS"}
    assert all(c.image.shape == (48, 48, 3) and c.image.dtype == np.uint8 for c in cases)
    assert all(c.label.shape == (48, 48) and set(np.unique(c.label)) <= {0, 1} for c in cases)
    empty = [c for c in cases if c.label.max() == 0]
    assert 1 <= len(empty) <= 4
    grey = cases[0].image
    assert np.array_equal(grey[..., 0], grey[..., 1])  # grey modality replicated to RGB


def test_lesions_are_visible_but_their_borders_are_soft():
    for c in synthetic.generate_cases(9, seed=2, size=64, empty_fraction=0):
        g = c.image.astype(float)
        from scipy.ndimage import binary_dilation, binary_erosion
        inner = binary_erosion(c.label > 0, iterations=4)
        ring_in = (c.label > 0) & ~binary_erosion(c.label > 0, iterations=1)
        outer = ~binary_dilation(c.label > 0, iterations=6)
        if inner.sum() < 5:
            continue
        core_contrast = np.linalg.norm(g[inner].mean(0) - g[outer].mean(0))  # colour distance
        edge_contrast = np.linalg.norm(g[ring_in].mean(0) - g[outer].mean(0))
        assert core_contrast > 25, c.case_id  # learnable
        assert edge_contrast < 0.85 * core_contrast, c.case_id  # the border fades


def test_two_lesion_classes_on_request():
    cases = synthetic.generate_cases(20, seed=3, num_classes=2)
    values = set().union(*(set(np.unique(c.label)) for c in cases))
    assert values == {0, 1, 2}
    assert synthetic.labels_for(2) == {"background": 0, "lesion_1": 1, "lesion_2": 2}


def test_cli_writes_training_and_held_out_sets(nnunet_env):
    from nnunet_unisegdiff.cli import main
    rc = main(["convert", "synthetic", "-d", "598", "--num-cases", "10", "--num-test", "3", "--size", "32",
               "--num-classes", "2", "--folds", "paper4", "-q"])
    assert rc == 0
    out = nnunet_env / "nnUNet_raw" / "Dataset598_Synthetic"
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["numTraining"] == 10 and len(dj["channel_names"]) == 3
    assert dj["labels"] == {"background": 0, "lesion_1": 1, "lesion_2": 2}
    assert len(list((out / "imagesTr").glob("*_0000.png"))) == 10
    ts = sorted(p.name for p in (out / "imagesTs").iterdir())
    assert len(ts) == 3 and all(n.startswith("SYNTS_") for n in ts)
    assert len(list((out / "labelsTs").iterdir())) == 3
    assert np.asarray(Image.open(out / "imagesTr" / "SYN_0000_grey_0000.png")).shape == (32, 32, 3)
    splits = json.loads((nnunet_env / "nnUNet_preprocessed" / "Dataset598_Synthetic" / "splits_final.json").read_text())
    assert len(splits) == 4 and load_summary(out)["split_level"] == "image"
    assert read_sources(out)["SYNTS_0000_grey"]["subset"] == "Ts"


def test_python_helpers_write_a_dataset_and_a_held_out_folder(nnunet_env, tmp_path):
    out = synthetic.write_synthetic_dataset(num_cases=6, num_test=2, size=32, dataset_id=597)
    assert out.name == "Dataset597_Synthetic" and len(list((out / "labelsTr").iterdir())) == 6
    imgs, labs = synthetic.write_heldout_images(tmp_path / "held", 4, size=32)
    names = sorted(p.name for p in imgs.iterdir())
    assert len(names) == 4 and all(n.endswith("_0000.png") for n in names)
    assert sorted(p.name for p in labs.iterdir()) == [n.replace("_0000.png", ".png") for n in names]
    # the held-out folder holds exactly the dataset's test cases for the same seed
    assert np.array_equal(np.asarray(Image.open(imgs / names[0])), np.asarray(Image.open(out / "imagesTs" / names[0])))
