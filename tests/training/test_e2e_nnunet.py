"""The whole product through nnU-Net's own, unmodified commands on a tiny synthetic dataset:
plan and preprocess, train both phases (killed once in phase B and resumed with --c), predict
new images, evaluate."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.io import imread

from nnunet_unisegdiff.conversion.synthetic import write_synthetic_dataset
from nnunet_unisegdiff.model.pipelines import PIPELINES
from nnunet_unisegdiff.nnunet_ext import TRAINER_DIR

DATASET_ID = 971
TRAINER = "nnUNetTrainerUniSegDiffTestTiny"
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow  # minutes: real nnU-Net runs in child processes


@pytest.fixture(scope="module")
def nnunet_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    env = dict(os.environ)
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_def_n_proc="1", nnUNet_compile="0",
               nnUNet_extTrainer=os.pathsep.join([str(TRAINER_DIR), str(Path(__file__).parent / "ext_trainers")]))
    write_synthetic_dataset(root / "raw", dataset_id=DATASET_ID, num_cases=12, num_test=3, size=32,
                            empty_fraction=0.1, preprocessed_root=root / "preprocessed")
    run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "-np", "1", "-npfp", "1",
         "--verify_dataset_integrity"], env)
    env["nnUNet_n_proc_DA"] = "0"  # planning needs it > 0; training is faster single-threaded here
    return root, env


def run(cmd, env, check=True):
    proc = subprocess.run([str(BIN / cmd[0]), *cmd[1:]], env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def train_killed_and_resumed(root: Path, env: dict) -> tuple[Path, dict, str]:
    """nnUNetv2_train killed at the start of epoch 3 (epochs 0-1 were phase A, epoch 2 phase B), then resumed with
    --c: (fold folder, final checkpoint, the resumed run's log)."""
    train = ["nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", TRAINER, "-device", "cpu", "--npz"]
    crashed = run(train, {**env, "UNISEGDIFF_TEST_CRASH_AT_EPOCH": "3"}, check=False)
    assert crashed.returncode != 0 and "test crash at the start of epoch 3" in crashed.stdout + crashed.stderr
    fold_dir = next((root / "results").glob(f"Dataset{DATASET_ID}_*")) / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"
    latest = torch.load(fold_dir / "checkpoint_latest.pth", weights_only=False, map_location="cpu")
    assert latest["unisegdiff"]["phase"] == "B" and latest["current_epoch"] == 3
    assert not (fold_dir / "checkpoint_final.pth").exists()

    resumed = run(train + ["--c"], env)
    log = resumed.stdout
    assert "Epoch 3" in log and "Epoch 2" not in log, "resume must continue at epoch 3, not start over"
    final = torch.load(fold_dir / "checkpoint_final.pth", weights_only=False, map_location="cpu")
    assert final["unisegdiff"]["phase"] == "B" and final["current_epoch"] == 4
    assert bool(final["network_weights"]["dnet_trained"])
    return fold_dir, final, log


def check_the_trained_fold(fold_dir: Path, final: dict, log: str) -> None:
    """The pipeline chosen on the fold's validation cases, its mirroring, the logs and nnU-Net's validation."""
    record = json.loads((fold_dir / "inference_pipeline.json").read_text())
    assert set(record["table"]) == set(PIPELINES) and record["chosen"] in PIPELINES
    # test-time mirroring goes with the choice: nnU-Net's for CFENet alone, none for a DNet pipeline
    plan_axes = final["unisegdiff"]["plan_mirroring_axes"]
    assert final["inference_allowed_mirroring_axes"] == (tuple(plan_axes) if record["chosen"] == "cfenet" else None)
    assert final["network_weights"]["_extra_state"]["settings"]["pipeline"] == record["chosen"]
    assert f"Inference pipeline: {record['chosen']}" in log
    logs = final["logging"]
    assert np.isnan(logs["train_loss_rs"][0]) and np.isfinite(logs["train_loss_rs"][2:]).all(), \
        "per-stage losses are logged in phase B only"
    assert (fold_dir / "progress.png").exists() and (fold_dir / "progress_stages.png").exists()
    summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
    assert "foreground_mean" in summary


def predict_new_and_training_images(raw: Path, env: dict, tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """nnU-Net's predictor rebuilds the network from the trainer class: 3 new images + 4 training images.
    (labels folder, prediction folder, the training cases' IDs)."""
    images, labels, out = tmp_path / "images", tmp_path / "labels", tmp_path / "pred"
    images.mkdir(), labels.mkdir()
    train_ids = sorted(p.name[:-len("_0000.png")] for p in (raw / "imagesTr").glob("*_0000.png"))[:4]
    for case in train_ids:
        shutil.copy(raw / "imagesTr" / f"{case}_0000.png", images)
        shutil.copy(raw / "labelsTr" / f"{case}.png", labels)
    for p in (raw / "imagesTs").glob("*.png"):
        shutil.copy(p, images)
    for p in (raw / "labelsTs").glob("*.png"):
        shutil.copy(p, labels)
    run(["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", str(DATASET_ID), "-c", "2d",
         "-tr", TRAINER, "-f", "0", "-device", "cpu", "--save_probabilities"], env)
    preds = sorted(out.glob("*.png"))
    assert len(preds) == 7
    for p in preds:
        seg = imread(p)
        assert seg.shape == (32, 32) and set(np.unique(seg)) <= {0, 1}
        probs = np.load(p.with_suffix(".npz"))["probabilities"]
        assert np.allclose(probs.sum(0), 1, atol=1e-3)
    return labels, out, train_ids


def check_training_cases_are_segmented(labels: Path, out: Path, train_ids: list[str], raw: Path, fold_dir: Path,
                                       env: dict) -> None:
    """nnUNetv2_evaluate_folder: the training cases' Dice clearly above an empty or all-lesion prediction."""
    run(["nnUNetv2_evaluate_folder", str(labels), str(out), "-djfile", str(raw / "dataset.json"),
         "-pfile", str(fold_dir.parent / "plans.json")], env)
    per_case = json.loads((out / "summary.json").read_text())["metric_per_case"]
    scored = [c["metrics"]["1"] for c in per_case
              if Path(c["reference_file"]).stem in train_ids and c["metrics"]["1"]["n_ref"] > 0]
    dice = np.mean([m["Dice"] for m in scored])
    # an empty prediction scores 0; predicting everything as lesion scores 2|GT| / (|GT| + N)
    everything = np.mean([2 * m["n_ref"] / (m["n_ref"] + 32 * 32) for m in scored])
    assert dice > max(0.3, everything + 0.1), \
        (f"Dice on training cases {dice:.3f} is not clearly above an empty (0) "
         f"or all-lesion ({everything:.3f}) prediction")


def test_train_kill_resume_predict_evaluate(nnunet_env, tmp_path):
    root, env = nnunet_env
    fold_dir, final, log = train_killed_and_resumed(root, env)
    # after phase B the trainer chose its inference pipeline on the fold's validation cases
    check_the_trained_fold(fold_dir, final, log)

    raw = next((root / "raw").glob(f"Dataset{DATASET_ID}_*"))
    labels, out, train_ids = predict_new_and_training_images(raw, env, tmp_path)
    check_training_cases_are_segmented(labels, out, train_ids, raw, fold_dir, env)

    # nnU-Net's model selection reads the --npz validation outputs of the trainer folder
    run(["nnUNetv2_find_best_configuration", str(DATASET_ID), "-c", "2d", "-tr", TRAINER, "-f", "0"], env)
    instructions = next((root / "results").glob(f"Dataset{DATASET_ID}_*")) / "inference_instructions.txt"
    assert TRAINER in instructions.read_text()


def test_two_lesion_labels_train_and_predict_through_the_same_commands(tmp_path):
    env = dict(os.environ)
    env.update(nnUNet_raw=str(tmp_path / "raw"), nnUNet_preprocessed=str(tmp_path / "preprocessed"),
               nnUNet_results=str(tmp_path / "results"), nnUNet_def_n_proc="1", nnUNet_compile="0",
               nnUNet_extTrainer=os.pathsep.join([str(TRAINER_DIR), str(Path(__file__).parent / "ext_trainers")]))
    raw = write_synthetic_dataset(tmp_path / "raw", dataset_id=972, num_cases=8, num_test=2, size=32,
                                  num_classes=2, preprocessed_root=tmp_path / "preprocessed")
    run(["nnUNetv2_plan_and_preprocess", "-d", "972", "-c", "2d", "-np", "1", "-npfp", "1"], env)
    env["nnUNet_n_proc_DA"] = "0"
    run(["nnUNetv2_train", "972", "2d", "0", "-tr", "nnUNetTrainerUniSegDiffTestMicro", "-device", "cpu"], env)
    out = tmp_path / "pred"
    run(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", "972", "-c", "2d",
         "-tr", "nnUNetTrainerUniSegDiffTestMicro", "-f", "0", "-device", "cpu", "--save_probabilities"], env)
    for p in sorted(out.glob("*.png")):
        assert set(np.unique(imread(p))) <= {0, 1, 2}
        probs = np.load(p.with_suffix(".npz"))["probabilities"]
        assert probs.shape == (3, 1, 32, 32) and np.allclose(probs.sum(0), 1, atol=1e-3)
    assert len(list(out.glob("*.png"))) == 2
