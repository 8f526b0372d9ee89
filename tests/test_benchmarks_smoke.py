"""Every script in benchmarks/ and benchmarks/experiments/ still runs: each with --smoke (tiny sizes) in a
subprocess, writing its JSON where the test says, and its results hold what they must even on tiny data
(the rows and keys its tables are read by, values in their ranges). Found by listing the folders, so a new
benchmark is covered automatically; one without a check below fails until it has one."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for folder in ("benchmarks", "benchmarks/experiments") for p in (ROOT / folder).glob("*.py")
                 if not p.name.startswith("_"))
PIPELINES = {"cfenet", "rs", "diffusion", "paper", "diffusion+cfenet", "cfenet-gated"}


def within(value, low: float, high: float) -> bool:
    """In [low, high]; NaN allowed (a score undefined on tiny data, e.g. AUROC without a failure)."""
    return value is not None and (math.isnan(value) or low <= value <= high)


def positive(rows: list[dict], *keys: str) -> None:
    for row in rows:
        assert all(row[k] > 0 for k in keys), row


def check_accuracy_tables(results: dict, per: str) -> None:
    """accuracy.py, accuracy_real.py, combine.py: per-run rows, and mean tables of the same budgets."""
    runs = results[per]
    assert runs and results["tables"]
    for budgets in runs.values():
        assert set(budgets) == set(results["tables"])
        for entry in budgets.values():
            assert entry["rows"] and all(within(r["dice_all"], 0, 100) for r in entry["rows"].values())
    for rows in results["tables"].values():
        assert any(r["row"] == "pipeline: cfenet" for r in rows)
        for r in rows:
            assert within(r["dice_all"], 0, 100) and within(r["dice_lesion"], 0, 100), r
            assert r["iou_all"] <= r["dice_all"] + 1e-9 or math.isnan(r["dice_all"]), r  # per case IoU <= Dice


def check_accuracy(results):
    check_accuracy_tables(results, "per_seed")


def check_accuracy_real(results):
    check_accuracy_tables(results, "per_split")
    for budgets in results["per_split"].values():
        assert all(entry["chosen_pipeline"] in PIPELINES for entry in budgets.values())


def check_combine(results):
    check_accuracy_tables(results, "per_split")
    assert set(results["per_split"]) == {"0", "1"}  # the smoke's two one-split files
    rows = {r["row"]: r for r in results["tables"]["20"]}
    assert rows["pipeline: cfenet"]["dice_all"] == pytest.approx(65.0)  # mean of 60 and 70
    assert results["chosen_pipeline"]["20"] == {"0": "cfenet", "1": "cfenet"}


def check_convergence(results):
    assert results[0]["objective"].startswith("CFENet")
    assert {r["objective"] for r in results[1:]} <= {"staged", "uniform-eps", "uniform-x0", "one-step"}
    assert any(r["objective"] == "staged" for r in results)
    assert all(within(r["final_dice"], 0, 1) for r in results)


def check_draw_agreement(results):
    summary, cases = results["summary"], results["per_case"]
    assert summary["cases"] == len(cases) > 0
    assert all(within(c["dice"], 0, 1) for c in cases)
    assert summary["failures_05"] <= summary["failures_08"] <= summary["cases"]
    for s in summary["scores"]:
        assert within(s["auroc_05"], 0, 1) and within(s["auroc_08"], 0, 1), s
        assert s["aurc"] >= summary["aurc_oracle"] - 1e-12, s  # no ranking beats ranking by the risk itself
    assert all(within(v["ece"], 0, 1) and within(v["brier"], 0, 1) for v in summary["calibration"].values())


def check_failure_detection(results):
    rows = results["rows"]
    assert {r["model"] for r in rows} == {m["model"] for m in results["models"]}
    for r in rows:
        assert r["failures_0.5"] <= r["failures_0.8"] <= r["cases"], r
        assert within(r["auroc_0.5"], 0, 1) and within(r["auroc_0.8"], 0, 1), r
        assert r["aurc"] >= r["aurc_oracle"] - 1e-12, r
        assert within(r["mean_dice"], 0, 1) and within(r["ece"], 0, 1) and within(r["brier"], 0, 1), r


def check_inference_cost(results):
    assert {r["plan"] for r in results} >= {"staged"}
    positive(results, "seconds_per_image", "dnet_calls", "masks")
    staged = next(r for r in results if r["plan"] == "staged")
    assert staged["dnet_calls"] == 12 and staged["ratio_to_staged"] == 1.0


def check_mirroring(results):
    assert [r["mirroring"] for r in results] == ["off", "on (4 passes)"]
    assert all(r["images"] == 2 and within(r["mean_dice"], 0, 1) for r in results)
    positive(results, "s_per_image")


def check_out_of_fold(results):
    assert results["split"] == 0 and set(results["failure_detection"]) == set(results["rows"])
    assert set(results["chosen"]) == {"in-sample f0", "out-of-fold f0"}
    assert set(results["chosen"].values()) <= PIPELINES
    rows = results["rows"]
    assert {"nnU-Net fold ensemble", "CFENet f0 (nnU-Net)"} <= set(rows)
    assert {f"{r} f0: {p}" for r in ("in-sample", "out-of-fold") for p in PIPELINES - {"cfenet"}} <= set(rows)
    assert all(within(r["dice_all"], 0, 100) and within(r["dice_lesion"], 0, 100) for r in rows.values())
    for name, fd in results["failure_detection"].items():
        assert fd["failed"] <= fd["cases"] and within(fd["confidence"]["auroc"], 0, 1), name
    assert "draws_pairwise" in results["failure_detection"]["out-of-fold f0: chosen (" +
                                                            results["chosen"]["out-of-fold f0"] + ")"]
    assert "folds_pairwise" in results["failure_detection"]["nnU-Net fold ensemble"]
    for part in ("fold 0 train", "fold 0 val"):
        cause = next(v for k, v in results["cause"].items() if k.startswith(part))
        assert all(within(v, 0, 100) for v in cause.values()) and "CFENet vs reference" in cause


def check_overhead(results):
    assert [r["config"] for r in results] == ["2d-32-w0.25"]
    positive(results, "staged_s", "floor_s", "overhead_ratio")


def check_scaling(results):
    assert [r["masks"] for r in results["inference_vs_masks"]] == [2, 4]
    assert [r["raters"] for r in results["staple_vs_raters"]] == [2, 4]
    for key in ("inference_vs_masks", "inference_vs_size", "staple_vs_raters", "staple_vs_pixels"):
        assert results[key], key
        positive(results[key], "seconds")


def check_staple_vs_simpleitk(results):
    assert len(results) == 4  # two stacks (iid, sampler-like) x the two shapes
    positive(results, "torch_s", "simpleitk_s", "speedup")
    assert all(within(r["dice_thresholded"], 0, 1) for r in results)
    # on iid stacks the two STAPLEs agree (a tiny sampler-like 3D stack can leave too little foreground)
    assert all(r["dice_thresholded"] >= 0.9 for r in results if r["stack"].startswith("iid"))


def check_training_step(results):
    assert [r["config"] for r in results] == ["2d-32-w0.25"]
    positive(results, "a_step_s", "b_step_s")
    assert all(r["ratio"] == pytest.approx(r["b_step_s"] / r["a_step_s"]) for r in results)


def check_choice_rules(results):
    for r in results["per_run"] + results["summary"]:  # a summary row names each run's choice
        assert set(r["chosen"].split()) <= PIPELINES and within(r["dice_all"], 0, 100), r
    assert {r["rule"] for r in results["summary"]} == {r["rule"] for r in results["per_run"]}


def check_kvasir_check(results):
    download, labels, sizes, masks = results["download"], results["labels"], results["sizes"], results["masks"]
    assert download["pairs"] == labels["pairs_checked"] == results["conversion"]["cases_written"] == 4
    assert download["bboxes_entries"] == 4 and not download["pairs_without_bboxes"] and not download["odd_names"]
    assert labels["pairs_not_converted"] == [] and labels["mismatching_files"] == {}
    assert labels["mismatching_pixels"] == 0 < labels["foreground_pixels"] < labels["pixels_checked"]
    assert results["images"]["mismatching_files"] == {} and results["images"]["mismatching_pixels"] == 0
    assert all(sizes[k] == [] for k in ("image_vs_mask", "image_vs_bboxes", "written_image_vs_label",
                                        "written_vs_original"))
    assert sizes["distinct"] == 4 and results["boxes"]["boxes"] == 4 and results["boxes"]["outside_image"] == []
    assert masks["files_with_residue"] == 4 and masks["empty"] == [] == masks["channels_differ"]  # JPEG rings, no more
    assert masks["background_max"] < 128 <= masks["foreground_min"]


def check_shifted_copy(results):
    cases = results["cases"]
    assert sum(results["counts"].values()) == len(cases) > 0
    assert {c["kind"] for c in cases.values()} <= set(results["counts"]) == {"noise", "blur", "contrast"}


def check_stitch_check(results):
    rows = results["rows"]
    assert [(r["cases"], r["ridge"]) for r in rows] == [(3, 1e-3), (3, 1e-1), (6, 1e-3), (6, 1e-1)]
    for r in rows:
        assert all(v <= 1 + 1e-9 for v in r["fit_r2"] + r["test_r2"] + r["held_r2"]), r
        assert all(within(r[k], 0, 1) for k in ("test_stitched_vs_source", "held_stitched_vs_source",
                                                "held_target_vs_source")), r


def check_tiling(results):
    rows = results["rows"]
    assert rows and {r["pipeline"] for r in rows} <= PIPELINES
    for r in rows:
        assert r["pairs"] == 3 and 0 <= r["moved_outside_overlaps"] <= r["moved"] <= r["pixels"], r
        assert within(r["dice_off"], 0, 100) and within(r["dice_on"], 0, 100), r


def check_unified_real(results):
    rows = {r["row"]: r for r in results["table"]}
    assert {f"{m}, {mode}" for m in ("nnUNetTrainer", "UniSegDiff") for mode in ("per dataset", "unified")} <= set(rows)
    split = results["per_split"]["0"]
    mixed = "unified CFENet + DNet per dataset"  # --dnet-per-dataset: no CFENet row of its own
    assert f"UniSegDiff, {mixed}" in rows and f"nnUNetTrainer, {mixed}" not in rows
    assert set(split["chosen"]) == {"busi", "polyp", "unified", f"busi, {mixed}", f"polyp, {mixed}"}
    assert set(split["chosen"].values()) <= PIPELINES
    for task in ("busi", "polyp"):  # where a DNet per dataset kept CFENet, it predicts as the unified nnU-Net
        if split["chosen"][f"{task}, {mixed}"] == "cfenet":
            assert split["rows"][f"UniSegDiff, {mixed}"][task] == split["rows"]["nnUNetTrainer, unified"][task]
    for task in ("busi", "polyp"):  # the same held-out images of each task in every row
        assert len({r[task]["cases"] for r in split["rows"].values()}) == 1 and split["rows"][
            "nnUNetTrainer, unified"][task]["cases"] == 3
    for r in rows.values():
        dice = [r[f"{t}_dice"][0] for t in ("busi", "polyp")]
        assert all(within(d, 0, 100) for d in dice) and r["mean_dice"][0] == pytest.approx(sum(dice) / 2), r
        assert all(r[f"{t}_iou"][0] <= r[f"{t}_dice"][0] + 1e-9 for t in ("busi", "polyp")), r
        assert r["busi_false_lesions"][1] == 1  # the smoke's one normal BUSI image held out
    drop = results["targets"]["drop_per_dataset_to_unified"]
    for model in ("nnUNetTrainer", "UniSegDiff"):
        assert drop[model] == pytest.approx(rows[f"{model}, per dataset"]["mean_dice"][0]
                                            - rows[f"{model}, unified"]["mean_dice"][0])
    assert results["targets"]["unisegdiff_drops_less"] == (drop["UniSegDiff"] < drop["nnUNetTrainer"])
    assert drop[mixed] == pytest.approx(rows["UniSegDiff, per dataset"]["mean_dice"][0]
                                        - rows[f"UniSegDiff, {mixed}"]["mean_dice"][0])
    assert results["targets"]["mixed_drops_less"] == (drop[mixed] < drop["nnUNetTrainer"])


CHECKS = {name[len("check_"):]: f for name, f in globals().items() if name.startswith("check_")}


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_runs_in_smoke_mode(script, tmp_path):
    assert script.stem in CHECKS, f"{script.name}: add a check of its smoke results to this file"
    out = tmp_path / f"{script.stem}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, str(script), "--smoke", "--json", str(out)], cwd=script.parent, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert results, f"{script.name} wrote no results"
    CHECKS[script.stem](results)
