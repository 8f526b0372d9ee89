"""Tools in benchmarks/: combine.py (runs made one split at a time combine into the mean of all; runs that
do not average are refused by name), draw_agreement.py's mirrored copies and its tried tempering rule; and in
benchmarks/experiments/: choice_rules.py (each rule's choice on a recorded validation table, scored by that
pipeline's held-out row), shifted_copy.py (a corrupted copy of held-out images, labels unchanged) and
tiling.py (nnU-Net's tiles over a stitched image)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
EXPERIMENTS = BENCHMARKS / "experiments"


@pytest.fixture
def combine(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import combine
    return combine


@pytest.fixture
def draw_agreement(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.syspath_prepend(str(EXPERIMENTS))  # tiling.py builds on draw_agreement.py
    import draw_agreement
    return draw_agreement


@pytest.fixture
def choice_rules(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # _common (experiments/_path.py adds it once per process)
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    import choice_rules
    return choice_rules


def test_each_rule_is_scored_by_the_held_out_row_of_its_choice(choice_rules, tmp_path):
    runs = choice_rules.write_smoke_runs(tmp_path)
    results = choice_rules.compare(runs, allow_rescore=False, device=None)
    chosen = {(r["run"], r["rule"]): (r["chosen"], r["dice_all"]) for r in results["per_run"]}
    mean_rule, paired_rule = list(choice_rules.RULES)[1:]
    assert chosen[("busi split 0", "cfenet always")] == ("cfenet", 60.0)
    assert chosen[("busi split 0", mean_rule)] == ("diffusion", 61.0)  # one case's +100 is a +5 mean
    assert chosen[("busi split 0", paired_rule)] == ("cfenet", 60.0)
    assert chosen[("busi split 1", paired_rule)] == ("diffusion", 61.0)  # +3 on 18 of 20 cases holds
    summary = {r["rule"]: r for r in results["summary"]}
    assert summary[paired_rule]["dice_all"] == pytest.approx(60.5)
    assert summary[paired_rule]["chosen"] == "cfenet diffusion"


def test_a_table_without_per_case_scores_is_not_guessed(choice_rules, tmp_path):
    result, fold = choice_rules.write_smoke_runs(tmp_path)[0]
    record = json.loads((fold / "inference_pipeline.json").read_text())
    for row in record["table"].values():
        del row["per_case"]
    (fold / "inference_pipeline.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit, match="--rescore"):
        choice_rules.compare([(result, fold)], allow_rescore=False, device=None)


def test_current_candidates_score_the_fold_again_with_every_pipeline_once(choice_rules, tmp_path, monkeypatch):
    """A fold trained before a candidate existed: its table comes from scoring every current pipeline
    (cached beside the record), and the rule may then choose the new candidate."""
    result, fold = choice_rules.write_smoke_runs(tmp_path)[0]
    rows = json.loads(result.read_text())
    rows["results"]["per_split"]["0"]["20"]["rows"]["pipeline: cfenet-gated"] = {
        "dice_all": 63.0, "dice_lesion": 65.0, "false_lesions": 1.0}
    result.write_text(json.dumps(rows))
    calls = []

    def rescore(fold_folder, device, candidates=None):
        calls.append(candidates)
        base = {f"c{i}": 70.0 for i in range(20)}
        gated = {k: v + (2.0 if i < 10 else 0.0) for i, (k, v) in enumerate(base.items())}
        return {name: {"dice": float(np.mean(list(pc.values()))), "per_case": pc}
                for name, pc in (("cfenet", base), ("cfenet-gated", gated))}

    monkeypatch.setattr(choice_rules, "rescore", rescore)
    for _ in range(2):
        results = choice_rules.compare([(result, fold)], allow_rescore=False, device=None, current=True)
    assert calls == [list(choice_rules.PIPELINES)]  # scored once, then read from the cache
    paired = next(r for r in results["per_run"] if r["rule"] == list(choice_rules.RULES)[2])
    assert (paired["chosen"], paired["dice_all"]) == ("cfenet-gated", 63.0)
    assert "cfenet-gated" in json.loads((fold / choice_rules.RESCORED_CURRENT).read_text())


def test_mean_over_the_splits_of_separate_runs(combine, tmp_path):
    paths = combine.write_smoke_runs(tmp_path / "runs")
    results = combine.combine(paths, tmp_path / "out.json")
    cfenet = next(r for r in results["tables"]["20"] if r["row"] == "pipeline: cfenet")
    assert cfenet["dice_all"] == pytest.approx(65.0) and cfenet["dice_lesion"] == pytest.approx(70.0)
    assert cfenet["dice_all_sd"] == pytest.approx(7.0711, abs=1e-3)
    assert results["chosen_pipeline"]["20"] == {"0": "cfenet", "1": "cfenet"}
    written = json.loads((tmp_path / "out.json").read_text())
    assert set(written["results"]["per_split"]) == {"0", "1"}
    assert written["meta"]["combined_from"] == [str(p) for p in paths]
    assert "pipeline: diffusion" in (tmp_path / "out.md").read_text()


def test_runs_with_other_settings_or_the_same_split_are_refused(combine, tmp_path):
    first, second = combine.write_smoke_runs(tmp_path / "runs")
    with pytest.raises(combine.CombineError, match="split 0 is already in an earlier file"):
        combine.combine([first, first], tmp_path / "out.json")
    data = json.loads(second.read_text())
    data["meta"]["settings"]["size"] = "128"
    second.write_text(json.dumps(data))
    with pytest.raises(combine.CombineError, match="settings differ .*size '128' vs '64'"):
        combine.combine([first, second], tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


@pytest.fixture
def shifted_copy(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # _common (experiments/_path.py adds it once per process)
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    import shifted_copy
    return shifted_copy


def test_corruptions_do_what_they_are_named_for(shifted_copy):
    rng = np.random.default_rng(0)
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:24, 8:24] = 200
    image[:, :, 1] = 100
    noisy = shifted_copy.corrupt(image, "noise", 0.2, rng)
    blurred = shifted_copy.corrupt(image, "blur", 2.0, rng)
    flat = shifted_copy.corrupt(image, "contrast", 0.3, rng)
    assert noisy.dtype == blurred.dtype == flat.dtype == np.uint8 and noisy.shape == image.shape
    assert (noisy.astype(int) - image).std() > 20
    edge = np.abs(np.diff(image[..., 0].astype(int), axis=1)).max()
    assert np.abs(np.diff(blurred[..., 0].astype(int), axis=1)).max() < edge / 2  # sharp edge smoothed
    assert (blurred[..., 1] == 100).all()  # a flat channel stays flat: channels are not mixed
    assert flat[..., 0].std() == pytest.approx(0.3 * image[..., 0].std(), rel=0.05)
    with pytest.raises(ValueError, match="unknown corruption"):
        shifted_copy.corrupt(image, "rain", 1.0, rng)


def test_shifted_copy_keeps_labels_and_is_seeded(shifted_copy, tmp_path):
    raw = shifted_copy.write_smoke_raw(tmp_path / "raw")
    first = shifted_copy.write_shifted_copy(raw, tmp_path / "a", seed=3)
    again = shifted_copy.write_shifted_copy(raw, tmp_path / "b", seed=3)
    assert first == again and [r["kind"] for r in first.values()] == ["noise", "blur", "contrast"] * 2
    for case in first:
        name = f"{case}_0000.png"
        assert (tmp_path / "a" / "imagesTs" / name).read_bytes() == (tmp_path / "b" / "imagesTs" / name).read_bytes()
        assert (tmp_path / "a" / "imagesTs" / name).read_bytes() != (raw / "imagesTs" / name).read_bytes()
        assert (tmp_path / "a" / "labelsTs" / f"{case}.png").read_bytes() == \
            (raw / "labelsTs" / f"{case}.png").read_bytes()
    assert json.loads((tmp_path / "a" / "corruptions.json").read_text())["cases"] == first
    with pytest.raises(FileExistsError, match="exists"):
        shifted_copy.write_shifted_copy(raw, tmp_path / "a")
    next((raw / "labelsTs").glob("*.png")).unlink()
    with pytest.raises(FileNotFoundError, match="label of"):
        shifted_copy.write_shifted_copy(raw, tmp_path / "c")
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".c.*"))  # nothing half-written


def test_tempering_against_the_export_differs_only_where_the_draws_outvote_it(draw_agreement):
    from nnunet_unisegdiff.diffusion.fusion import TEMPER_CAP, temper_by_draws

    fg = torch.tensor([0.9, 0.9, 0.9, 0.2])  # exported: lesion, lesion, lesion, background
    probs = torch.stack([1 - fg, fg])[None, :, None, :]  # (1, 2, 1, 4)
    draws = torch.tensor([[1, 0, 1, 1]] * 4 + [[1, 0, 0, 1]] * 4)[None, :, None, :]  # (1, 8, 1, 4) votes 1, 0, 1/2, 1
    old, new = temper_by_draws(probs, draws), draw_agreement.temper_against_export(probs, draws)
    assert torch.allclose(old[..., [0, 2]], new[..., [0, 2]])  # the export has the draws' plurality: same rule
    assert torch.allclose(old[..., 0], probs[..., 0])  # unanimous and with the export: untouched
    assert torch.allclose(new[0, 1, 0, 2], torch.tensor(0.5 + 0.4 * (1 - TEMPER_CAP)))  # an even split: the cap
    capped = probs * (1 - TEMPER_CAP) + TEMPER_CAP / 2
    for pixel in (1, 3):  # every draw against the export: crisp before, shrunk by the cap now
        assert torch.allclose(old[..., pixel], probs[..., pixel])
        assert torch.allclose(new[..., pixel], capped[..., pixel])
    assert torch.equal(new.argmax(1), probs.argmax(1))  # the segmentation is kept


def test_test_time_mirroring_copies_are_flipped_back(draw_agreement):
    from nnunet_unisegdiff.model.pipelines import pipeline_probabilities

    predictor, cases = draw_agreement.smoke_cases(torch.device("cpu"))
    net, (_, x, _) = predictor.network, cases[0]
    segs = draw_agreement.mirrored_segmentations(net, x)
    assert len(segs) == 4 and all(s.shape == x.shape[2:] for s in segs)
    plain = pipeline_probabilities(net, x, ["cfenet"])["cfenet"][0].argmax(0).numpy()
    assert np.array_equal(segs[0], plain)
    # the copy mirrored along both axes is CFENet's view of the doubly flipped image, flipped back
    both = pipeline_probabilities(net, torch.flip(x, [2, 3]), ["cfenet"])["cfenet"][0].argmax(0).numpy()
    assert np.array_equal(segs[3], both[::-1, ::-1])


def test_tiling_covers_a_two_patch_image_with_three_tiles_and_predicts_as_the_network(draw_agreement):
    import tiling  # in experiments/, on the path the fixture added

    from nnunet_unisegdiff.model.pipelines import pipeline_probabilities

    predictor, cases = draw_agreement.smoke_cases(torch.device("cpu"))
    cover = tiling.tile_cover(predictor, (32, 64))  # patch 32x32, nnU-Net's step 0.5: tiles at 0, 16, 32
    assert np.array_equal(cover, np.broadcast_to(np.repeat([1, 2, 1], [16, 32, 16]), (32, 64)))
    _, x, _ = cases[0]  # one tile: the sliding window is one network call, Gaussian weights cancel
    net = predictor.network
    expected = pipeline_probabilities(net, x, [net.settings.pipeline])[net.settings.pipeline][0].argmax(0)
    assert np.array_equal(tiling.pair_segmentations(predictor, x), expected.numpy())


def test_out_of_fold_recipes_are_trainer_classes_with_their_conditions(monkeypatch, tmp_path):
    """out_of_fold.py's recipes: one trainer class each, appended once to the benchmark's trainer module, with
    the phase-B attributes the recipe names."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import argparse

    import accuracy
    import out_of_fold

    from nnunet_unisegdiff.training.augmentation import SegmentationAugmentation
    args = argparse.Namespace(epochs_cfenet=1, dnet_epochs=[2], iterations=2, val_iterations=1, width=0.25, lr=3e-3,
                              token_budget=64, threads=1, device="cpu", noise=0.5, morphology=True,
                              work_dir=tmp_path)
    module = accuracy.write_trainers(tmp_path / "trainers", args)
    names = out_of_fold.recipe_trainers(args)
    assert out_of_fold.recipe_trainers(args) == names and module.read_text().count(f"class {names['in-sample']}(") == 1
    assert set(names) == {f"{r}{m}" for r in ("in-sample", "out-of-fold") for m in ("", " + noise", " + morphology")}
    spec = {}
    exec(compile(module.read_text(), str(module), "exec"), spec)
    for recipe, name in names.items():
        trainer = spec[name]
        assert trainer.out_of_fold_conditions == recipe.startswith("out-of-fold"), recipe
        assert trainer.condition_noise == (0.5 if recipe.endswith("noise") else 0.0), recipe
        expected = SegmentationAugmentation() if recipe.endswith("morphology") else None
        assert trainer.condition_augmentation == expected, recipe
        assert trainer.num_epochs_dnet == 2


def test_unified_real_splits_each_task_as_accuracy_real_splits_it_alone(monkeypatch, tmp_path):
    """unified_real.py converts every download and merges them with `convert unified --resize`; a task's held-out
    draw from the merged dataset is the one accuracy_real.py draws from that task converted alone, so both
    benchmarks hold out the same images. The unified row trains on the union and holds out the union."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import argparse

    import accuracy_real
    import unified_real

    downloads = unified_real.write_smoke_downloads(tmp_path / "download")
    merged = accuracy_real.convert_downloads(downloads, 940, 32, tmp_path / "merged")
    alone = accuracy_real.convert_downloads({"busi": downloads["busi"]}, 960, 32, tmp_path / "alone")
    sources = json.loads((merged / "sources.json").read_text())
    assert {info["source"] for info in sources.values()} == {"BUSI", "Polyp"}
    assert accuracy_real.stratified_split(merged, "busi", 9, 3, 1000, task="BUSI") == \
        accuracy_real.stratified_split(alone, "busi", 9, 3, 1000)
    args = argparse.Namespace(downloads=downloads, num_train=8, num_test=3)
    cases, class_of, task_of = unified_real.split_cases(0, args, merged)
    assert set(cases) == {"busi", "polyp", unified_real.UNIFIED}
    for i in (0, 1):  # training, held-out
        assert set(cases[unified_real.UNIFIED][i]) == set(cases["busi"][i]) | set(cases["polyp"][i])
    assert not set(cases[unified_real.UNIFIED][0]) & set(cases[unified_real.UNIFIED][1])
    assert {task_of[c] for c in cases["polyp"][1]} == {"polyp"} and set(class_of) == set(sources)


def test_unified_real_downloads_are_named_and_results_name_no_machine_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import argparse

    import unified_real
    from _common import replace_paths
    ap = argparse.ArgumentParser()
    assert unified_real.parse_downloads(["polyp=/d/kvasir", "busi=/d/busi"], ap) == {
        "busi": Path("/d/busi").resolve(), "polyp": Path("/d/kvasir").resolve()}  # in the table's order
    for bad in (["busi"], ["covid=/d/c"], []):
        with pytest.raises(SystemExit):
            unified_real.parse_downloads(bad, ap)
    info = {"command": "unified_real.py busi=/w/data busi2=/w/data/busi --work /w", "paths": ["/w/data/busi/x"]}
    assert replace_paths(info, {"/w": "WORK", "/w/data": "DOWNLOAD", "/w/data/busi": "BUSI"}) == {
        "command": "unified_real.py busi=DOWNLOAD busi2=BUSI --work WORK", "paths": ["BUSI/x"]}


def test_the_synthetic_converter_of_the_real_data_benchmarks_is_accuracy_pys_hardened_generator(monkeypatch,
                                                                                               tmp_path):
    """`--converter synthetic` (no download): the generator's images hardened as accuracy.py hardens them, the
    held-out draw stratified by modality and lesion-free images."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import subprocess

    import accuracy_real
    from PIL import Image

    source = accuracy_real.convert_downloads({"synthetic": None}, 930, 64, tmp_path / "raw")
    subprocess.run([str(accuracy_real.BIN / "unisegdiff"), "convert", "synthetic", "-", "-d", "935", "-q", "-o",
                    str(tmp_path / "plain"), *accuracy_real.CONVERTERS["synthetic"].options], check=True)
    case = "SYN_0001_endo"
    plain_file = tmp_path / "plain" / "Dataset935_Synthetic" / "imagesTr" / f"{case}_0000.png"
    plain = np.asarray(Image.open(plain_file))
    accuracy_real.harden(plain_file.parents[1], *accuracy_real.HARDEN, seed=0)
    converted = np.asarray(Image.open(tmp_path / "raw" / "Dataset930_Synthetic" / "imagesTr" / f"{case}_0000.png"))
    assert converted.shape == (64, 64, 3) and not np.array_equal(converted, plain)
    assert np.array_equal(converted, np.asarray(Image.open(plain_file)))
    assert (source / "imagesTr" / f"Synthetic_{case}_0000.png").is_file()
    train, test, class_of = accuracy_real.stratified_split(source, "synthetic", 160, 120, 1000)
    assert abs(len(train) - 160) <= 3 and abs(len(test) - 120) <= 3 and not set(train) & set(test)  # per stratum
    assert {class_of[c] for c in test} == {"grey", "endo", "us"}
    empty = [c for c in test if not accuracy_real.has_lesion(source / "labelsTr" / f"{c}.png")]
    assert 0.1 < len(empty) / len(test) < 0.2


def test_a_dnet_per_dataset_keeps_the_unified_fold_0_of_its_cases(monkeypatch, tmp_path):
    """--dnet-per-dataset: the task's dataset splits fold 0 as the unified dataset does, so the unified CFENet
    trained on none of the validation cases its DNet's pipeline is chosen on."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import unified_real
    splits = tmp_path / "splits_final.json"
    splits.write_text(json.dumps([{"train": ["BUSI_a", "Polyp_b", "BUSI_c"], "val": ["Polyp_d", "BUSI_e"]},
                                  {"train": ["BUSI_e"], "val": ["BUSI_a"]}]))
    assert unified_real.fold0_restricted(splits, {"BUSI_a", "BUSI_c", "BUSI_e", "BUSI_x"}) == [
        {"train": ["BUSI_a", "BUSI_c"], "val": ["BUSI_e"]}]
