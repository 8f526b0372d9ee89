"""Imported first by every experiment: puts benchmarks/ on the module path, so that `_common` and the
benchmark scripts an experiment builds on (`accuracy`, `accuracy_real`, `draw_agreement`) import as
they do beside them."""
import sys
from pathlib import Path

BENCHMARKS = str(Path(__file__).resolve().parents[1])
if BENCHMARKS not in sys.path:
    sys.path.insert(1, BENCHMARKS)  # after the experiments' own folder
