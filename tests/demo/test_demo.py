"""`unisegdiff demo` orchestration without the 15-minute run: run folders and the no-clobber rule,
nnU-Net's environment, log parsing, arguments, and the report written from fake predictions."""
import json
import os
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnunet_unisegdiff import cli
from nnunet_unisegdiff.conversion.synthetic import write_heldout_images
from nnunet_unisegdiff.demo import layout as run_folders
from nnunet_unisegdiff.demo import report as demo_report
from nnunet_unisegdiff.demo import runner as demo
from nnunet_unisegdiff.demo.processes import child_env
from nnunet_unisegdiff.demo.progress import PredictParser, TrainParser, trainer_epochs
from nnunet_unisegdiff.nnunet_ext import TRAINER_DIR
from nnunet_unisegdiff.training.log_messages import PHASE_B_START


# ----------------------------------------------------------------------------- run folders
def test_runs_are_numbered_and_a_rerun_never_touches_an_earlier_one(tmp_path):
    first = run_folders.prepare_layout(tmp_path, None, False, 598, environ={})
    (first.run_dir / "result.txt").write_text("keep me")
    second = run_folders.prepare_layout(tmp_path, None, False, 598, environ={})
    assert (first.run_dir.name, second.run_dir.name) == ("run_001", "run_002")
    assert (first.run_dir / "result.txt").read_text() == "keep me"
    assert (second.run_dir / run_folders.RUN_MARKER).is_file()


def test_without_nnunet_variables_the_nnunet_folders_live_inside_the_run(tmp_path):
    layout = run_folders.prepare_layout(tmp_path, None, False, 598, environ={})
    assert all(layout.nnunet[v] == (layout.run_dir / v).resolve() for v in run_folders.NNUNET_VARS)
    assert not any(layout.user_set.values())


def test_a_named_run_is_refused_when_it_exists_and_replaced_with_overwrite(tmp_path):
    layout = run_folders.prepare_layout(tmp_path, "mine", False, 598, environ={})
    (layout.run_dir / "old.txt").write_text("x")
    with pytest.raises(run_folders.DemoError, match="--overwrite"):
        run_folders.prepare_layout(tmp_path, "mine", False, 598, environ={})
    again = run_folders.prepare_layout(tmp_path, "mine", True, 598, environ={})
    assert again.run_dir == layout.run_dir and not (again.run_dir / "old.txt").exists()


def test_overwrite_never_deletes_a_folder_the_demo_did_not_make(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(run_folders.DemoError, match="not a demo run folder"):
        run_folders.prepare_layout(tmp_path, "mine", True, 598, environ={})
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_overwrite_without_a_name_replaces_the_latest_run(tmp_path):
    run_folders.prepare_layout(tmp_path, None, False, 598, environ={})
    second = run_folders.prepare_layout(tmp_path, None, False, 598, environ={})
    (second.run_dir / "old.txt").write_text("x")
    again = run_folders.prepare_layout(tmp_path, None, True, 598, environ={})
    assert again.run_dir.name == "run_002" and not (again.run_dir / "old.txt").exists()


@pytest.mark.parametrize("name", ["../elsewhere", "a/b", ".."])
def test_run_names_stay_inside_the_root(tmp_path, name):
    with pytest.raises(run_folders.DemoError, match="--run"):
        run_folders.choose_run_dir(tmp_path, name)


def _user_folders(tmp_path):
    env = {v: str(tmp_path / v) for v in run_folders.NNUNET_VARS}
    for v in run_folders.NNUNET_VARS:
        (tmp_path / v).mkdir()
    return env


def test_user_nnunet_folders_are_used_and_an_earlier_demo_dataset_needs_overwrite(tmp_path):
    env = _user_folders(tmp_path)
    layout = run_folders.prepare_layout(tmp_path / "runs", None, False, 598, environ=env)
    assert layout.nnunet["nnUNet_raw"] == (tmp_path / "nnUNet_raw").resolve() and all(layout.user_set.values())
    (tmp_path / "nnUNet_results" / "Dataset598_UniSegDiffDemo").mkdir()
    with pytest.raises(run_folders.DemoError, match="--overwrite"):
        run_folders.prepare_layout(tmp_path / "runs", None, False, 598, environ=env)
    run_folders.prepare_layout(tmp_path / "runs", None, True, 598, environ=env)  # allowed: the demo's own
    assert (tmp_path / "nnUNet_results" / "Dataset598_UniSegDiffDemo").is_dir(), "left for nnU-Net to overwrite"


def test_another_dataset_with_the_demo_id_is_never_overwritten(tmp_path):
    env = _user_folders(tmp_path)
    (tmp_path / "nnUNet_raw" / "Dataset598_MyLiver").mkdir()
    for overwrite in (False, True):
        with pytest.raises(run_folders.DemoError, match="--dataset-id"):
            run_folders.prepare_layout(tmp_path / "runs", None, overwrite, 598, environ=env)
    run_folders.prepare_layout(tmp_path / "runs", None, False, 597, environ=env)


# ----------------------------------------------------------------------------- environment and logs
def test_child_environment_finds_our_trainers_and_keeps_the_users_choices(tmp_path):
    layout = run_folders.prepare_layout(tmp_path, None, False, 598, environ={})
    env = child_env(layout, {"nnUNet_extTrainer": "/my/trainers", "nnUNet_def_n_proc": "7",
                                  "nnUNet_unisegdiff_cfenet": "/some/checkpoint.pth"})
    assert env["nnUNet_extTrainer"].split(os.pathsep) == [str(TRAINER_DIR), "/my/trainers"]
    assert env["nnUNet_def_n_proc"] == "7" and env["nnUNet_compile"] == "0"
    assert env["nnUNet_unisegdiff_cfenet"] == "none", "no CFENet may be found by chance"
    cfg = demo.DemoConfig()
    reuse = demo.cfenet_env(layout, cfg)["nnUNet_unisegdiff_cfenet"]  # only UniSegDiff's train step sets it
    assert reuse == str(demo.training_dirs(layout, cfg)[demo.BASELINE] / "checkpoint_final.pth")
    assert env["nnUNet_results"] == str(layout.nnunet["nnUNet_results"])


class Recorder:
    def __init__(self):
        self.calls = []

    def update(self, n=None, info=None, desc=None):
        self.calls.append((n, info, desc))


def test_train_parser_follows_epochs_phase_switch_and_validation():
    rec = Recorder()
    parser = TrainParser(rec, num_epochs=12)
    for line in ["2026-01-01 10:00:00.000000: Epoch 0",
                 "2026-01-01 10:00:05.000000: Pseudo dice [np.float32(0.8455)]",
                 "2026-01-01 10:01:00.000000: " + PHASE_B_START.format(epoch=4, mode="staged"),
                 "2026-01-01 10:01:00.000001: Epoch 4",
                 "2026-01-01 10:02:00.000000: Training done.",
                 "2026-01-01 10:02:01.000000: predicting SYN_0002_us",
                 "2026-01-01 10:02:09.000000: Mean Validation Dice:  0.7991707934859991"]:
        parser(line)
    assert (0, None, None) in rec.calls and (4, None, None) in rec.calls
    assert (None, "pseudo Dice 0.85", None) in rec.calls
    assert [desc for _, _, desc in rec.calls if desc] == ["epochs (phase B: DNet)"]
    assert (None, "final validation: 1 cases", None) in rec.calls
    assert parser.mean_validation_dice == pytest.approx(0.79917, abs=1e-5)


def test_predict_parser_counts_finished_cases():
    rec = Recorder()
    parser = PredictParser(rec)
    for line in ["Predicting SYNTS_0000_grey:", "done with SYNTS_0000_grey", "done with SYNTS_0001_endo"]:
        parser(line)
    assert [c[0] for c in rec.calls] == [1, 2]


def test_baseline_trainer_has_the_cfenet_budget_of_the_demo_trainer():
    from nnunet_unisegdiff.training.variants import nnUNetTrainerUniSegDiffDemo as D
    assert trainer_epochs(demo.TRAINER) == D.num_epochs_cfenet + D.num_epochs_dnet
    assert trainer_epochs(demo.BASELINE_TRAINER) == D.num_epochs_cfenet  # it is UniSegDiff's CFENet
    assert D.num_epochs_cfenet >= 1 and D.num_epochs_dnet >= 1 and D.dnet_lr > 1e-4


def test_progress_knows_the_epochs_of_builtin_trainers():
    assert trainer_epochs("nnUNetTrainer_50epochs") == 50
    assert trainer_epochs("nnUNetTrainer_1epoch") == 1
    assert trainer_epochs("nnUNetTrainerUniSegDiff_50epochs") == 50
    assert trainer_epochs("SomethingElse") == 0


def test_demo_trainers_are_found_through_the_extension_folder(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    monkeypatch.setenv("nnUNet_extTrainer", str(TRAINER_DIR))
    for name in (demo.TRAINER, demo.BASELINE_TRAINER):
        assert recursive_find_trainer_class_by_name(name).__name__ == name


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("args, message", [(["--num-cases", "5"], "--num-cases"), (["--size", "16"], "--size"),
                                           (["--run", "../x"], "--run")])
def test_bad_arguments_end_with_a_message_and_create_nothing(tmp_path, capsys, args, message):
    assert cli.main(["demo", "--root", str(tmp_path / "root"), *args]) == 1
    assert message in capsys.readouterr().err
    assert not any((tmp_path / "root").glob("run_*"))


def test_parser_defaults_are_the_config_defaults():
    args = cli.build_parser().parse_args(["demo"])
    assert {f.name: getattr(args, f.name) for f in fields(demo.DemoConfig)} == asdict(demo.DemoConfig())
    assert (args.root, args.run_name, args.overwrite, args.device) == (demo.DEFAULT_ROOT, None, False, "auto")
    assert (args.trainer, args.baseline_trainer) == (demo.TRAINER, demo.BASELINE_TRAINER)


# ----------------------------------------------------------------------------- report from fake predictions
def _save_prediction(folder: Path, case: str, label: np.ndarray, p_fg: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label.astype(np.uint8)).save(folder / f"{case}.png")
    np.savez_compressed(folder / f"{case}.npz",
                        probabilities=np.stack([1 - p_fg, p_fg])[:, None].astype(np.float32))


@pytest.fixture
def fake_run(tmp_path):
    """Held-out images and labels, a perfect method and one that predicts nothing, both with
    nnU-Net's .npz probabilities, and nnU-Net training curves."""
    images, labels = write_heldout_images(tmp_path / "heldout", num_cases=6, size=32, empty_fraction=0.2)
    cases = sorted(p.name[:-4] for p in labels.glob("*.png"))
    sources = {c: {"source": c.split("_")[-1]} for c in cases}
    (tmp_path / "sources.json").write_text(json.dumps(sources))
    good, empty = tmp_path / "pred" / "good", tmp_path / "pred" / "empty"
    for c in cases:
        gt = np.asarray(Image.open(labels / f"{c}.png"))
        soft = np.where(gt > 0, 0.9, 0.05)
        _save_prediction(good, c, gt, soft)
        _save_prediction(empty, c, np.zeros_like(gt), np.full(gt.shape, 0.02))
    curves = tmp_path / "fold_0"
    curves.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(curves / "progress.png")
    return images, labels, {"Good": good, "Empty": empty}, curves, cases, tmp_path / "sources.json"


def test_report_holds_both_methods_figures_and_curves(tmp_path, fake_run):
    images, labels, preds, curves, cases, sources = fake_run
    report_dir = tmp_path / "report"
    summary = demo_report.write_report(report_dir, preds, images, labels, sources=sources,
                                evaluation_dir=tmp_path / "evaluation", training_dirs={"Good": curves},
                                grid_cases=4, uncertainty_of="Good", exported="CFENet's softmax (pipeline `cfenet`)")
    assert summary["dice_all"]["Good"] == pytest.approx(100.0)
    assert summary["dice_all"]["Empty"] == pytest.approx(0.0)
    table = (report_dir / "metrics.md").read_text()
    assert "| Good |" in table and "| Empty |" in table and "grey mDice" in table
    for name in ("metrics.csv", "predictions.png", "README.md", "summary.json", "training_Good_progress.png"):
        assert (report_dir / name).is_file(), name
    for method in ("Good", "Empty"):
        assert (tmp_path / "evaluation" / method / "summary.json").is_file()
    grid = np.asarray(Image.open(report_dir / "predictions.png"))
    assert grid.ndim == 3 and grid.shape[1] > grid.shape[0] / 2
    assert len(summary["grid_cases"]) == 4
    assert {c.split("_")[-1] for c in summary["grid_cases"]} == {"grey", "endo", "us"}, "every modality shown"
    assert not np.asarray(Image.open(labels / f"{summary['grid_cases'][-1]}.png")).any(), "a lesion-free case"
    assert summary["by_lesion"]["Good"]["lesion_dice"] == pytest.approx(100.0)
    assert summary["by_lesion"]["Empty"]["false_lesions"] == 0
    unc = report_dir / summary["uncertainty_dir"]
    assert unc.resolve() == (preds["Good"] / "uncertainty").resolve(), "a path relative to the report"
    assert sorted(p.name for p in unc.glob("*_uncertainty.png")) == [f"{c}_uncertainty.png" for c in cases]
    readme = (report_dir / "README.md").read_text()
    assert "![predictions](predictions.png)" in readme and "training_Good_progress.png" in readme
    assert "Good: Dice 100.0 on the" in readme
    assert "entropy of Good's saved probabilities: CFENet's softmax (pipeline `cfenet`)" in readme
    assert "STAPLE" not in readme, "the caption names what was exported, not the paper's posterior"


def test_finish_report_adds_the_run_information(tmp_path, fake_run):
    images, labels, preds, curves, cases, sources = fake_run
    summary = demo_report.write_report(tmp_path / "report", preds, images, labels, sources=sources)
    summary["run"] = {"dataset": "Dataset598_UniSegDiffDemo", "num_cases": 48, "num_test": 6, "size": 32,
                      "trainers": {"Good": "A", "Empty": "B"}, "device": "cpu", "wall_seconds": 61.0,
                      "steps": [{"title": "Train", "seconds": 3.0, "command": "/x/nnUNetv2_train 598 2d 0",
                                 "log": ""}]}
    demo_report.finish_report(tmp_path / "report", summary)
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "1 min 1 s" in readme and "`nnUNetv2_train 598 2d 0`" in readme
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["run"]["wall_seconds"] == 61.0


def test_grid_shows_every_task_in_turn_and_one_lesion_free_case_last():
    tasks = {"a1": "A", "a2": "A", "b1": "B", "b2": "B", "c1": "C"}
    non_empty = {"a1": False, "a2": True, "b1": True, "b2": True, "c1": True}
    assert demo_report.pick_grid_cases(list(tasks), tasks, non_empty, 4) == ["a2", "b1", "c1", "a1"]
    assert demo_report.pick_grid_cases(list(tasks), tasks, non_empty, 10) == ["a2", "b1", "c1", "b2", "a1"]
    assert demo_report.pick_grid_cases(list(tasks), tasks, non_empty, 1) == ["a2"]
    two_empty = {**non_empty, "b2": False}
    assert demo_report.pick_grid_cases(list(tasks), tasks, two_empty, 4) == ["a2", "b1", "c1", "a1"]
    assert demo_report.pick_grid_cases(list(tasks), tasks, two_empty, 4, {"b2"}) == ["a2", "b1", "c1", "b2"], \
        "the lesion-free case a method got wrong is the one shown"
    all_lesions = dict.fromkeys(tasks, True)
    assert demo_report.pick_grid_cases(list(tasks), tasks, all_lesions, 3) == ["a1", "b1", "c1"]
