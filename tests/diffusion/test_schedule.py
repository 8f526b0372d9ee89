import pytest
import torch

from nnunet_unisegdiff.diffusion.schedule import ddim_step, linear_alphas_cumprod, q_sample, split_prediction

AB = linear_alphas_cumprod()


def _x0_eps(seed=0, shape=(3, 2, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    return x0, torch.randn(shape, generator=g, dtype=torch.float64)


def test_linear_schedule_matches_ddpm_definition():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert AB.shape == (1000,)
    assert torch.allclose(AB[0], 1 - betas[0])
    assert torch.allclose(AB[-1], torch.prod(1 - betas))
    assert bool((AB[1:] < AB[:-1]).all())


@pytest.mark.parametrize("t, t_prev", [(999, 599), (599, 569), (329, 299), (299, 0), (299, -1), (500, 100)])
@pytest.mark.parametrize("kind", ["eps", "x0"])
def test_ddim_step_with_true_prediction_reproduces_q_sample(t, t_prev, kind):
    x0, eps = _x0_eps()
    tt = torch.full((3,), t)
    tp = torch.full((3,), t_prev)
    x_t = q_sample(x0, eps, tt, AB)
    x_prev = ddim_step(x_t, tt, tp, eps if kind == "eps" else x0, kind, AB)
    expected = x0 if t_prev < 0 else q_sample(x0, eps, tp, AB)
    assert torch.allclose(x_prev, expected, atol=1e-9)


def test_split_prediction_round_trip_float32():
    x0, eps = (v.float() for v in _x0_eps(1))
    t = torch.tensor([999, 300, 10])
    x_t = q_sample(x0, eps, t, AB)
    x0_from_eps, _ = split_prediction(x_t, t, eps, "eps", AB)
    _, eps_from_x0 = split_prediction(x_t, t, x0, "x0", AB)
    assert torch.allclose(x0_from_eps, x0, atol=2e-3)  # 1/sqrt(ab_999) ~ 160 amplifies float32 error
    assert torch.allclose(eps_from_x0, eps, atol=1e-4)


def test_per_sample_timesteps_broadcast():
    x0, eps = _x0_eps(2)
    t = torch.tensor([10, 500, 999])
    x_t = q_sample(x0, eps, t, AB)
    for i in range(3):
        single = q_sample(x0[i:i + 1], eps[i:i + 1], t[i:i + 1], AB)
        assert torch.allclose(x_t[i:i + 1], single)


def test_ddim_rejects_unknown_kind():
    x0, eps = _x0_eps()
    t = torch.full((3,), 10)
    with pytest.raises(ValueError, match="eps' or 'x0"):
        ddim_step(x0, t, t - 1, eps, "v", AB)


@pytest.mark.parametrize("num_inference_steps, kind", [(33, "eps"), (33, "x0"), (2, "eps"), (3, "x0")])
def test_ddim_step_matches_diffusers(num_inference_steps, kind):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                    beta_schedule="linear", clip_sample=False, set_alpha_to_one=True,
                                    timestep_spacing="leading",
                                    prediction_type="epsilon" if kind == "eps" else "sample")
    sched.set_timesteps(num_inference_steps)
    stride = 1000 // num_inference_steps
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 8, 8, generator=g)
    for t in [int(v) for v in sched.timesteps[:4]]:
        pred = torch.randn(x.shape, generator=g)
        ref = sched.step(pred, t, x, eta=0.0).prev_sample
        ours = ddim_step(x, torch.full((2,), t), torch.full((2,), t - stride), pred, kind, AB)
        assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4)
        x = ref


def test_ancestral_step_has_ddpm_posterior_variance():
    x0, eps = _x0_eps(4)
    t, tp = torch.full((3,), 500), torch.full((3,), 499)
    x_t = q_sample(x0, eps, t, AB)
    noise = torch.ones_like(x0)
    a = ddim_step(x_t, t, tp, eps, "eps", AB, eta=1.0, noise=noise)
    b = ddim_step(x_t, t, tp, eps, "eps", AB, eta=1.0, noise=0 * noise)
    beta_t = 1 - AB[500] / AB[499]
    sigma_ddpm = ((1 - AB[499]) / (1 - AB[500]) * beta_t).sqrt()
    assert torch.allclose(a - b, torch.full_like(a, float(sigma_ddpm)), atol=1e-9)
    with pytest.raises(ValueError, match="noise"):
        ddim_step(x_t, t, tp, eps, "eps", AB, eta=1.0)
