"""tests/site/sitecustomize.py: the processes the tests start sample a smaller intensity fingerprint, and
nothing else changes for them or for processes outside the tests."""
import os
import subprocess
import sys
from pathlib import Path

from nnunet_unisegdiff.conversion.synthetic import write_synthetic_dataset

SITE = Path(__file__).parent / "site"
PRINT_SAMPLE = ("from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import "
                "DatasetFingerprintExtractor as D; e = D(975, 1); print(e.num_foreground_voxels_for_intensitystats, "
                "len(e.dataset))")


def sample_in_child(tmp_path: Path, pythonpath: str) -> str:
    env = {**os.environ, "nnUNet_raw": str(tmp_path), "PYTHONPATH": pythonpath}
    proc = subprocess.run([sys.executable, "-c", PRINT_SAMPLE], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


def test_only_processes_started_by_the_tests_sample_the_smaller_fingerprint(tmp_path):
    write_synthetic_dataset(tmp_path, dataset_id=975, num_cases=3, num_test=0, size=16)
    assert str(SITE) in os.environ["PYTHONPATH"].split(os.pathsep)  # conftest's, inherited by every child
    assert sample_in_child(tmp_path, os.environ["PYTHONPATH"]) == ["100000", "3"]
    assert sample_in_child(tmp_path, "") == ["100000000.0", "3"]  # nnU-Net's own, outside the tests
