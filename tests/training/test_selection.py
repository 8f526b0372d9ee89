"""Choosing the inference pipeline on validation cases: the planted winner wins, near-ties go to CFENet,
a false lesion on a lesion-free image costs that case its whole score, a gain made by one or two cases
does not choose a DNet pipeline."""
import json

import numpy as np
import pytest

from nnunet_unisegdiff.training.selection import (
    case_dice,
    choose_pipeline,
    paired_gain_lower_bound,
    pool_tables,
    score_pipelines,
)


def _cases(n: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        ref = np.zeros((16, 16), dtype=np.int16)
        if i % 4:  # every fourth image lesion-free
            y, x = rng.integers(2, 10, 2)
            ref[y:y + 5, x:x + 5] = 1
        cases.append((f"case{i}", rng.normal(size=(3, 16, 16)), ref))
    return cases


def test_case_dice_counts_empty_agreement_as_right_and_false_lesions_as_wrong():
    empty = np.zeros((4, 4), int)
    blob = empty.copy()
    blob[1:3, 1:3] = 1
    assert case_dice(empty, empty, [1]) == 1.0
    assert case_dice(blob, empty, [1]) == 0.0
    assert case_dice(blob, blob, [1]) == 1.0
    ignored = np.where(blob == 1, -1, 0)  # outside nnU-Net's crop: not counted
    assert case_dice(blob, ignored, [1]) == 1.0


def test_selection_picks_the_planted_winner():
    cases = _cases()
    refs = {k: ref for k, _, ref in cases}
    key_of = {id(d): k for k, d, _ in cases}
    rng = np.random.default_rng(1)

    def predict(pipeline, data):
        ref = refs[key_of[id(data)]]
        if pipeline == "rs":  # the planted winner: exact
            return ref.copy()
        noisy = ref.copy()
        noisy[rng.random(ref.shape) < (0.05 if pipeline == "cfenet" else 0.15)] = 1
        return noisy

    table = score_pipelines(predict, cases, ["cfenet", "rs", "diffusion"], [1])
    assert table["rs"]["dice"] == 100.0 and table["rs"]["false_lesions"] == 0
    assert table["cfenet"]["lesion_free"] == 2 and table["cfenet"]["cases"] == 8
    assert table["diffusion"]["dice"] < table["cfenet"]["dice"] < 100.0
    assert choose_pipeline(table, margin=0.5) == "rs"
    assert list(table["rs"]["per_case"]) == [k for k, _, _ in cases]  # each case's Dice kept, in order
    assert np.mean(list(table["cfenet"]["per_case"].values())) == pytest.approx(table["cfenet"]["dice"])


@pytest.mark.parametrize("gain, expected", [(0.4, "cfenet"), (0.6, "diffusion")])
def test_a_dnet_pipeline_must_beat_cfenet_by_the_margin(gain, expected):
    table = {"cfenet": {"dice": 80.0}, "rs": {"dice": 70.0}, "diffusion": {"dice": 80.0 + gain}}
    assert choose_pipeline(table, margin=0.5, confidence=None) == expected


def test_cfenet_kept_when_it_is_best():
    table = {"cfenet": {"dice": 90.0}, "rs": {"dice": 89.9}}
    assert choose_pipeline(table, margin=0.0, confidence=None) == "cfenet"


def _table(gains: dict[str, list[float]], base: float = 60.0) -> dict:
    """A validation table whose candidates differ from cfenet by the given per-case gains."""
    n = len(next(iter(gains.values())))
    per_case = {"cfenet": {f"c{i}": base for i in range(n)}}
    per_case.update({name: {f"c{i}": base + g for i, g in enumerate(gain)} for name, gain in gains.items()})
    return {name: {"dice": float(np.mean(list(pc.values()))), "per_case": pc} for name, pc in per_case.items()}


def test_a_gain_made_by_a_few_cases_does_not_choose_a_dnet_pipeline():
    # two lesion-free images of 32 turn from a false lesion (0) into right (100): +6.25 points on the mean,
    # the rest a tie; the mean rule takes it, the paired bootstrap does not
    few = _table({"diffusion+cfenet": [100.0, 100.0] + [0.0] * 30})
    assert few["diffusion+cfenet"]["dice"] - few["cfenet"]["dice"] == pytest.approx(6.25)
    assert choose_pipeline(few, margin=0.5, confidence=None) == "diffusion+cfenet"
    assert choose_pipeline(few) == "cfenet"
    # a smaller gain on nearly every case holds under resampling
    broad = _table({"diffusion+cfenet": [2.0] * 30 + [-1.0] * 2})
    assert choose_pipeline(broad) == "diffusion+cfenet"


def test_the_bootstrap_level_is_corrected_for_the_number_of_candidates():
    gain = [3.0] * 15 + [-4.0] * 5  # clears 0 at 95 %, not at 1 - 0.05 / 4
    assert paired_gain_lower_bound(np.array(gain), 0.95) > 0 > paired_gain_lower_bound(np.array(gain), 1 - 0.05 / 4)
    assert choose_pipeline(_table({"diffusion": gain}), margin=0.5) == "diffusion"
    worse = [-1.0] * 20
    assert choose_pipeline(_table({"diffusion": gain, "rs": worse, "paper": worse, "diffusion+cfenet": worse}),
                           margin=0.5) == "cfenet"


def test_the_bootstrap_is_deterministic_and_needs_per_case_scores():
    gain = np.random.default_rng(0).normal(1.0, 5.0, 40)
    assert paired_gain_lower_bound(gain, 0.95) == paired_gain_lower_bound(gain, 0.95)
    assert paired_gain_lower_bound(gain, 0.99) < paired_gain_lower_bound(gain, 0.95) < gain.mean()
    with pytest.raises(ValueError, match="no per-case Dice"):
        choose_pipeline({"cfenet": {"dice": 50.0}, "rs": {"dice": 60.0}})


@pytest.mark.parametrize("cases, chunk", [(40, 1 << 20), (33, 100), (7, 1)])
def test_the_vectorised_bootstrap_draws_what_one_resample_at_a_time_drew(cases, chunk, monkeypatch):
    """Blocks of resamples take the seeded generator's stream as the former loop did: same bound, same choice."""
    from nnunet_unisegdiff.training import selection

    monkeypatch.setattr(selection, "BOOTSTRAP_CHUNK", chunk)  # also blocks of 3 and 1 resamples
    gain = np.random.default_rng(cases).normal(1.0, 5.0, cases)
    rng = np.random.default_rng(0)
    means = [gain[rng.integers(0, cases, cases)].mean() for _ in range(1000)]
    assert paired_gain_lower_bound(gain, 0.95, resamples=1000) == float(np.quantile(means, 1.0 - 0.95))


def test_user_override_rewrites_the_recorded_pipeline(tmp_path, plan_2d, capsys):
    import torch

    from nnunet_unisegdiff.cli import main
    from nnunet_unisegdiff.model.network import UniSegDiffSettings, build_unisegdiff_network
    from nnunet_unisegdiff.training.override import recorded_settings

    fold = _fold_with_record(tmp_path / "nnUNetTrainerUniSegDiff__nnUNetPlans__2d", 0, plan_2d,
                             {"cfenet": {"dice": 80.0, "dice_lesion": 85.0, "false_lesions": 1, "lesion_free": 2,
                                         "cases": 5}}, "diffusion")
    assert main(["pipeline", str(fold.parent), "--set", "cfenet"]) == 0
    saved = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert saved["network_weights"]["_extra_state"]["settings"]["pipeline"] == "cfenet"
    assert saved["inference_allowed_mirroring_axes"] == (0, 1)  # CFENet alone mirrors as nnU-Net does
    rebuilt = build_unisegdiff_network(*plan_2d, 3, 2, False, UniSegDiffSettings(dnet_width=0.25, token_budget=64))
    rebuilt.load_state_dict(saved["network_weights"])
    assert rebuilt.settings.pipeline == "cfenet"
    assert recorded_settings(fold / "checkpoint_final.pth") == rebuilt.settings  # what the demo's report reads
    assert json.loads((fold / "inference_pipeline.json").read_text())["overridden"]["was"] == "diffusion"
    assert main(["pipeline", str(fold.parent)]) == 0
    assert "predicts with: cfenet" in capsys.readouterr().out
    assert main(["pipeline", str(fold.parent), "-f", "3"]) == 1  # a missing fold is named, not a traceback


def test_user_turns_tempering_on_and_off_also_for_an_older_record(tmp_path, plan_2d, capsys):
    import torch

    from nnunet_unisegdiff.cli import main
    from nnunet_unisegdiff.model.settings import SETTINGS_FORMAT

    fold = _fold_with_record(tmp_path / "nnUNetTrainerUniSegDiff__nnUNetPlans__2d", 0, plan_2d,
                             {"cfenet": {"dice": 80.0, "dice_lesion": 85.0, "false_lesions": 1, "lesion_free": 2,
                                         "cases": 5}}, "cfenet")
    checkpoint = fold / "checkpoint_final.pth"
    saved = torch.load(checkpoint, weights_only=False)
    record = saved["network_weights"]["_extra_state"]["settings"]
    del record["temper_with_draws"]  # as a version before tempering wrote it: format 2
    saved["network_weights"]["_extra_state"] = {"format": 2, "settings": record}
    torch.save(saved, checkpoint)
    assert main(["pipeline", str(fold.parent)]) == 0
    assert "predicts with: cfenet, probabilities untempered (--temper off)" in capsys.readouterr().out
    assert main(["pipeline", str(fold.parent), "--temper", "on"]) == 0
    assert "--temper off -> on" in capsys.readouterr().out
    state = torch.load(checkpoint, weights_only=False)["network_weights"]["_extra_state"]
    assert state["format"] == SETTINGS_FORMAT and state["settings"] == {**record, "temper_with_draws": "on"}
    assert main(["pipeline", str(fold.parent)]) == 0
    assert "predicts with: cfenet, probabilities tempered by the draws (--temper on)" in capsys.readouterr().out
    assert main(["pipeline", str(fold.parent), "--temper", "free"]) == 0  # cfenet samples no draws: untempered
    assert main(["pipeline", str(fold.parent)]) == 0
    assert "predicts with: cfenet, probabilities untempered (--temper free)" in capsys.readouterr().out
    assert main(["pipeline", str(fold.parent), "--set", "diffusion"]) == 0
    assert main(["pipeline", str(fold.parent)]) == 0
    assert "predicts with: diffusion, probabilities tempered by the draws (--temper free)" in capsys.readouterr().out
    assert main(["pipeline", str(fold.parent), "-f", "3", "--temper", "on"]) == 1
    capsys.readouterr()
    saved = torch.load(checkpoint, weights_only=False)
    del saved["network_weights"]["_extra_state"]["settings"]["temper_with_draws"]  # format 3 without it: refused
    torch.save(saved, checkpoint)
    assert main(["pipeline", str(fold.parent)]) == 0
    assert "missing ['temper_with_draws']" in capsys.readouterr().out, "a refused record is named, not 'unrecorded'"


def test_mirroring_follows_the_pipeline():
    from nnunet_unisegdiff.training.selection import mirroring_axes
    assert mirroring_axes("cfenet", [0, 1], dnet_mirroring=False) == (0, 1)
    assert mirroring_axes("diffusion", [0, 1], dnet_mirroring=False) is None
    assert mirroring_axes("diffusion", [0, 1], dnet_mirroring=True) == (0, 1)
    assert mirroring_axes("cfenet", None, dnet_mirroring=True) is None  # a plan without mirroring
    assert mirroring_axes("auto", [0, 1], dnet_mirroring=False) is None  # not chosen yet: as a DNet pipeline


def test_pooled_table_is_the_table_of_all_cases():
    cases = _cases(12)
    rng = np.random.default_rng(2)

    def predict(pipeline, data):  # noisy, differently per pipeline
        return (rng.random(data.shape[1:]) < (0.2 if pipeline == "rs" else 0.1)).astype(np.int16)

    folds = [score_pipelines(predict, cases[i::3], ["cfenet", "rs"], [1]) for i in range(3)]
    pooled = pool_tables(folds)
    for name in ("cfenet", "rs"):
        cases_seen = {k: v for f in folds for k, v in f[name]["per_case"].items()}
        assert pooled[name]["per_case"] == cases_seen and pooled[name]["cases"] == 12
        assert pooled[name]["dice"] == pytest.approx(np.mean(list(cases_seen.values())))
        lesion_keys = [k for k, _, ref in cases if ref.any()]
        assert pooled[name]["dice_lesion"] == pytest.approx(np.mean([cases_seen[k] for k in lesion_keys]))
        assert pooled[name]["false_lesions"] == sum(f[name]["false_lesions"] for f in folds)
    with pytest.raises(ValueError, match="share validation cases"):
        pool_tables([folds[0], folds[0]])


def _fold_with_record(root, fold: int, plan_2d, table: dict, chosen: str):
    import torch

    from nnunet_unisegdiff.model.network import UniSegDiffSettings, build_unisegdiff_network
    from nnunet_unisegdiff.training.selection import write_record

    net = build_unisegdiff_network(*plan_2d, 3, 2, False, UniSegDiffSettings(dnet_width=0.25, token_budget=64,
                                                                             pipeline=chosen))
    folder = root / f"fold_{fold}"
    folder.mkdir(parents=True)
    meta = {"plan_mirroring_axes": (0, 1), "dnet_mirroring": False}
    torch.save({"network_weights": net.state_dict(), "inference_allowed_mirroring_axes": None, "unisegdiff": meta},
               folder / "checkpoint_final.pth")
    write_record(folder, chosen, table, margin=0.5, confidence=0.95)
    return folder


def test_pool_chooses_once_for_all_folds_and_sets_each(tmp_path, plan_2d, capsys):
    import torch

    from nnunet_unisegdiff.cli import main

    model = tmp_path / "nnUNetTrainerUniSegDiff__nnUNetPlans__2d"
    # fold 0 alone: two lesion-free images make diffusion's gain; over all folds' cases it does not hold
    gains = {0: [100.0, 100.0, 0.0, 0.0], 1: [0.0, -1.0, 0.0, 0.0], 2: [0.0, 0.0, -2.0, 0.0]}
    for fold, gain in gains.items():
        table = _table({"diffusion": gain})
        for row in table.values():
            row.update(dice_lesion=row["dice"], false_lesions=0, lesion_free=1, cases=4)
            row["per_case"] = {f"f{fold}_{k}": v for k, v in row["per_case"].items()}
        _fold_with_record(model, fold, plan_2d, table, "diffusion" if fold == 0 else "cfenet")
    assert main(["pipeline", str(model), "-f", "0", "1", "2", "--pool"]) == 0
    out = capsys.readouterr().out
    assert "folds 0 1 2 pooled: cfenet" in out
    pooled = json.loads((model / "inference_pipeline_pooled.json").read_text())
    assert pooled["chosen"] == "cfenet" and pooled["per_fold"] == {"0": "diffusion", "1": "cfenet", "2": "cfenet"}
    assert pooled["table"]["cfenet"]["cases"] == 12
    for fold in gains:
        saved = torch.load(model / f"fold_{fold}" / "checkpoint_final.pth", weights_only=False)
        assert saved["network_weights"]["_extra_state"]["settings"]["pipeline"] == "cfenet"
        assert saved["inference_allowed_mirroring_axes"] == (0, 1)
    record = json.loads((model / "fold_0" / "inference_pipeline.json").read_text())
    assert record["chosen"] == "diffusion" and record["pooled"]["was"] == "diffusion"  # the fold's own choice kept


def test_pool_sets_every_fold_before_printing(tmp_path, plan_2d, monkeypatch):
    """`unisegdiff pipeline ... --pool | head -3`: the pipe closes after three lines, and the folds are all set
    by then, never some of them."""
    import io

    import torch

    from nnunet_unisegdiff.cli import main

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    model = tmp_path / "model"
    for fold in (0, 1, 2):
        table = _table({"diffusion": [30.0, 30.0, 30.0, 30.0]})
        for row in table.values():
            row.update(dice_lesion=row["dice"], false_lesions=0, lesion_free=1, cases=4)
            row["per_case"] = {f"f{fold}_{k}": v for k, v in row["per_case"].items()}
        _fold_with_record(model, fold, plan_2d, table, "cfenet")
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    with pytest.raises(BrokenPipeError):
        main(["pipeline", str(model), "-f", "0", "1", "2", "--pool"])
    for fold in (0, 1, 2):
        saved = torch.load(model / f"fold_{fold}" / "checkpoint_final.pth", weights_only=False)
        assert saved["network_weights"]["_extra_state"]["settings"]["pipeline"] == "diffusion", fold


def test_pool_refuses_tables_without_per_case_scores(tmp_path, plan_2d, capsys):
    from nnunet_unisegdiff.cli import main

    model = tmp_path / "model"
    for fold in (0, 1):
        row = {"dice": 80.0, "dice_lesion": 85.0, "false_lesions": 1, "lesion_free": 2, "cases": 5}
        _fold_with_record(model, fold, plan_2d, {"cfenet": dict(row), "rs": dict(row)}, "cfenet")
    assert main(["pipeline", str(model), "-f", "0", "1", "--pool"]) == 1
    assert "no per-case Dice" in capsys.readouterr().err
    assert not (model / "inference_pipeline_pooled.json").exists()
    assert main(["pipeline", str(model), "-f", "0", "4", "--pool"]) == 1
    assert "fold_4" in capsys.readouterr().err


def test_pipelines_are_scored_untempered_and_the_settings_restored(plan_2d):
    """Tempering keeps every call's argmax, so the choice is scored on untempered segmentations (cfenet
    without the draws' cost); afterwards the network predicts with its own settings again."""
    import torch

    from nnunet_unisegdiff.model.network import UniSegDiffSettings, build_unisegdiff_network
    from nnunet_unisegdiff.training.selection import label_map_predictor

    settings = UniSegDiffSettings(dnet_width=0.25, token_budget=64, pipeline="diffusion", temper_with_draws="free")
    net = build_unisegdiff_network(*plan_2d, 3, 2, False, settings)
    seen = []

    class Predictor:
        def predict_sliding_window_return_logits(self, data):
            seen.append(net.settings)
            return torch.zeros(2, *data.shape[1:])

    predict = label_map_predictor(Predictor(), net)
    for pipeline in ("cfenet", "cfenet-gated"):
        assert predict(pipeline, np.zeros((3, 8, 8), dtype=np.float32)).shape == (8, 8)
    assert [(s.pipeline, s.temper_with_draws) for s in seen] == [("cfenet", "off"), ("cfenet-gated", "off")]
    assert net.settings == settings and settings.temper_with_draws == "free"
