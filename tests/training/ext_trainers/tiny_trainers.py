"""CPU-sized trainer variants for the end-to-end tests (scanned through nnUNet_extTrainer).

`UNISEGDIFF_TEST_CRASH_AT_EPOCH=N` makes a run die at the start of epoch N, as a killed job would,
after the checkpoints of the epochs before it were written. Each run (and each resumed run) seeds
python, numpy and torch before nnU-Net builds its data loaders: nnU-Net does not seed, and a few dozen
iterations from an unseeded start made the end-to-end test's Dice check fail now and then.
"""
import os
import random
from dataclasses import replace

import numpy as np
import torch

from nnunet_unisegdiff.diffusion.sampling_plans import StagedPlan
from nnunet_unisegdiff.training.trainer import nnUNetTrainerUniSegDiff


class nnUNetTrainerUniSegDiffTestTiny(nnUNetTrainerUniSegDiff):
    num_epochs_cfenet, num_epochs_dnet = 2, 2
    dnet_lr = 3e-3  # tens of iterations instead of the paper's 300 epochs at 1e-4
    unisegdiff = replace(nnUNetTrainerUniSegDiff.unisegdiff, dnet_width=0.25,
                         sampler=StagedPlan(draws_per_branch=2, interval=100))

    def __init__(self, plans, configuration, fold, dataset_json, device=None):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_val_iterations_per_epoch = 1
        self.save_every = 1
        if os.environ.get("PYTEST_XDIST_WORKER"):  # one core per xdist worker (conftest); nnUNetv2_train asked
            torch.set_num_threads(1)               # for all cores, and busy cores make OpenMP threads wait

    def on_train_start(self):
        random.seed(0)
        np.random.seed(0)
        torch.manual_seed(0)
        super().on_train_start()

    def on_train_epoch_start(self):
        if str(self.current_epoch) == os.environ.get("UNISEGDIFF_TEST_CRASH_AT_EPOCH"):
            raise SystemExit(f"test crash at the start of epoch {self.current_epoch}")
        super().on_train_epoch_start()
        # CFENet learns in a few iterations; DNet from scratch needs more
        self.num_iterations_per_epoch = 10 if self.phase == "A" else 60


class nnUNetTrainerUniSegDiffTestMicro(nnUNetTrainerUniSegDiffTestTiny):
    """One epoch per phase, a few iterations: enough to exercise a code path, not to learn."""
    num_epochs_cfenet, num_epochs_dnet = 1, 1

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.num_iterations_per_epoch = 3
