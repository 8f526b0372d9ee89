"""The denoiser adapter: DNet bound to one batch's condition features, for stacked copies of the batch."""
import pytest
import torch

from nnunet_unisegdiff.model.network import UniSegDiffSettings, build_unisegdiff_network

SETTINGS = UniSegDiffSettings(dnet_width=0.5, token_budget=64)


@pytest.fixture
def net_and_cond(plan_2d):
    torch.manual_seed(0)
    net = build_unisegdiff_network(*plan_2d, 3, 2, False, SETTINGS).eval()
    image = torch.randn(2, 3, 32, 32)
    return net, image, net.condition(image)[1]


def test_copies_of_the_batch_are_paired_with_their_own_image(net_and_cond):
    net, _, cond = net_and_cond
    denoise = net.denoiser(cond)
    x_t = torch.randn(6, 2, 32, 32)  # 3 copies of the 2 images, copy-major
    t = torch.tensor([999, 999, 500, 500, 0, 0])
    eps, logits = denoise(x_t, t)
    assert eps.shape == logits.shape == x_t.shape
    with torch.no_grad():
        for copy in range(3):  # each copy alone, with the unrepeated features, gives the same outputs
            part = slice(2 * copy, 2 * copy + 2)
            eps_c, logits_c = net.dnet(x_t[part], t[part], cond)
            torch.testing.assert_close(eps[part], eps_c, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(logits[part], logits_c, rtol=1e-5, atol=1e-5)


def test_a_batch_that_is_not_whole_copies_is_refused(net_and_cond):
    net, _, cond = net_and_cond
    with pytest.raises(ValueError, match="x_t has batch 3, not a whole multiple of the 2 images"):
        net.denoiser(cond)(torch.randn(3, 2, 32, 32), torch.zeros(3, dtype=torch.long))


def test_training_call_goes_through_the_denoiser(net_and_cond):
    net, image, cond = net_and_cond
    x_t, t = torch.randn(2, 2, 32, 32), torch.tensor([700, 100])
    with torch.no_grad():
        for got, want in zip(net(image, x_t, t), net.denoiser(cond)(x_t, t)):
            assert torch.equal(got, want)


def test_active_pipeline_is_cfenet_while_training_or_untrained(net_and_cond):
    net = net_and_cond[0]
    assert net.active_pipeline == "cfenet"  # DNet not trained yet
    net.dnet_trained.fill_(True)
    assert net.active_pipeline == SETTINGS.pipeline
    assert net.train().active_pipeline == "cfenet"
