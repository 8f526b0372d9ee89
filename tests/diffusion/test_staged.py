import pytest
import torch

from nnunet_unisegdiff.diffusion.ablations import OneStepObjective, UniformEpsObjective, UniformX0Objective
from nnunet_unisegdiff.diffusion.settings import DiffusionSettings
from nnunet_unisegdiff.diffusion.staged import Stage, StagedObjective


def test_stage_boundaries_follow_the_paper():
    obj = StagedObjective()
    t = torch.tensor([999, 600, 599, 300, 299, 0])
    tg = obj.targets(t)
    assert tg.stage.tolist() == [Stage.RS, Stage.RS, Stage.PM, Stage.PM, Stage.DR, Stage.DR]
    assert tg.t_net.tolist() == [999, 999, 599, 300, 0, 0]
    assert tg.t_noise.tolist() == t.tolist()  # noised at the drawn t by default
    assert tg.alpha.tolist() == [1, 1, 1, 1, 3, 3]
    assert tg.beta.tolist() == [3, 3, 1, 1, 1, 1]


def test_clamped_noise_reading_is_available():
    tg = StagedObjective(noise_at_clamped_t=True).targets(torch.tensor([700, 450, 100]))
    assert tg.t_noise.tolist() == [999, 450, 0] == tg.t_net.tolist()


def test_thresholds_are_configurable_and_validated():
    obj = StagedObjective(diffusion=DiffusionSettings(high=800, low=200))
    assert obj.stage_of(torch.tensor([800, 799, 200, 199])).tolist() == [0, 1, 1, 2]
    with pytest.raises(ValueError, match="low < high"):
        DiffusionSettings(high=300, low=600)
    with pytest.raises(ValueError, match="weights"):
        StagedObjective(weights=((1.0, 3.0), (1.0, 1.0)))


@pytest.mark.parametrize("cls, alpha, beta", [(UniformEpsObjective, 1, 0), (UniformX0Objective, 0, 1),
                                               (OneStepObjective, 0, 1)])
def test_ablation_objectives_tell_the_true_timestep_and_weight_one_loss(cls, alpha, beta):
    obj = cls()
    t = obj.draw(64, generator=torch.Generator().manual_seed(0))
    tg = obj.targets(t)
    assert torch.equal(tg.t_net, t) and torch.equal(tg.t_noise, t)
    assert set(tg.alpha.tolist()) == {alpha} and set(tg.beta.tolist()) == {beta}
    assert obj.weights == ((alpha, beta),) * 3
    if cls is OneStepObjective:
        assert set(t.tolist()) == {999}
    else:
        assert t.min() < 300 and t.max() >= 600  # uniform over all stages


def test_draw_is_uniform_over_all_timesteps():
    t = StagedObjective().draw(20000, generator=torch.Generator().manual_seed(1))
    assert t.min() >= 0 and t.max() <= 999
    frac = torch.bincount(StagedObjective().stage_of(t), minlength=3).float() / len(t)
    assert torch.allclose(frac, torch.tensor([0.4, 0.3, 0.3]), atol=0.02)
