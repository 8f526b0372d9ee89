"""Choosing the inference pipeline on validation cases: the planted winner wins, near-ties go to CFENet,
a false lesion on a lesion-free image costs that case its whole score."""
import json

import numpy as np
import pytest

from nnunet_unisegdiff.training.selection import case_dice, choose_pipeline, score_pipelines


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
    assert choose_pipeline(table, margin=0.5) == expected


def test_cfenet_kept_when_it_is_best():
    assert choose_pipeline({"cfenet": {"dice": 90.0}, "rs": {"dice": 89.9}}, margin=0.0) == "cfenet"


def test_user_override_rewrites_the_recorded_pipeline(tmp_path, plan_2d, capsys):
    import torch

    from nnunet_unisegdiff.cli import main
    from nnunet_unisegdiff.model.network import UniSegDiffSettings, build_unisegdiff_network
    from nnunet_unisegdiff.training.selection import write_record

    net = build_unisegdiff_network(*plan_2d, 3, 2, False, UniSegDiffSettings(dnet_width=0.25, token_budget=64))
    fold = tmp_path / "nnUNetTrainerUniSegDiff__nnUNetPlans__2d" / "fold_0"
    fold.mkdir(parents=True)
    torch.save({"network_weights": net.state_dict(), "inference_allowed_mirroring_axes": None,
                "unisegdiff": {"plan_mirroring_axes": (0, 1), "dnet_mirroring": False}}, fold / "checkpoint_final.pth")
    write_record(fold, "diffusion", {"cfenet": {"dice": 80.0, "dice_lesion": 85.0, "false_lesions": 1,
                                                "lesion_free": 2, "cases": 5}}, "test rule")
    assert main(["pipeline", str(fold.parent), "--set", "cfenet"]) == 0
    saved = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert saved["network_weights"]["_extra_state"]["settings"]["pipeline"] == "cfenet"
    assert saved["inference_allowed_mirroring_axes"] == (0, 1)  # CFENet alone mirrors as nnU-Net does
    rebuilt = build_unisegdiff_network(*plan_2d, 3, 2, False, UniSegDiffSettings(dnet_width=0.25, token_budget=64))
    rebuilt.load_state_dict(saved["network_weights"])
    assert rebuilt.settings.pipeline == "cfenet"
    assert json.loads((fold / "inference_pipeline.json").read_text())["overridden"]["was"] == "diffusion"
    assert main(["pipeline", str(fold.parent)]) == 0
    assert "predicts with: cfenet" in capsys.readouterr().out
    assert main(["pipeline", str(fold.parent), "-f", "3"]) == 1  # a missing fold is named, not a traceback


def test_mirroring_follows_the_pipeline():
    from nnunet_unisegdiff.training.selection import mirroring_axes
    assert mirroring_axes("cfenet", [0, 1], dnet_mirroring=False) == (0, 1)
    assert mirroring_axes("diffusion", [0, 1], dnet_mirroring=False) is None
    assert mirroring_axes("diffusion", [0, 1], dnet_mirroring=True) == (0, 1)
    assert mirroring_axes("cfenet", None, dnet_mirroring=True) is None  # a plan without mirroring
