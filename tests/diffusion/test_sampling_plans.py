"""One type per sampling plan: each refuses its own bad fields, and the sampler runs the plan its type names."""
import pytest
import torch

from nnunet_unisegdiff.diffusion.sampler import StagedSampler
from nnunet_unisegdiff.diffusion.sampling_plans import PLANS, DDIMPlan, OneStepPlan, StagedPlan
from nnunet_unisegdiff.diffusion.settings import DiffusionSettings
from nnunet_unisegdiff.diffusion.staged import StagedObjective


@pytest.mark.parametrize("plan, kwargs, message", [
    (StagedPlan, {"draws_per_branch": 0}, "StagedPlan.draws_per_branch must be a positive integer, got 0"),
    (StagedPlan, {"draws_per_branch": 2.5}, "StagedPlan.draws_per_branch must be a positive integer"),
    (StagedPlan, {"interval": -30}, "StagedPlan.interval must be a positive integer"),
    (StagedPlan, {"renoise": "magic"}, "StagedPlan.renoise must be one of \\('fresh', 'none'\\), got 'magic'"),
    (StagedPlan, {"dr_head": "both"}, "StagedPlan.dr_head must be one of \\('eps', 'x0'\\)"),
    (StagedPlan, {"clamp_x0": "yes"}, "StagedPlan.clamp_x0 must be one of"),
    (DDIMPlan, {"samples": 0}, "DDIMPlan.samples must be a positive integer"),
    (DDIMPlan, {"steps": True}, "DDIMPlan.steps must be a positive integer, got True"),
    (DDIMPlan, {"steps": 1001}, "DDIMPlan.steps must be at most T = 1000, got 1001"),
    (DDIMPlan, {"prediction": "v"}, "DDIMPlan.prediction must be one of \\('eps', 'x0'\\), got 'v'"),
    (DDIMPlan, {"eta": -0.5}, "DDIMPlan.eta must be >= 0"),
    (OneStepPlan, {"samples": -1}, "OneStepPlan.samples must be a positive integer"),
])
def test_each_plan_refuses_its_bad_fields_with_the_field_named(plan, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan(**kwargs)


@pytest.mark.parametrize("plan", list(PLANS.values()))
def test_each_plan_refuses_diffusion_settings_that_are_not_settings(plan):
    with pytest.raises(TypeError, match=f"{plan.__name__}.diffusion must be a DiffusionSettings"):
        plan(diffusion={"num_timesteps": 1000})


def test_a_plan_holds_only_its_own_fields():
    assert [k for k, p in PLANS.items() if p.kind == k] == ["staged", "ddim", "one-step"]
    assert not hasattr(DDIMPlan(), "draws_per_branch") and not hasattr(StagedPlan(), "samples")
    assert not hasattr(OneStepPlan(), "steps") and not hasattr(OneStepPlan(), "dr_head")


def _recording_denoise(calls):
    def denoise(x_t, told):
        calls.append((x_t.shape[0], int(told[0])))
        return torch.zeros_like(x_t), x_t
    return denoise


@pytest.mark.parametrize("plan, expected_calls, masks", [
    (StagedPlan(draws_per_branch=3, diffusion=DiffusionSettings(high=500, low=300), interval=100),
     [(2, 999), (4, 499), (4, 399), (6 * 2, 0)], 6),
    (DDIMPlan(samples=3, steps=4), [(6, 999), (6, 749), (6, 499), (6, 249)], 3),
    (OneStepPlan(samples=5), [(10, 999)], 5),
])
def test_the_sampler_runs_the_plan_its_type_names(plan, expected_calls, masks):
    calls = []
    result = StagedSampler(plan).sample(_recording_denoise(calls), (2, 2, 4, 4), "cpu",
                                        torch.Generator().manual_seed(0))
    assert calls == expected_calls and result.calls == len(expected_calls)
    assert result.masks.shape == (2, masks, 4, 4)


@pytest.mark.parametrize("not_a_plan", [StagedObjective(), {"kind": "staged"}, "staged"])
def test_the_sampler_refuses_what_is_not_a_plan(not_a_plan):
    with pytest.raises(TypeError, match="StagedPlan, DDIMPlan or OneStepPlan"):
        StagedSampler(not_a_plan)


@pytest.mark.parametrize("plan", [DDIMPlan(), OneStepPlan()])
def test_the_short_plan_of_a_plan_without_dr_reads_the_x0_decoder(plan):
    """The DDIM and one-step plans have no DR call: phase-B validation scores them with the x0 decoder,
    as the staged plan's default does."""
    def denoise(x_t, told):  # the eps decoder would give a clean estimate far from the x0 decoder's
        return torch.full_like(x_t, 5.0), torch.cat((x_t[:, :1], -x_t[:, :1] + 1), 1)

    x_T = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    got = StagedSampler(plan).short_plan(denoise, x_T, torch.Generator().manual_seed(1))
    staged = StagedSampler(StagedPlan()).short_plan(denoise, x_T, torch.Generator().manual_seed(1))
    eps_head = StagedSampler(StagedPlan(dr_head="eps")).short_plan(denoise, x_T, torch.Generator().manual_seed(1))
    assert torch.equal(got, staged) and not torch.equal(got, eps_head)
