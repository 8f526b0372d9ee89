"""The segmentation-loss factory equals the loss nnUNetTrainer builds for itself."""
import copy

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_unisegdiff.model.plans import tiny_plans
from nnunet_unisegdiff.training.losses import segmentation_loss

DATASET_JSON = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "lesion": 1, "core": 2},
                "numTraining": 2, "file_ending": ".png"}


@pytest.fixture
def trainer(nnunet_env):
    data = nnunet_env / "nnUNet_preprocessed" / "Dataset999_Tiny" / "nnUNetPlans_x"
    data.mkdir(parents=True)
    (data / "case.b2nd").touch()  # nnU-Net infers the dataset format from the file ending
    plans = {**tiny_plans(2), "continue_training": False}  # as nnUNetv2_train's entry point sets it
    t = nnUNetTrainer(plans, "2d", 0, copy.deepcopy(DATASET_JSON), torch.device("cpu"))
    t.initialize()
    return t


def test_same_value_as_nnunettrainers_own_loss(trainer):
    g = torch.Generator().manual_seed(0)
    sizes = [32 // 2 ** i for i in range(len(trainer._get_deep_supervision_scales()))]  # one per output
    outputs = [torch.randn(2, 3, s, s, generator=g) for s in sizes]
    targets = [torch.randint(0, 3, (2, 1, s, s), generator=g) for s in sizes]
    ours = segmentation_loss(batch_dice=trainer.configuration_manager.batch_dice,
                             deep_supervision_outputs=len(sizes))
    assert torch.equal(ours(outputs, targets), trainer.loss(outputs, targets))
    plain = segmentation_loss(batch_dice=trainer.configuration_manager.batch_dice)
    assert torch.equal(plain(outputs[0], targets[0]), trainer.loss.loss(outputs[0], targets[0]))
    assert not torch.equal(plain(outputs[0], targets[0]), ours(outputs, targets))  # the wrapper does weigh
