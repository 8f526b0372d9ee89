"""Progress inside the demo's long steps: a bar (or a line per update), fed by parsers of nnU-Net's
output (epochs, the phase switch the trainer logs, pseudo Dice, predicted cases)."""
from __future__ import annotations

import re
import sys

from nnunet_unisegdiff.training import variants
from nnunet_unisegdiff.training.log_messages import PHASE_B_START_RE

BASELINE_TRAINER = "nnUNetTrainerDemoBaseline"


class StepProgress:
    """Progress inside one long step: a tqdm bar on a terminal, a line per update otherwise."""

    def __init__(self, total: int, desc: str, unit: str, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.desc, self.n, self.info = total, desc, 0, ""
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=f"      {desc}", unit=unit, file=self.stream, leave=False,
                            bar_format="{desc}: {n}/{total} {unit} |{bar:20}| {elapsed} {postfix}")

    def update(self, n: int | None = None, info: str | None = None, desc: str | None = None) -> None:
        changed = False
        if n is not None and n != self.n:
            self.n, changed = min(n, self.total), True
        if info is not None and info != self.info:
            self.info, changed = info, True
        if desc is not None and desc != self.desc:
            self.desc, changed = desc, True
        if not changed:
            return
        if self.bar is not None:
            self.bar.set_description_str(f"      {self.desc}", refresh=False)
            self.bar.n = self.n
            self.bar.set_postfix_str(self.info, refresh=False)
            self.bar.refresh()
        elif n is not None:  # plain output: one line per step of the counter
            print(f"      {self.desc} {self.n}/{self.total} {self.info}".rstrip(), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TrainParser:
    """Follows nnUNetv2_train's log: epochs, phase switch, pseudo Dice, final validation."""

    def __init__(self, progress: StepProgress, num_epochs: int) -> None:
        self.progress, self.num_epochs = progress, num_epochs
        self.validating, self.validated = False, 0
        self.last_dice: str | None = None
        self.mean_validation_dice: float | None = None

    def __call__(self, line: str) -> None:
        if m := re.search(r": Epoch (\d+)\s*$", line):
            self.progress.update(n=int(m.group(1)))
        elif m := re.search(r"Pseudo dice \[(.*)\]", line):
            values = re.findall(r"[-+]?\d*\.\d+|\d+", m.group(1).replace("np.float32", ""))
            self.last_dice = ", ".join(f"{float(v):.2f}" for v in values)
            self.progress.update(info=f"pseudo Dice {self.last_dice}")
        elif PHASE_B_START_RE.search(line):
            self.progress.update(desc="epochs (phase B: DNet)")
        elif "Training done." in line:
            self.progress.update(n=self.num_epochs, info="final validation")
            self.validating = True
        elif self.validating and re.search(r": predicting \S+\s*$", line):
            self.validated += 1
            self.progress.update(info=f"final validation: {self.validated} cases")
        elif m := re.search(r"Mean Validation Dice:\s*([0-9.eE+-]+)", line):
            self.mean_validation_dice = float(m.group(1))


class PredictParser:
    def __init__(self, progress: StepProgress) -> None:
        self.progress, self.done = progress, 0

    def __call__(self, line: str) -> None:
        if re.match(r"done with \S+", line.strip()):
            self.done += 1
            self.progress.update(n=self.done)


def trainer_epochs(name: str) -> int:
    """Total epochs of a trainer (for the progress bar): ours from their class, nnU-Net's
    `nnUNetTrainer_Xepochs` from the name; 0 if unknown."""
    cls = getattr(variants, name, None)
    if cls is None:
        m = re.fullmatch(r"nnUNetTrainer_(\d+)epochs?", name)
        return int(m.group(1)) if m else (1000 if name == "nnUNetTrainer" else 0)
    if hasattr(cls, "num_epochs_cfenet"):
        return cls.num_epochs_cfenet + cls.num_epochs_dnet
    if name == BASELINE_TRAINER:
        return variants.nnUNetTrainerUniSegDiffDemo.num_epochs_cfenet
    return 0
