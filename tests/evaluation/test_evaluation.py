"""`unisegdiff evaluate` on tiny label files written here, with hand-computed Dice/IoU."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from nnunet_unisegdiff.cli import main as cli_main
from nnunet_unisegdiff.evaluation import evaluate as ev
from nnunet_unisegdiff.evaluation import report, tasks


def mask(*pixels, shape=(4, 4), value=1):
    """A (1, H, W) label map with `value` at the given (row, col) pixels (nnU-Net's 2D layout)."""
    seg = np.zeros((1, *shape), dtype=np.uint8)
    for r, c in pixels:
        seg[0, r, c] = value
    return seg


def write_png(folder, case, seg):
    """Single-channel uint8 PNG through nnU-Net's own 2D writer."""
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    folder.mkdir(parents=True, exist_ok=True)
    NaturalImage2DIO().write_seg(seg, str(folder / f"{case}.png"), {})


def write_cases(root, cases):
    """cases: {case: (gt, pred)} -> (pred_dir, gt_dir)."""
    for case, (gt, pred) in cases.items():
        write_png(root / "gt", case, gt)
        write_png(root / "pred", case, pred)
    return root / "pred", root / "gt"


# GT 3 pixels, prediction 3 pixels, 2 shared: Dice = 2*2/(3+3) = 2/3, IoU = 2/4 = 1/2
GT3 = mask((0, 0), (0, 1), (0, 2))
PRED3 = mask((0, 1), (0, 2), (1, 1))
EMPTY = mask()


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_per_case_dice_and_iou_equal_hand_computed_values(tmp_path):
    pred, gt = write_cases(tmp_path, {"a": (GT3, PRED3), "b": (GT3, GT3)})
    res = ev.evaluate_folder(pred, gt)
    by_case = {r["case"]: r for r in res["per_case"]}
    assert by_case["a"]["Dice"] == pytest.approx(2 / 3)
    assert by_case["a"]["IoU"] == pytest.approx(1 / 2)
    assert (by_case["a"]["tp"], by_case["a"]["fp"], by_case["a"]["fn"]) == (2, 1, 1)
    assert by_case["b"]["Dice"] == by_case["b"]["IoU"] == 1.0
    (all_row,) = res["summary"]  # no sources table: a single task `all`
    assert all_row["task"] == "all" and all_row["n"] == 2
    assert all_row["mDice"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert all_row["mIoU"] == pytest.approx(100 * (1 / 2 + 1) / 2)


@pytest.mark.parametrize("fmt", ["json-dict", "json-records", "csv"])
def test_sources_table_groups_cases_into_tasks_in_table_order(tmp_path, fmt):
    pred, gt = write_cases(tmp_path, {"p1": (GT3, PRED3), "p2": (GT3, GT3), "b1": (GT3, EMPTY)})
    table = {"p2": "Polyp", "p1": "Polyp", "b1": "Breast"}  # Polyp first in the table
    src = tmp_path / ("sources.csv" if fmt == "csv" else "sources.json")
    if fmt == "json-dict":
        src.write_text(json.dumps(table))
    elif fmt == "json-records":
        src.write_text(json.dumps([{"case_id": c, "source": t, "dataset": "x"}
                                   for c, t in table.items()]))
    else:
        src.write_text("case_id,source\n" + "".join(f"{c},{t}\n" for c, t in table.items()))
    rows = {r["task"]: r for r in ev.evaluate_folder(pred, gt, sources=src)["summary"]}
    assert list(rows) == ["Polyp", "Breast", "mean", "all"]
    assert rows["Polyp"]["n"] == 2 and rows["Breast"]["n"] == 1
    assert rows["Polyp"]["mDice"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert rows["Breast"]["mDice"] == 0.0
    assert rows["mean"]["mDice"] == pytest.approx(rows["Polyp"]["mDice"] / 2)
    assert rows["all"]["mDice"] == pytest.approx(100 * (2 / 3 + 1 + 0) / 3)


def test_sources_table_prefers_task_over_source_column(tmp_path):
    src = tmp_path / "s.csv"
    src.write_text("case_id,source,task\nk1,Kvasir,Polyp\nc1,CVC-ClinicDB,Polyp\n")
    assert tasks.load_sources(src) == {"k1": "Polyp", "c1": "Polyp"}
    assert tasks.load_sources(src, column="source") == {"k1": "Kvasir", "c1": "CVC-ClinicDB"}


def test_converter_sources_json_with_paper_task_map_merges_polyp_sets_in_paper_order(tmp_path):
    pred, gt = write_cases(tmp_path, {"kv1": (GT3, GT3), "cvc1": (GT3, PRED3),
                                      "busi1": (GT3, EMPTY), "amd1": (GT3, GT3)})
    # the per-case table nnunet_unisegdiff.conversion.writer writes beside dataset.json
    table = {c: {"source": s, "group": None, "subset": "Tr", "origin": f"/raw/{c}"}
             for c, s in (("busi1", "BUSI"), ("kv1", "Kvasir-SEG"), ("cvc1", "CVC-ClinicDB"),
                          ("amd1", "AMD-SD"))}
    (tmp_path / "sources.json").write_text(json.dumps(table))
    rows = ev.evaluate_folder(pred, gt, sources=tmp_path / "sources.json",
                              task_map="paper")["summary"]
    assert [r["task"] for r in rows] == ["WA", "CP", "BL", "mean", "all"]
    assert rows[1]["n"] == 2 and rows[1]["mDice"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    no_map = ev.evaluate_folder(pred, gt, sources=tmp_path / "sources.json")["summary"]
    assert [r["task"] for r in no_map][:4] == ["BUSI", "Kvasir-SEG", "CVC-ClinicDB", "AMD-SD"]


def test_case_missing_from_sources_table_is_an_error_naming_it(tmp_path):
    pred, gt = write_cases(tmp_path, {"a": (GT3, GT3), "zz": (GT3, GT3)})
    (tmp_path / "s.json").write_text(json.dumps({"a": "T"}))
    with pytest.raises(ev.EvaluationError, match="zz"):
        ev.evaluate_folder(pred, gt, sources=tmp_path / "s.json")


# normal case (Dice 2/3), both empty, prediction on an empty ground truth
EMPTY_CASES = {"normal": (GT3, PRED3), "both_empty": (EMPTY, EMPTY), "fp": (EMPTY, GT3)}


@pytest.mark.parametrize("rule, scores, n_scored", [
    ("exclude", [2 / 3, 0.0], 2),
    ("one", [2 / 3, 1.0, 0.0], 3),
    ("zero", [2 / 3, 0.0, 0.0], 3),
    ("drop", [2 / 3], 1),
])
def test_empty_rule_decides_how_empty_ground_truths_enter_the_mean(tmp_path, rule, scores,
                                                                    n_scored):
    pred, gt = write_cases(tmp_path, EMPTY_CASES)
    res = ev.evaluate_folder(pred, gt, labels=[1], empty_rule=rule)
    (row,) = res["summary"]
    assert row["mDice"] == pytest.approx(100 * np.mean(scores))
    assert (row["n"], row["n_scored"]) == (3, n_scored)
    assert (row["n_empty_gt"], row["n_both_empty"], row["n_fp_on_empty_gt"]) == (2, 1, 1)
    both = next(r for r in res["per_case"] if r["case"] == "both_empty")
    assert both["gt_empty"] and both["pred_empty"]
    assert res["meta"]["empty_rule_text"] == ev.EMPTY_RULES[rule]


def test_empty_rule_is_stated_in_markdown_and_json(tmp_path):
    pred, gt = write_cases(tmp_path, EMPTY_CASES)
    paths = ev.write_outputs(ev.evaluate_folder(pred, gt, labels=[1], empty_rule="one"),
                             tmp_path / "out")
    assert ev.EMPTY_RULES["one"] in paths["md"].read_text()
    meta = json.loads(paths["json"].read_text())
    assert meta["empty_rule"] == "one" and meta["summary"][0]["n_both_empty"] == 1


def test_outputs_agree_across_csv_markdown_and_json(tmp_path):
    pred, gt = write_cases(tmp_path, {"a": (GT3, PRED3), "b": (GT3, GT3), "c": (EMPTY, EMPTY)})
    (tmp_path / "s.json").write_text(json.dumps({"a": "WA", "b": "WA", "c": "LI"}))
    res = ev.evaluate_folder(pred, gt, sources=tmp_path / "s.json", name="UniSegDiff")
    paths = ev.write_outputs(res, tmp_path / "out")
    csv_rows = {r["task"]: r for r in read_csv(paths["csv"])}
    json_rows = {r["task"]: r for r in json.loads(paths["json"].read_text())["summary"]}
    md = paths["md"].read_text()
    assert list(csv_rows) == list(json_rows) == ["WA", "LI", "mean", "all"]
    for task in ("WA", "all"):
        assert float(csv_rows[task]["mDice"]) == pytest.approx(json_rows[task]["mDice"], abs=1e-4)
        assert float(csv_rows[task]["mIoU"]) == pytest.approx(json_rows[task]["mIoU"], abs=1e-4)
    assert csv_rows["LI"]["mDice"] == "" and json_rows["LI"]["mDice"] is None  # nothing scored
    header = md.splitlines()[4]
    assert header.startswith("| Method | WA mDice | WA mIoU | LI mDice | LI mIoU |")
    assert "| UniSegDiff | 83.3 | 75.0 | n/a | n/a | 83.3 | 75.0 | 83.3 | 75.0 |" in md
    per_case = read_csv(paths["per_case"])
    assert [r["case"] for r in per_case] == ["a", "b", "c"]
    assert float(per_case[0]["Dice"]) == pytest.approx(2 / 3, abs=1e-5)
    assert per_case[2]["gt_empty"] == "True" and per_case[2]["Dice"] == ""


def test_prediction_without_ground_truth_is_an_error_naming_the_file(tmp_path, capsys):
    pred, gt = write_cases(tmp_path, {"a": (GT3, GT3)})
    write_png(pred, "orphan_pred", GT3)
    write_png(gt, "orphan_gt", GT3)
    with pytest.raises(ev.EvaluationError) as err:
        ev.evaluate_folder(pred, gt)
    assert "orphan_pred.png" in str(err.value) and "orphan_gt.png" in str(err.value)
    assert str(gt) in str(err.value) and str(pred) in str(err.value)  # where each is missing
    assert cli_main(["evaluate", str(pred), str(gt), "-o", str(tmp_path / "o")]) == 2
    assert "orphan_pred.png" in capsys.readouterr().err
    with pytest.warns(UserWarning) as caught:
        res = ev.evaluate_folder(pred, gt, allow_missing=True)
    assert any("orphan_pred.png" in str(w.message) for w in caught)
    assert [r["case"] for r in res["per_case"]] == ["a"]


def test_multi_class_reports_each_label_and_their_mean_or_the_union(tmp_path):
    gt = GT3 + mask((3, 3), value=2)     # label 1: 3 px, label 2: 1 px
    pred = PRED3 + mask((2, 2), value=2)  # label 1: Dice 2/3 as above; label 2: Dice 0
    pred_dir, gt_dir = write_cases(tmp_path, {"a": (gt, pred)})
    (row,) = ev.evaluate_folder(pred_dir, gt_dir)["summary"]  # labels found in the files
    assert row["Dice_1"] == pytest.approx(100 * 2 / 3) and row["Dice_2"] == 0.0
    assert row["mDice"] == pytest.approx(100 / 3)
    (union,) = ev.evaluate_folder(pred_dir, gt_dir, class_mode="union")["summary"]
    assert union["mDice"] == pytest.approx(100 * 2 * 2 / (4 + 4))  # fg: 4 px each, 2 shared
    assert "Dice_1" not in union


def make_trainer_folder(tmp_path):
    """Two folds: fold_0 predicts perfectly (Dice 1), fold_1 has Dice 1/2, IoU 1/3."""
    gt_dir, trainer = tmp_path / "gt", tmp_path / "nnUNetTrainerX__nnUNetPlans__2d"
    gt2, pred2 = mask((1, 1), (1, 2)), mask((1, 2), (2, 2))
    for case, gt, pred, fold in (("f0a", GT3, GT3, 0), ("f1a", gt2, pred2, 1)):
        write_png(gt_dir, case, gt)
        write_png(trainer / f"fold_{fold}" / "validation", case, pred)
    (trainer / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "lesion": 1}, "file_ending": ".png",
         "channel_names": {"0": "R"}, "numTraining": 2}))
    return trainer, gt_dir


def test_fold_mode_reports_mean_and_sample_std_across_folds(tmp_path):
    trainer, gt_dir = make_trainer_folder(tmp_path)
    res = ev.evaluate_folds(trainer, gt_dir)
    (row,) = res["summary"]
    assert (row["task"], row["n_folds"], row["n"]) == ("all", 2, 2)
    assert row["mDice"] == pytest.approx(75.0)
    assert row["mDice_std"] == pytest.approx(math.sqrt(2) * 25)  # ddof=1: |100-50| / sqrt(2)
    assert row["mIoU"] == pytest.approx(100 * (1 + 1 / 3) / 2)
    assert res["meta"]["name"] == "nnUNetTrainerX"
    paths = ev.write_outputs(res, tmp_path / "out")
    assert "| nnUNetTrainerX | 75.0 \u00b1 35.4 | 66.7 \u00b1 47.1 |" in paths["md"].read_text()
    (csv_row,) = read_csv(paths["csv"])
    assert float(csv_row["mDice_std"]) == pytest.approx(35.3553, abs=1e-3)
    per_fold = read_csv(paths["per_fold"])
    assert [(r["fold"], float(r["mDice"])) for r in per_fold] == [("fold_0", 100.0),
                                                                   ("fold_1", 50.0)]
    assert {r["fold"] for r in read_csv(paths["per_case"])} == {"fold_0", "fold_1"}


def test_cli_fold_mode_writes_all_outputs(tmp_path, capsys):
    trainer, gt_dir = make_trainer_folder(tmp_path)
    out = tmp_path / "out"
    assert cli_main(["evaluate", "--folds", str(trainer), str(gt_dir), "-o", str(out),
                     "--empty", "one", "--name", "UniSegDiff"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "per_case.csv", "summary.csv", "summary.json", "summary.md", "summary_per_fold.csv"]
    assert "| UniSegDiff | 75.0 \u00b1 35.4 |" in capsys.readouterr().out


def test_nifti_labels_are_read_through_nnunets_reader(tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    rw, props = SimpleITKIO(), {"sitk_stuff": {"spacing": (1.0, 1.0, 1.0), "origin": (0.0,) * 3,
                                               "direction": tuple(np.eye(3).ravel())},
                                "spacing": (1.0, 1.0, 1.0)}
    for folder, seg in (("gt", GT3), ("pred", PRED3)):
        (tmp_path / folder).mkdir()
        rw.write_seg(np.repeat(seg, 2, axis=0), str(tmp_path / folder / "c.nii.gz"), props)
    (row,) = ev.evaluate_folder(tmp_path / "pred", tmp_path / "gt")["summary"]
    assert row["mDice"] == pytest.approx(100 * 2 * 4 / (6 + 6))  # two slices of 2/(3+3)


def test_table3_markdown_puts_methods_side_by_side():
    rows_a = [{"task": "WA", "mDice": 87.14, "mIoU": 78.06}, {"task": "all", "mDice": 80.0,
                                                                 "mIoU": 70.0}]
    rows_b = [{"task": "WA", "mDice": 86.8, "mIoU": 77.6, "mDice_std": 0.51, "mIoU_std": 0.69}]
    md = report.table3_markdown([("UniSegDiff", rows_a), ("UNet", rows_b)])
    assert md.splitlines()[0] == "| Method | WA mDice | WA mIoU | all mDice | all mIoU |"
    assert md.splitlines()[2] == "| UniSegDiff | 87.1 | 78.1 | 80.0 | 70.0 |"
    assert md.splitlines()[3] == "| UNet | 86.8 \u00b1 0.5 | 77.6 \u00b1 0.7 |  |  |"


def test_summaries_of_two_evaluations_combine_into_one_table_as_the_readme_shows(tmp_path):
    pred, gt = write_cases(tmp_path, {"a": (GT3, PRED3), "b": (GT3, GT3)})
    a = ev.write_outputs(ev.evaluate_folder(pred, gt, name="UniSegDiff"), tmp_path / "a")["json"]
    b = ev.write_outputs(ev.evaluate_folder(gt, gt, name="UNet"), tmp_path / "b")["json"]
    md = report.table3_markdown([report.load_summary(a), report.load_summary(b)])
    assert md.splitlines()[2].startswith("| UniSegDiff | 83.3 | 75.0 |")
    assert md.splitlines()[3].startswith("| UNet | 100.0 | 100.0 |")


def test_paper_task_map_maps_the_source_names_each_converter_writes():
    import importlib

    from nnunet_unisegdiff.conversion.registry import CONVERTER_MODULES, get_spec
    table, order = tasks.load_task_map("paper")
    assert order == ["WA", "BT", "ADC", "CP", "LI", "BL"]  # Table 3's columns
    for name, module in CONVERTER_MODULES.items():
        spec, mod = get_spec(name), importlib.import_module(module)
        written = [getattr(mod, "SOURCE", None), *getattr(mod, "SOURCES", ())]
        if spec.paper_task is None:
            continue
        assert all(table[tasks._norm(s)] == spec.paper_task for s in written if isinstance(s, str)), name
