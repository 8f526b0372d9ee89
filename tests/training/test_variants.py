"""Every `-tr` trainer nnU-Net can find (the classes the trainer folder exports, discovered by
introspection, so a new variant is covered without touching this file) builds its network from a plan."""
import importlib.util
import inspect

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_unisegdiff.diffusion.ablations import OneStepObjective, UniformEpsObjective, UniformX0Objective
from nnunet_unisegdiff.diffusion.sampling_plans import DDIMPlan, OneStepPlan, StagedPlan
from nnunet_unisegdiff.diffusion.staged import StagedObjective
from nnunet_unisegdiff.model.network import UniSegDiffNetwork
from nnunet_unisegdiff.nnunet_ext import TRAINER_DIR
from nnunet_unisegdiff.training import variants
from nnunet_unisegdiff.training.trainer import nnUNetTrainerUniSegDiff


def exported_names() -> dict[str, object]:
    """Public names of every module in the trainer folder, imported by path as nnU-Net's scan does."""
    names = {}
    for path in sorted(TRAINER_DIR.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"_scan_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        names |= {k: v for k, v in vars(module).items() if not k.startswith("_")}
    return names


def variants_defined() -> set[type]:
    """The public trainer classes of variants.py (`_`-named ones are shared bases, not -tr names)."""
    return {c for name, c in inspect.getmembers(variants, inspect.isclass)
            if issubclass(c, nnUNetTrainer) and c.__module__ == variants.__name__ and not name.startswith("_")}


TRAINERS = sorted(exported_names().values(), key=lambda c: c.__name__)


def test_the_trainer_folder_exports_only_trainers_and_all_of_them():
    assert all(inspect.isclass(c) and issubclass(c, nnUNetTrainer) for c in TRAINERS), \
        [n for n, c in exported_names().items() if not (inspect.isclass(c) and issubclass(c, nnUNetTrainer))]
    assert set(TRAINERS) == variants_defined() | {nnUNetTrainerUniSegDiff}


@pytest.mark.parametrize("cls", TRAINERS, ids=lambda c: c.__name__)
def test_every_trainer_builds_its_network_from_the_plan(cls, plan_2d):
    pm, cfg = plan_2d
    assert "__" not in cls.__name__  # nnU-Net splits result folder names on "__"
    torch.manual_seed(0)
    net = cls.build_network_architecture(pm, cfg, 3, 2, False)
    x = torch.randn(2, 3, *cfg.patch_size)
    if not issubclass(cls, nnUNetTrainerUniSegDiff):  # a plain nnU-Net trainer: the plan's UNet
        assert not isinstance(net, UniSegDiffNetwork)
        assert net(x).shape == (2, 2, *cfg.patch_size)
        return
    assert isinstance(net, UniSegDiffNetwork)
    assert net.settings == cls.unisegdiff and net.sampler.plan == cls.unisegdiff.sampler
    assert any(net.dnet.uses_dca) == cls.unisegdiff.use_dca
    x_t = torch.randn(2, 2, *cfg.patch_size)
    with torch.no_grad():
        eps, logits = net(x, x_t, torch.tensor([999, 0]))
    assert eps.shape == logits.shape == x_t.shape


@pytest.mark.parametrize("cls, objective, plan", [
    (nnUNetTrainerUniSegDiff, StagedObjective, StagedPlan),
    (variants.nnUNetTrainerUniSegDiffUniformEps, UniformEpsObjective, DDIMPlan),
    (variants.nnUNetTrainerUniSegDiffUniformX0, UniformX0Objective, DDIMPlan),
    (variants.nnUNetTrainerUniSegDiffOneStep, OneStepObjective, OneStepPlan),
    (variants.nnUNetTrainerUniSegDiffPaper, StagedObjective, StagedPlan),
], ids=lambda v: getattr(v, "__name__", None))
def test_the_ablations_pick_their_objective_and_sampling_plan_by_type(cls, objective, plan):
    assert type(cls.objective) is objective and type(cls.unisegdiff.sampler) is plan


@pytest.mark.parametrize("cls", [c for c in TRAINERS if issubclass(c, nnUNetTrainerUniSegDiff)],
                         ids=lambda c: c.__name__)
def test_every_trainer_samples_in_the_diffusion_settings_it_trains_in(cls):
    assert cls.objective.diffusion == cls.unisegdiff.sampler.diffusion
