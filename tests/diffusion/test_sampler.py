"""The staged sampler against an oracle denoiser that knows the true mask."""
import pytest
import torch

from nnunet_unisegdiff.diffusion.sampler import SamplerConfig, StagedSampler
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
        real_t = {999: 999, 0: self.sampler.config.low - 1}.get(int(told[0]), int(told[0]))
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


def test_fresh_renoising_makes_draws_differ_and_none_makes_them_identical():
    _, x0 = _truth(b=1)

    def noisy(x_t, told):  # a denoiser with a constant eps guess: draws differ only through re-noising
        return torch.zeros_like(x_t), torch.zeros_like(x_t)

    fresh = StagedSampler(SamplerConfig(renoise="fresh")).sample(noisy, x0.shape, "cpu",
                                                                 torch.Generator().manual_seed(0))
    same = StagedSampler(SamplerConfig(renoise="none")).sample(noisy, x0.shape, "cpu",
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


@pytest.mark.parametrize("config, calls, told0", [
    (SamplerConfig(plan="ddim", ddim_steps=10, draws_per_branch=3), 10, 999),
    (SamplerConfig(plan="ddim", ddim_steps=10, ddim_prediction="x0", draws_per_branch=1), 10, 999),
    (SamplerConfig(plan="one-step", draws_per_branch=4), 1, 999),
])
def test_reference_plans_recover_the_mask_with_an_oracle(config, calls, told0):
    labels, x0 = _truth(b=1)
    sampler = StagedSampler(config)
    oracle = Oracle(x0, sampler)
    result = sampler.sample(oracle, x0.shape, "cpu", torch.Generator().manual_seed(0))
    assert result.calls == calls and oracle.calls[0][1][0] == told0
    assert result.masks.shape[1] == config.draws_per_branch
    assert torch.equal(result.masks[0, 0], labels[0])


def test_pm_schedule_follows_thresholds_and_interval():
    config = SamplerConfig(diffusion=DiffusionSettings(high=800, low=200), interval=100)
    assert StagedSampler(config).pm_timesteps() == [799, 699, 599, 499, 399, 299]
    with pytest.raises(ValueError, match="renoise"):
        SamplerConfig(renoise="magic")
