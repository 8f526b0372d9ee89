"""Every script in benchmarks/ and benchmarks/experiments/ still runs: each with --smoke (tiny sizes) in a
subprocess, writing its JSON where the test says. Found by listing the folders, so a new benchmark is covered
automatically."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for folder in ("benchmarks", "benchmarks/experiments") for p in (ROOT / folder).glob("*.py")
                 if not p.name.startswith("_"))


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_runs_in_smoke_mode(script, tmp_path):
    out = tmp_path / f"{script.stem}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, str(script), "--smoke", "--json", str(out)], cwd=script.parent, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(out.read_text())["results"], f"{script.name} wrote no results"
