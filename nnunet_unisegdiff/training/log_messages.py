"""Lines the trainer writes to nnU-Net's training log that tools parse (the demo's progress), declared
once here so that a rename reaches the parser."""
from __future__ import annotations

import re

PHASE_B_START = "Phase B from epoch {epoch}: CFENet frozen, training DNet ({mode} objective)"
PHASE_B_START_RE = re.compile(re.escape(PHASE_B_START).replace(r"\{epoch\}", r"(?P<epoch>\d+)")
                              .replace(r"\{mode\}", r"(?P<mode>[\w-]+)"))
