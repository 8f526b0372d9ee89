"""benchmarks/failure_detection.py: score directions, and the --smoke run end to end."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "failure_detection.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import failure_detection
        yield failure_detection
    finally:
        sys.path.remove(str(SCRIPT.parent))


def model(cases):
    return {"model": "m", "compute": "1x one model", "ece": 0.0, "brier": 0.0, "cases": cases}


def test_scores_are_turned_into_uncertainties_the_right_way_round(bench):
    dices = [1.0, 0.9, 0.7, 0.3, 0.0]
    cases = [{"case": str(i), "dice": d, "confidence": d,          # ranks perfectly, higher = good
              "mean_entropy": d, "pairwise_dice": 1 - d}            # entropy: wrong way round; agreement: inverted
             for i, d in enumerate(dices)]
    rows = {r["score"]: r for r in bench.summarize(model(cases))}
    assert rows["confidence"]["auroc_0.5"] == 1.0 and rows["confidence"]["auroc_0.8"] == 1.0
    assert rows["confidence"]["aurc"] == pytest.approx(rows["confidence"]["aurc_oracle"])
    assert rows["mean_entropy"]["auroc_0.5"] == 0.0
    assert rows["pairwise_dice"]["auroc_0.8"] == 0.0
    assert rows["confidence"]["failures_0.5"] == 2 and rows["confidence"]["failures_0.8"] == 3
    assert rows["confidence"]["mean_dice"] == pytest.approx(np.mean(dices))


def test_pairwise_dice_is_reported_only_for_ensembles(bench):
    cases = [{"case": "a", "dice": 1.0, "confidence": 0.9, "mean_entropy": 0.1},
             {"case": "b", "dice": 0.2, "confidence": 0.5, "mean_entropy": 0.3}]
    assert [r["score"] for r in bench.summarize(model(cases))] == ["mean_entropy", "confidence"]


def test_named_folders_are_parsed(bench, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert bench.parse_named(f"nn={tmp_path / 'a'}") == ("nn", [tmp_path / "a"])
    assert bench.parse_named(str(tmp_path / "a")) == ("a", [tmp_path / "a"])
    assert bench.parse_named(f"ens={tmp_path / 'a'},{tmp_path / 'b'}", several=True)[1] == [tmp_path / "a",
                                                                                          tmp_path / "b"]
    with pytest.raises(SystemExit):
        bench.parse_named(f"ens={tmp_path / 'a'}", several=True)


@pytest.mark.slow
def test_smoke_run_writes_the_table_json_and_markdown(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "fd.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())["results"]
    rows, models = result["rows"], result["models"]
    assert {(r["model"], r["score"]) for r in rows} == {
        ("calibrated", "mean_entropy"), ("calibrated", "confidence"), ("overconfident", "mean_entropy"),
        ("overconfident", "confidence"), ("ensemble", "mean_entropy"), ("ensemble", "confidence"),
        ("ensemble", "pairwise_dice"), ("calibrated", "confidence_validated")}
    record = next(m for m in models if m["model"] == "calibrated")["validation_record"]
    assert record["empty"] + record["lesion"] == 16  # the smoke's stand-in validation: nnU-Net's summary.json
    for r in rows:
        assert r["cases"] == 16 and 0 <= r["auroc_0.5"] <= 1 and 0 <= r["auroc_0.8"] <= 1
        assert r["aurc_oracle"] <= r["aurc"] + 1e-12 and 0 <= r["ece"] <= 1 and 0 <= r["brier"] <= 1
    for m in models:
        for c in m["cases"]:  # the failure benchmark's empty rule
            if c["gt_empty"]:
                assert c["dice"] == (1.0 if c["pred_empty"] else 0.0)
    assert sum(c["gt_empty"] and not c["pred_empty"] for c in models[0]["cases"]) >= 1  # a false lesion planted
    # the overconfident model's maps are 0.99/0.01 everywhere: its mean entropy cannot rank (all ties)
    over = next(r for r in rows if r["model"] == "overconfident" and r["score"] == "mean_entropy")
    assert over["auroc_0.5"] == pytest.approx(0.5)
    md = out.with_suffix(".md").read_text().splitlines()
    assert md[0].startswith("| model | score |") and len(md) == 2 + len(rows)
    assert "AUROC<0.5" in proc.stdout


def test_3d_nifti_folders_are_scored_with_the_empty_rule(bench, tmp_path):
    import SimpleITK as sitk

    def nifti(path, array):
        sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))

    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    lesion = np.zeros((4, 6, 6), np.uint8)
    lesion[1:3, 2:4, 2:4] = 1
    half = lesion.copy()
    half[2] = 0
    cases = {"a": (lesion, lesion), "b": (lesion, half), "c": (np.zeros_like(lesion), lesion)}  # (gt, prediction)
    for case, (gt, pred) in cases.items():
        nifti(gt_dir / f"{case}.nii.gz", gt)
        nifti(pred_dir / f"{case}.nii.gz", pred)
        p = np.where(pred > 0, 0.9, 0.05)
        np.savez(pred_dir / f"{case}.npz", probabilities=np.stack([1 - p, p]).astype(np.float32))
    result = bench.score_model("m", [pred_dir], bench.Labels(gt_dir))
    dices = {c["case"]: c["dice"] for c in result["cases"]}
    assert dices == pytest.approx({"a": 1.0, "b": 2 * 4 / (8 + 4), "c": 0.0})
    assert result["pixels"] == 3 * lesion.size
