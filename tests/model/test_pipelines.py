"""The inference pipelines a network can run: one CFENet pass shared, each pipeline what its name says."""
from dataclasses import replace

import pytest
import torch

from nnunet_unisegdiff.diffusion.fusion import fuse_masks
from nnunet_unisegdiff.diffusion.sampler import StagedSampler
from nnunet_unisegdiff.diffusion.sampling_plans import StagedPlan
from nnunet_unisegdiff.model.network import UniSegDiffSettings, build_unisegdiff_network
from nnunet_unisegdiff.model.pipelines import PAPER_SAMPLER, pipeline_probabilities
from nnunet_unisegdiff.model.settings import PIPELINES

SMALL = UniSegDiffSettings(dnet_width=0.5, token_budget=64, sampler=StagedPlan(draws_per_branch=2))


@pytest.fixture
def net(plan_2d):
    torch.manual_seed(0)
    n = build_unisegdiff_network(*plan_2d, 3, 2, False, SMALL)
    n.dnet_trained.fill_(True)
    return n.eval()


def test_every_pipeline_gives_class_probabilities(net):
    x = torch.randn(2, 3, 32, 32)
    out = pipeline_probabilities(net, x, PIPELINES)
    assert list(out) == list(PIPELINES)
    for name, p in out.items():
        assert p.shape == (2, 2, 32, 32), name
        assert torch.allclose(p.sum(1), torch.ones(2, 32, 32), atol=1e-5), name


def test_pipelines_are_what_their_names_say(net):
    x = torch.randn(1, 3, 32, 32)
    out = pipeline_probabilities(net, x, PIPELINES)
    assert torch.equal(out["cfenet"], net.cfenet(x).softmax(1))
    draws = net.sample(x).masks
    assert torch.equal(out["diffusion"], fuse_masks(draws, 2, "staple", SMALL.staple_pseudo_pixels))
    assert torch.allclose(out["diffusion+cfenet"], (fuse_masks(draws, 2, "vote") + out["cfenet"]) / 2)
    paper = replace(PAPER_SAMPLER, diffusion=SMALL.sampler.diffusion)
    assert torch.equal(out["paper"], fuse_masks(net.sample(x, StagedSampler(paper)).masks, 2, "staple", None))


def test_forward_runs_the_recorded_pipeline(net):
    x = torch.randn(1, 3, 32, 32)
    net.set_settings(replace(SMALL, pipeline="cfenet"))
    assert torch.equal(net(x), net.cfenet(x))  # nnU-Net's own logits, bit for bit
    net.set_settings(replace(SMALL, pipeline="rs"))
    rs = pipeline_probabilities(net, x, ["rs"])["rs"]
    assert torch.equal(net(x).argmax(1), rs.argmax(1))


def test_unknown_pipeline_is_refused(net):
    with pytest.raises(ValueError, match="unknown inference pipeline"):
        pipeline_probabilities(net, torch.randn(1, 3, 32, 32), ["nnunet"])
    with pytest.raises(ValueError, match="unknown inference pipeline"):
        UniSegDiffSettings(pipeline="nnunet")


def test_given_condition_skips_cfenet_and_gives_the_same_probabilities(net, monkeypatch):
    x = torch.randn(2, 3, 32, 32)
    expected = pipeline_probabilities(net, x, PIPELINES)
    condition = net.condition(x)
    monkeypatch.setattr(net, "condition", lambda image: pytest.fail("CFENet ran again"))
    for name, probs in pipeline_probabilities(net, x, PIPELINES, condition).items():
        assert torch.equal(probs, expected[name])
