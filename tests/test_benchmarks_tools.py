"""Tools in benchmarks/: combine.py (runs made one split at a time combine into the mean of all; runs that
do not average are refused by name) and draw_agreement.py's tempered probabilities."""
import json
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def combine(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import combine
    return combine


@pytest.fixture
def draw_agreement(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import draw_agreement
    return draw_agreement


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


def test_tempered_probabilities_keep_the_segmentation_and_follow_the_draws(draw_agreement):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(8, 8)).transpose(2, 0, 1)  # (C, H, W)
    agree = np.repeat(probs.argmax(0)[None], 10, axis=0)  # every draw is the prediction
    np.testing.assert_allclose(draw_agreement.tempered(probs, agree), probs)
    split = rng.integers(0, 3, size=(10, 8, 8))  # draws that disagree
    out = draw_agreement.tempered(probs, split)
    assert (out.argmax(0) == probs.argmax(0)).all()
    np.testing.assert_allclose(out.sum(0), 1.0)
    even = np.stack([np.full((8, 8), k % 2) for k in range(10)])  # two classes, five draws each
    cap = draw_agreement.TEMPER_CAP * (1 - 0.5) / (1 - 1 / 3)
    np.testing.assert_allclose(draw_agreement.tempered(probs, even), (1 - cap) * probs + cap / 3)
