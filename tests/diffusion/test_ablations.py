"""The training objectives of the paper's Table 4, one type each, behind the interface `phase_b_loss` uses."""
import pytest
import torch

from nnunet_unisegdiff.diffusion.ablations import (
    OBJECTIVES,
    OneStepObjective,
    UniformEpsObjective,
    UniformX0Objective,
)
from nnunet_unisegdiff.diffusion.schedule import linear_alphas_cumprod
from nnunet_unisegdiff.diffusion.settings import DiffusionSettings
from nnunet_unisegdiff.diffusion.staged import StagedObjective, phase_b_loss


def test_every_objective_is_named_by_its_kind():
    assert {k: o.__name__ for k, o in OBJECTIVES.items()} == {
        "staged": "StagedObjective", "uniform-eps": "UniformEpsObjective", "uniform-x0": "UniformX0Objective",
        "one-step": "OneStepObjective"}
    assert all(o.kind == k for k, o in OBJECTIVES.items())


@pytest.mark.parametrize("objective, told, loss", [
    (StagedObjective(), 999, 3.0),      # RS: told 999, beta 3
    (UniformEpsObjective(), 800, 0.0),  # the true t, the noise loss only (the noise is predicted exactly)
    (UniformX0Objective(), 800, 1.0),   # the true t, the mask loss only
    (OneStepObjective(), 999, 1.0),     # always t = 999, the mask loss only
])
def test_phase_b_loss_takes_every_objective_through_one_interface(objective, told, loss):
    labels = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    eps = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    seen = []

    def denoise(x_t, t):  # the true noise, and logits the constant mask loss ignores
        seen.append(t.tolist())
        return eps, torch.zeros_like(x_t)

    t = None if isinstance(objective, OneStepObjective) else torch.tensor([800, 800])
    total, _ = phase_b_loss(denoise, labels, objective, lambda logits, lab: torch.tensor(1.0),
                            linear_alphas_cumprod(), 2, torch.Generator().manual_seed(1), t=t, eps=eps)
    assert seen == [[told, told]] and float(total) == loss


@pytest.mark.parametrize("cls", [UniformEpsObjective, UniformX0Objective, OneStepObjective])
def test_the_ablations_read_t_and_the_thresholds_from_their_settings(cls):
    objective = cls(diffusion=DiffusionSettings(num_timesteps=500, high=400, low=100))
    t = objective.draw(256, generator=torch.Generator().manual_seed(0))
    assert t.max() <= 499 and objective.targets(t).stage.tolist() == objective.stage_of(t).tolist()
    if cls is OneStepObjective:
        assert set(t.tolist()) == {499}
