"""The demo report shows each method's per-case confidence: in the figure and as a review list."""
import json

import numpy as np
import pytest
from PIL import Image

from nnunet_unisegdiff.conversion.synthetic import write_heldout_images
from nnunet_unisegdiff.demo import report as demo_report


def _save(folder, case, label, p_fg):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label.astype(np.uint8)).save(folder / f"{case}.png")
    np.savez_compressed(folder / f"{case}.npz", probabilities=np.stack([1 - p_fg, p_fg])[:, None].astype(np.float32))


@pytest.fixture
def run(tmp_path):
    """A crisp method that is right everywhere but unsure on one case with a lesion, where it also
    misses half the lesion."""
    images, labels = write_heldout_images(tmp_path / "heldout", num_cases=6, size=32, empty_fraction=0.2)
    cases = sorted(p.name[:-4] for p in labels.glob("*.png"))
    pred = tmp_path / "pred"
    doubtful = next(c for c in cases if np.asarray(Image.open(labels / f"{c}.png")).any())
    for c in cases:
        gt = np.asarray(Image.open(labels / f"{c}.png")) > 0
        if c == doubtful:
            label = gt.copy()
            label[: gt.shape[0] // 2] = False
            p = np.where(label, 0.55, np.where(gt, 0.45, 0.02))  # barely sure of what it kept
        else:
            label, p = gt, np.where(gt, 0.99, 0.01)
        _save(pred, c, label, p)
    return images, labels, pred, cases, doubtful


def test_review_list_puts_the_doubtful_case_first_with_its_outcome(tmp_path, run):
    images, labels, pred, cases, doubtful = run
    summary = demo_report.write_report(tmp_path / "report", {"M": pred}, images, labels, grid_cases=3)
    assert set(summary["confidence"]["M"]) == set(cases)
    review = summary["review"]["M"]
    assert review[0]["case"] == doubtful and review[0]["rank"] == 1
    assert [r["confidence"] for r in review] == sorted(r["confidence"] for r in review)
    assert len(review) == demo_report.REVIEW_ROWS
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "## Review list" in readme and f"| M | 1 | {doubtful} |" in readme
    saved = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert saved["confidence"]["M"][doubtful] == pytest.approx(summary["confidence"]["M"][doubtful])


def test_review_rows_name_what_happened_to_each_case():
    per_case = [{"case": "a", "Dice": 0.5, "gt_empty": False, "pred_empty": False},
                {"case": "b", "Dice": float("nan"), "gt_empty": True, "pred_empty": False},
                {"case": "c", "Dice": float("nan"), "gt_empty": True, "pred_empty": True}]
    rows = demo_report.review_rows({"a": 0.9, "b": 0.4, "c": 0.95}, per_case)
    assert [(r["case"], r["outcome"]) for r in rows] == [("b", "no lesion: false lesion"), ("a", "Dice 50.0"),
                                                         ("c", "no lesion: none found")]


def test_a_method_without_saved_probabilities_has_no_review_list(tmp_path, run):
    images, labels, pred, cases, _ = run
    bare = tmp_path / "bare"
    bare.mkdir()
    for c in cases:
        (bare / f"{c}.png").write_bytes((pred / f"{c}.png").read_bytes())
    summary = demo_report.write_report(tmp_path / "report", {"M": pred, "Bare": bare}, images, labels,
                                       grid_cases=3, uncertainty_of="M")
    assert "Bare" not in summary["review"] and summary["confidence"]["Bare"] == {}


def test_a_method_with_a_validation_record_is_weighed_by_it(tmp_path, run):
    """With the method's fold folder, whose validation (nnU-Net's evaluation, written here from the
    references with one lesion missed) had a wrong empty prediction, empty predictions are weighed
    down by the record and lesions keep the map's own confidence."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    from nnunet_unisegdiff.evaluation.confidence import case_confidence
    from nnunet_unisegdiff.evaluation.uncertainty import load_probabilities
    from nnunet_unisegdiff.evaluation.validation_record import model_record
    images, labels, pred, cases, doubtful = run
    fold, val_pred = tmp_path / "fold_0", tmp_path / "val_pred"
    val_pred.mkdir()
    for c in cases:
        gt = np.asarray(Image.open(labels / f"{c}.png"))
        Image.fromarray(np.zeros_like(gt) if c == doubtful else gt).save(val_pred / f"{c}.png")
    (fold / "validation").mkdir(parents=True)
    compute_metrics_on_folder(str(labels), str(val_pred), str(fold / "validation" / "summary.json"),
                              NaturalImage2DIO(), ".png", [1], num_processes=1)
    record = model_record(fold)
    assert record.empty_right == record.empty - 1 and record.empty_weight < 1
    summary = demo_report.write_report(tmp_path / "report", {"M": pred}, images, labels, grid_cases=3,
                                       training_dirs={"M": fold})
    weighed = 0
    for c in cases:
        probs = load_probabilities(pred / f"{c}.npz")
        empty = not (probs.argmax(0) > 0).any()
        weighed += empty
        expected = case_confidence(probs) * (record.empty_weight if empty else 1.0)
        assert summary["confidence"]["M"][c] == pytest.approx(expected)
    assert weighed >= 1
    assert f"- M: {record.describe()}" in (tmp_path / "report" / "README.md").read_text()
