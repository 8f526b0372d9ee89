"""dataset_conversion/: one runnable DatasetNNN_Name.py script per converter, each the same as
`unisegdiff convert NAME`."""
import json
import re
import subprocess
import sys
from pathlib import Path

from nnunet_unisegdiff.conversion.registry import CONVERTER_MODULES, get_spec

SCRIPTS = Path(__file__).resolve().parents[2] / "dataset_conversion"


def test_one_script_per_converter_named_by_its_default_dataset():
    found = {}
    for script in SCRIPTS.glob("Dataset*.py"):
        name = re.search(r'run_script\("(\w+)"\)', script.read_text()).group(1)
        found[name] = script.stem
    assert set(found) == set(CONVERTER_MODULES)
    for name, stem in found.items():
        spec = get_spec(name)
        assert stem.startswith(f"Dataset{spec.dataset_id:03d}_"), (name, stem)
        if not callable(spec.dataset_name):
            assert stem == f"Dataset{spec.dataset_id:03d}_{spec.dataset_name}"


def test_synthetic_script_writes_the_dataset_like_the_command(tmp_path):
    subprocess.run([sys.executable, str(SCRIPTS / "Dataset599_Synthetic.py"), "--num-cases", "10", "--num-test", "2",
                    "--size", "32", "-o", str(tmp_path), "-q"], check=True, capture_output=True, text=True)
    dataset = json.loads((tmp_path / "Dataset599_Synthetic" / "dataset.json").read_text())
    assert dataset["numTraining"] == 10 and len(list((tmp_path / "Dataset599_Synthetic" / "imagesTs").iterdir())) == 2
