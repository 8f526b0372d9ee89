"""The validation record: nnU-Net's validation summary.json read into the weight of the
confidence's empty branch, and `unisegdiff uncertainty --model` using it."""
import csv
import json

import numpy as np
import pytest
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
from PIL import Image

from nnunet_unisegdiff import cli
from nnunet_unisegdiff.evaluation.confidence import case_confidence
from nnunet_unisegdiff.evaluation.validation_record import (
    ValidationRecord,
    case_outcomes,
    model_record,
    summary_files,
)

SIZE = 16


def square(r0: int, r1: int) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), bool)
    m[r0:r1, 4:12] = True
    return m


EMPTY = np.zeros((SIZE, SIZE), bool)
LESION = square(4, 12)  # 64 pixels
HALF = square(4, 8)  # 32 of them: Dice 2 * 32 / (64 + 32) = 2/3
# case -> (reference, prediction): two right empties, a missed lesion, an exact and a half lesion,
# a false lesion on a lesion-free image
FOLD0 = {"a": (LESION, LESION), "b": (LESION, HALF), "c": (LESION, EMPTY), "d": (EMPTY, EMPTY),
         "e": (EMPTY, LESION), "f": (EMPTY, EMPTY)}
FOLD1 = {"g": (LESION, EMPTY), "h": (LESION, LESION)}


def write_fold(fold_dir, cases) -> None:
    """fold_dir/validation/summary.json as nnU-Net's own evaluation writes it."""
    ref, pred = fold_dir / "ref", fold_dir / "validation"
    for folder in (ref, pred):
        folder.mkdir(parents=True, exist_ok=True)
    for case, (r, p) in cases.items():
        Image.fromarray(r.astype(np.uint8)).save(ref / f"{case}.png")
        Image.fromarray(p.astype(np.uint8)).save(pred / f"{case}.png")
    compute_metrics_on_folder(str(ref), str(pred), str(pred / "summary.json"), NaturalImage2DIO(), ".png", [1],
                              num_processes=1)


@pytest.fixture
def model(tmp_path):
    folder = tmp_path / "nnUNetTrainer__nnUNetPlans__2d"
    write_fold(folder / "fold_0", FOLD0)
    write_fold(folder / "fold_1", FOLD1)
    return folder


def test_the_record_counts_each_kind_of_prediction_from_nnunets_summary(model):
    outcomes = case_outcomes(model / "fold_0" / "validation" / "summary.json")
    assert [empty for empty, _ in sorted(outcomes)] == [False] * 3 + [True] * 3
    assert [d for _, d in sorted(outcomes)] == pytest.approx([0.0, 2 / 3, 1.0, 0.0, 1.0, 1.0])
    record = model_record(model, folds=[0])
    assert (record.empty, record.empty_right, record.lesion) == (3, 2, 3)
    assert record.lesion_dice == pytest.approx(1 + 2 / 3)
    mu = (2 + 1 + 2 / 3) / 6
    assert record.mean_dice == pytest.approx(mu)
    assert record.empty_mean == pytest.approx((2 + 2 * mu) / (3 + 2))
    assert record.lesion_mean == pytest.approx((1 + 2 / 3 + 2 * mu) / (3 + 2))
    assert record.empty_weight == pytest.approx(1.0)  # empties were right more often than lesions: not raised
    assert model_record(model / "fold_0") == record  # one fold's folder works too
    missed = model_record(model, folds=[1])  # fold 1: its one empty prediction missed a lesion
    assert missed.empty_weight == pytest.approx(missed.empty_mean / missed.lesion_mean) and missed.empty_weight < 1


def test_a_kind_validation_never_produced_weighs_the_overall_mean_and_changes_nothing():
    record = ValidationRecord(empty=0, empty_right=0, lesion=4, lesion_dice=3.2, sources=())
    assert record.empty_mean == pytest.approx(0.8) and record.lesion_mean == pytest.approx(0.8)
    assert record.empty_weight == pytest.approx(1.0)
    worse = ValidationRecord(empty=5, empty_right=2, lesion=27, lesion_dice=17.1, sources=())
    assert worse.empty_weight == pytest.approx(worse.empty_mean / worse.lesion_mean) and worse.empty_weight < 0.8


def test_all_folds_are_pooled_by_default_and_folds_select(model):
    pooled = model_record(model)
    assert (pooled.empty, pooled.empty_right, pooled.lesion) == (4, 2, 4)
    assert len(pooled.sources) == 2
    assert model_record(model, folds=["1"]).empty == 1
    assert "2 of 4 empty predictions were lesion-free" in pooled.describe()


def test_missing_or_malformed_summaries_are_clear_errors(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="fold_3"):
        summary_files(model, folds=[3])
    with pytest.raises(FileNotFoundError, match="no fold_X"):
        summary_files(tmp_path / "nothing_here")
    bad = tmp_path / "bad" / "fold_0" / "validation"
    bad.mkdir(parents=True)
    (bad / "summary.json").write_text(json.dumps({"mean": {}, "metric_per_case": [{"metrics": {"1": {"Dice": 0.5}}}]}))
    with pytest.raises(ValueError, match=r"bad/fold_0/validation/summary.json.*KeyError: 'n_pred'"):
        model_record(tmp_path / "bad")
    (bad / "summary.json").write_text('{"mean": {}, "metric_per_')  # cut off mid-write
    with pytest.raises(ValueError, match=r"bad/fold_0/validation/summary.json.*JSONDecodeError"):
        model_record(tmp_path / "bad")


def binary(p_fg: np.ndarray) -> np.ndarray:
    return np.stack([1 - p_fg, p_fg])[:, None].astype(np.float32)


def test_the_weight_scales_the_empty_branch_and_nothing_else():
    crisp_empty = binary(np.full((SIZE, SIZE), 0.01))
    soft_lesion = binary(np.where(LESION, 0.8, 0.02))
    raw_empty, raw_lesion = case_confidence(crisp_empty), case_confidence(soft_lesion)
    assert case_confidence(crisp_empty, empty_weight=0.4) == pytest.approx(0.4 * raw_empty)
    assert case_confidence(soft_lesion, empty_weight=0.4) == pytest.approx(raw_lesion)
    with pytest.raises(ValueError, match="empty_weight"):
        case_confidence(crisp_empty, empty_weight=1.5)


def test_uncertainty_with_model_ranks_a_crisp_empty_prediction_by_the_models_record(model, tmp_path, capsys):
    """A crisp empty map is the surest case by its probabilities alone; for a model whose empty
    prediction missed a lesion on validation (fold 1) it is reviewed before a soft lesion."""
    pred = tmp_path / "pred"
    pred.mkdir()
    for case, p in {"empty": np.full((SIZE, SIZE), 0.01), "soft": np.where(LESION, 0.8, 0.02)}.items():
        np.savez_compressed(pred / f"{case}.npz", probabilities=binary(p))

    def confidences(*extra):
        assert cli.main(["uncertainty", str(pred), *extra]) == 0
        with open(pred / "uncertainty" / "uncertainty.csv") as f:
            return {r["case"]: (float(r["confidence"]), int(r["review_rank"])) for r in csv.DictReader(f)}

    alone = confidences()
    assert alone["empty"][1] == 2 and alone["soft"][1] == 1
    weighed = confidences("--model", str(model), "-f", "1")
    record = model_record(model, folds=[1])
    assert weighed["empty"][0] == pytest.approx(record.empty_weight * alone["empty"][0], abs=1e-5)
    assert weighed["soft"][0] == pytest.approx(alone["soft"][0], abs=1e-5)
    assert weighed["empty"][1] == 1 and weighed["soft"][1] == 2
    assert "0 of 1 empty predictions were lesion-free" in capsys.readouterr().out


def test_uncertainty_folds_without_model_and_a_wrong_model_folder_are_errors(tmp_path, capsys):
    pred = tmp_path / "pred"
    pred.mkdir()
    np.savez_compressed(pred / "x.npz", probabilities=binary(np.zeros((SIZE, SIZE))))
    assert cli.main(["uncertainty", str(pred), "-f", "0"]) == 2
    assert "--folds needs --model" in capsys.readouterr().err
    assert cli.main(["uncertainty", str(pred), "--model", str(tmp_path / "missing")]) == 2
    assert "missing: no fold_X" in capsys.readouterr().err
