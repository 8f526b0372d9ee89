"""CFENet feature tap, DNet and the composite network nnU-Net holds, on tiny 2D and 3D plans."""
import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_unisegdiff.diffusion.fusion import fuse_masks, probabilities_to_logits, temper_by_draws
from nnunet_unisegdiff.diffusion.sampling_plans import StagedPlan
from nnunet_unisegdiff.model.dnet import DNet
from nnunet_unisegdiff.model.injection import DualCrossAttention, FeatureFusion
from nnunet_unisegdiff.model.network import UniSegDiffSettings, build_unisegdiff_network
from nnunet_unisegdiff.model.plans import tiny_plans

SMALL = UniSegDiffSettings(dnet_width=0.5, token_budget=64, sampler=StagedPlan(draws_per_branch=2))


def _net(plans, cfg, ds=False, settings=SMALL, in_ch=3, classes=2):
    torch.manual_seed(0)
    return build_unisegdiff_network(plans, cfg, in_ch, classes, ds, settings)


@pytest.mark.parametrize("arch", ["PlainConvUNet", "ResidualEncoderUNet"])
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_cfenet_tap_returns_decoder_features_per_resolution(arch, deep_supervision):
    pm = PlansManager(tiny_plans(2, arch=arch))
    net = _net(pm, pm.get_configuration("2d"), ds=deep_supervision)
    x = torch.randn(2, 3, 32, 32)
    logits, feats = net.condition(x)
    assert [tuple(f.shape) for f in feats] == [(2, 8, 32, 32), (2, 16, 16, 16), (2, 32, 8, 8), (2, 32, 4, 4)]
    plain = net.cfenet(x)
    assert torch.equal(logits, plain[0] if deep_supervision else plain)
    # the bottleneck is the encoder's last skip, i.e. CFENet's deepest features
    assert torch.equal(feats[-1], net.cfenet.encoder(x)[-1])


def test_cfenet_tap_records_nothing_outside_its_call(plan_2d):
    net = _net(*plan_2d)
    tap = net._tap
    net.cfenet(torch.randn(1, 3, 32, 32))
    assert tap._recording is None and tap._bottleneck is None


@pytest.mark.parametrize("dim, plan", [(2, "plan_2d"), (3, "plan_3d")])
def test_dnet_shapes_and_every_parameter_gets_a_gradient(dim, plan, request):
    pm, cfg = request.getfixturevalue(plan)
    net = _net(pm, cfg)
    spatial = tuple(cfg.patch_size)
    x = torch.randn(2, 3, *spatial)
    x_t = torch.randn(2, 2, *spatial)
    eps, logits = net(x, x_t, torch.tensor([999, 0]))
    assert eps.shape == logits.shape == x_t.shape
    (eps.square().mean() + logits.mean()).backward()
    missing = [n for n, p in net.dnet.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient (DDP would fail): {missing}"
    assert all(p.grad is None for p in net.cfenet.parameters()), "CFENet must not get gradients in phase B"


def test_dca_only_within_token_budget(plan_2d):
    net = _net(*plan_2d)  # stage tokens 1024, 256, 64, 16 with budget 64
    assert net.dnet.uses_dca == [False, False, True, True]
    assert all(isinstance(m, FeatureFusion) for m in net.dnet.fusion)  # local fusion at every stage
    assert sorted(net.dnet.attention) == ["2", "3"]
    assert all(isinstance(m, DualCrossAttention) for m in net.dnet.attention.values())
    no_dca = _net(*plan_2d, settings=UniSegDiffSettings(dnet_width=0.5, use_dca=False))
    assert not any(no_dca.dnet.uses_dca)


def test_width_scales_plan_features(plan_2d):
    pm, cfg = plan_2d
    kw, imp = cfg.network_arch_init_kwargs, cfg.network_arch_init_kwargs_req_import
    full = DNet.from_plan(kw, imp, cfg.patch_size, 2, width=1.0)
    half = DNet.from_plan(kw, imp, cfg.patch_size, 2, width=0.5)
    assert full.encoder.output_channels == [8, 16, 32, 32]
    assert half.encoder.output_channels == [4, 8, 16, 16]


def test_dual_cross_attention_mixes_condition_into_every_position():
    torch.manual_seed(0)
    dca = DualCrossAttention(8, 12, torch.nn.Conv2d)
    h = torch.randn(1, 8, 4, 4)
    cond = torch.randn(1, 12, 4, 4)
    cond2 = cond.clone()
    cond2[..., 0, 0] += 5.0  # change the condition at one position only
    delta = (dca(h, cond) - dca(h, cond2)).abs().sum(1)[0]
    assert (delta > 0).all(), "attention should carry a local condition change to all positions"


def test_untrained_network_predicts_with_cfenet(plan_2d):
    net = _net(*plan_2d).eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(net(x), net.cfenet(x))


@pytest.mark.parametrize("plan", ["plan_2d", "plan_3d"])
def test_eval_forward_returns_finite_logits_of_the_tempered_fused_posterior(plan, request):
    pm, cfg = request.getfixturevalue(plan)
    net = _net(pm, cfg).eval()
    net.dnet_trained.fill_(True)
    x = torch.randn(1, 3, *cfg.patch_size)
    logits = net(x)
    assert logits.shape == (1, 2, *cfg.patch_size) and torch.isfinite(logits).all()
    result = net.sample(x)
    assert result.masks.shape == (1, 4, *cfg.patch_size)  # 2 branches x 2 draws
    assert torch.equal(net.sample(x, net.sampler, net.condition(x)[1]).masks, result.masks)  # reused CFENet pass
    fused = fuse_masks(result.masks, 2, net.settings.fusion, net.settings.staple_pseudo_pixels)
    expected = probabilities_to_logits(temper_by_draws(fused, result.masks))
    assert torch.allclose(logits, expected)  # seeded: the same draws again
    assert torch.allclose(logits.softmax(1).sum(1), torch.ones(1))
    assert torch.isfinite(logits.half()).all()  # nnU-Net accumulates in fp16


def test_state_dict_round_trip_is_strict_and_keeps_the_trained_flag(plan_2d):
    a = _net(*plan_2d)
    a.dnet_trained.fill_(True)
    b = _net(*plan_2d)
    b.load_state_dict(a.state_dict(), strict=True)
    assert bool(b.dnet_trained)
    assert not any(k.startswith("decoder.") for k in a.state_dict())  # `decoder` is only a view of CFENet's


def test_frozen_cfenet_stays_in_eval_mode(plan_2d):
    net = _net(*plan_2d)
    net.freeze_cfenet = True
    net.train()
    assert net.dnet.training and not net.cfenet.training
    assert net.decoder is net.cfenet.decoder


def test_probabilities_to_logits_is_finite_and_inverts_softmax():
    p = torch.tensor([[0.0, 1.0], [0.3, 0.7]]).T.reshape(1, 2, 2)
    logits = probabilities_to_logits(p)
    assert torch.isfinite(logits).all()
    assert torch.allclose(logits.softmax(1)[0, :, 1], torch.tensor([0.3, 0.7]), atol=1e-6)


def test_vote_fusion_is_the_mean_of_one_hot_draws():
    masks = torch.tensor([[[0, 1], [1, 1], [1, 2]]])  # (B=1, N=3, P=2)
    probs = fuse_masks(masks, 3, "vote")
    assert torch.allclose(probs[0, :, 0], torch.tensor([1 / 3, 2 / 3, 0]))
    assert torch.allclose(probs[0, :, 1], torch.tensor([0, 2 / 3, 1 / 3]))
    with pytest.raises(ValueError, match="staple' or 'vote"):
        fuse_masks(masks, 3, "mean")


def test_two_class_staple_fusion_is_binary_staple_of_the_foreground():
    from nnunet_unisegdiff.diffusion.staple import staple_batched
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(3, 20, 16, 16, generator=g) < 0.3).long()
    masks[1] = 0
    masks[1, :5, 3, 3] = 1  # a nearly empty stack
    probs = fuse_masks(masks, 2)
    assert torch.allclose(probs[:, 1], staple_batched(masks), atol=1e-5)
    assert torch.allclose(probs.sum(1), torch.ones(1))
