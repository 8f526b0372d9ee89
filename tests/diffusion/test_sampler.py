"""The staged sampler against an oracle denoiser that knows the true mask."""
import pytest
import torch

from nnunet_unisegdiff.diffusion.sampler import StagedSampler
from nnunet_unisegdiff.diffusion.sampling_plans import DDIMPlan, OneStepPlan, StagedPlan
from nnunet_unisegdiff.diffusion.schedule import linear_alphas_cumprod, split_prediction
from nnunet_unisegdiff.diffusion.settings import DiffusionSettings

AB = linear_alphas_cumprod()


def _truth(b=2, size=8):
    labels = torch.zeros(b, size, size, dtype=torch.long)
    labels[:, 2:6, 3:7] = 1
    x0 = 2 * torch.nn.functional.one_hot(labels, 2).permute(0, 3, 1, 2).float() - 1
    return labels, x0


class Oracle:
    """Knows x0, so it returns the true eps for any x_t (at the *real* noise level of x_t, which it
    infers from the call order) and sharp logits of x0. Records every call."""

    def __init__(self, x0, sampler):
        self.x0, self.calls, self.sampler = x0, [], sampler

    def __call__(self, x_t, told):
        k = x_t.shape[0] // self.x0.shape[0]
        x0 = self.x0.repeat(k, 1, 1, 1)
        self.calls.append((x_t.shape[0], told.tolist()))
        real_t = {999: 999, 0: self.sampler.plan.diffusion.low - 1}.get(int(told[0]), int(told[0]))
        _, eps = split_prediction(x_t, torch.full((x_t.shape[0],), real_t), x0, "x0", AB)
        return eps, 20 * x0


def test_staged_plan_makes_twelve_batched_calls_with_the_paper_timesteps():
    labels, x0 = _truth(b=2)
    sampler = StagedSampler()
    oracle = Oracle(x0, sampler)
    result = sampler.sample(oracle, x0.shape, "cpu", torch.Generator().manual_seed(0))
    sizes = [n for n, _ in oracle.calls]
    told = [t[0] for _, t in oracle.calls]
    assert result.calls == len(oracle.calls) == 12
    assert sizes == [2] + [4] * 10 + [40]  # B, 2B for both PM branches, 2 x 10 draws x B
    assert told == [999] + list(range(599, 299, -30)) + [0]
    assert result.masks.shape == (2, 20, 8, 8) and result.probs.shape == (2, 20, 2, 8, 8)
    # with the true eps / x0 every one of the 20 draws recovers the mask exactly
    assert torch.equal(result.masks, labels[:, None].expand(-1, 20, -1, -1))


@pytest.mark.parametrize("head", ["x0", "eps"])
def test_fresh_renoising_makes_draws_differ_and_none_makes_them_identical(head):
    _, x0 = _truth(b=1)

    def noisy(x_t, told):  # both heads follow the input: draws differ only through re-noising
        return torch.zeros_like(x_t), x_t

    fresh = StagedSampler(StagedPlan(renoise="fresh", dr_head=head)).sample(noisy, x0.shape, "cpu",
                                                              torch.Generator().manual_seed(0))
    same = StagedSampler(StagedPlan(renoise="none", dr_head=head)).sample(noisy, x0.shape, "cpu",
                                                            torch.Generator().manual_seed(0))
    assert len({m.numpy().tobytes() for m in fresh.masks[0]}) > 2
    assert len({m.numpy().tobytes() for m in same.masks[0, :10]}) == 1  # x0 branch: one mask 10 times


def test_seeded_sampling_is_reproducible():
    _, x0 = _truth(b=1)

    def denoise(x_t, told):
        return 0.5 * x_t, x_t.flip(-1)

    s = StagedSampler()
    a = s.sample(denoise, x0.shape, "cpu", torch.Generator().manual_seed(7))
    b = s.sample(denoise, x0.shape, "cpu", torch.Generator().manual_seed(7))
    c = s.sample(denoise, x0.shape, "cpu", torch.Generator().manual_seed(8))
    assert torch.equal(a.masks, b.masks) and not torch.equal(a.probs, c.probs)


@pytest.mark.parametrize("plan, calls, told0", [
    (DDIMPlan(steps=10, samples=3), 10, 999),
    (DDIMPlan(steps=10, prediction="x0", samples=1), 10, 999),
    (OneStepPlan(samples=4), 1, 999),
])
def test_reference_plans_recover_the_mask_with_an_oracle(plan, calls, told0):
    labels, x0 = _truth(b=1)
    sampler = StagedSampler(plan)
    oracle = Oracle(x0, sampler)
    result = sampler.sample(oracle, x0.shape, "cpu", torch.Generator().manual_seed(0))
    assert result.calls == calls and oracle.calls[0][1][0] == told0
    assert result.masks.shape[1] == plan.samples
    assert torch.equal(result.masks[0, 0], labels[0])


def test_pm_schedule_follows_thresholds_and_interval():
    plan = StagedPlan(diffusion=DiffusionSettings(high=800, low=200), interval=100)
    assert plan.pm_timesteps() == [799, 699, 599, 499, 399, 299]
    with pytest.raises(ValueError, match="renoise"):
        StagedPlan(renoise="magic")


def _implied_x0(x_t, x_prev, t, t_prev):
    """The clean estimate a deterministic DDIM step x_t -> x_prev used (solved from the step's formula)."""
    ab_t, ab_p = AB[t].float(), AB[t_prev].float()
    k = ((1 - ab_p) / (1 - ab_t)).sqrt()
    return (x_prev - k * x_t) / (ab_p.sqrt() - k * ab_t.sqrt())


@pytest.mark.parametrize("clamp", [False, True])
def test_clamp_keeps_the_pm_clean_estimates_in_the_mask_range(clamp):
    _, x0 = _truth(b=1)
    inputs = []

    def overshooting(x_t, told):  # an eps head whose implied x0 lies far outside [-1, 1] at t ~ 600
        inputs.append(x_t.clone())
        return torch.full_like(x_t, -2.0), torch.zeros_like(x_t)

    sampler = StagedSampler(StagedPlan(clamp_x0=clamp))
    sampler.sample(overshooting, x0.shape, "cpu", torch.Generator().manual_seed(0))
    pm = sampler.plan.pm_timesteps()  # 599, 569, ..., 329
    eps_states = [x[1:] for x in inputs[1:1 + len(pm)]]  # the eps branch's input to every PM call
    implied = torch.stack([_implied_x0(eps_states[i], eps_states[i + 1], pm[i], pm[i + 1])
                           for i in range(len(pm) - 1)])
    if clamp:
        assert implied.abs().max() <= 1 + 1e-3
    else:
        assert implied.abs().max() > 5  # sqrt(1 - ab) / sqrt(ab) is ~6 at t = 599: the estimate runs away


@pytest.mark.parametrize("head", ["x0", "eps"])
def test_dr_head_picks_the_decoder_each_draw_comes_from(head):
    labels, x0 = _truth(b=1)
    torch.manual_seed(0)

    def x0_right_eps_wrong(x_t, told):  # the x0 decoder knows the mask, the eps decoder is noise
        return 3 * torch.randn_like(x_t), 20 * x0.repeat(x_t.shape[0], 1, 1, 1)

    result = StagedSampler(StagedPlan(dr_head=head)).sample(x0_right_eps_wrong, x0.shape, "cpu",
                                                            torch.Generator().manual_seed(0))
    exact = (result.masks[0] == labels[0]).flatten(1).all(1)  # (20,) draws equal to the mask
    assert exact.all() if head == "x0" else not exact.any()
    with pytest.raises(ValueError, match="dr_head"):
        StagedPlan(dr_head="both")


@pytest.mark.parametrize("head", ["x0", "eps"])
def test_short_plan_is_rs_then_one_dr_call_from_the_chosen_decoder(head):
    labels, x0 = _truth(b=2)
    sampler = StagedSampler(StagedPlan(dr_head=head))
    oracle = Oracle(x0, sampler)

    def x0_inverted_at_dr(x_t, told):  # true eps; the x0 decoder is right at RS, inverted at DR
        eps, logits = oracle(x_t, told)
        return eps, -logits if int(told[0]) == 0 else logits

    x0_hat = sampler.short_plan(x0_inverted_at_dr, torch.randn(x0.shape), torch.Generator().manual_seed(0))
    assert [(n, t[0]) for n, t in oracle.calls] == [(2, 999), (2, 0)]
    assert torch.equal(x0_hat.argmax(1), labels if head == "eps" else 1 - labels)
