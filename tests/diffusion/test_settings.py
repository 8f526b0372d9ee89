"""One DiffusionSettings object carries T, the schedule and the stage thresholds for both the
training objective and the sampler."""
import pytest
import torch

from nnunet_unisegdiff.diffusion.sampler import StagedSampler
from nnunet_unisegdiff.diffusion.sampling_plans import StagedPlan
from nnunet_unisegdiff.diffusion.schedule import linear_alphas_cumprod
from nnunet_unisegdiff.diffusion.settings import DiffusionSettings
from nnunet_unisegdiff.diffusion.staged import StagedObjective


def test_objective_and_sampler_read_t_and_the_thresholds_from_their_settings():
    settings = DiffusionSettings(num_timesteps=500, high=400, low=100)
    objective, plan = StagedObjective(diffusion=settings), StagedPlan(diffusion=settings)
    assert (objective.num_timesteps, objective.high, objective.low) == (500, 400, 100)
    assert StagedObjective().diffusion == StagedPlan().diffusion == DiffusionSettings()
    assert plan.pm_timesteps()[0] == 399 and objective.told_timestep(
        torch.tensor([450]), objective.stage_of(torch.tensor([450]))).item() == 499


def test_default_schedule_is_ddpms_linear_betas():
    assert torch.equal(DiffusionSettings().alphas_cumprod(), linear_alphas_cumprod(1000, 1e-4, 0.02))
    assert torch.equal(StagedSampler().alphas_cumprod, DiffusionSettings().alphas_cumprod())


def test_stage_ranges_follow_the_thresholds():
    assert DiffusionSettings().stage_ranges() == {"RS": "t > 599", "PM": "299 < t <= 599", "DR": "t <= 299"}
    assert DiffusionSettings(high=800, low=200).stage_ranges()["PM"] == "199 < t <= 799"


@pytest.mark.parametrize("kwargs", [{"high": 300, "low": 600}, {"low": 0}, {"high": 1000}])
def test_thresholds_outside_0_low_high_t_are_refused(kwargs):
    with pytest.raises(ValueError, match="low < high"):
        DiffusionSettings(**kwargs)
