"""benchmarks/combine.py: runs made one split at a time combine into the mean of all, and runs that do not
average (other settings, the same split twice) are refused by name."""
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def combine(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import combine
    return combine


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
