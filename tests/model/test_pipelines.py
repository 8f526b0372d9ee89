"""The inference pipelines a network can run: one CFENet pass shared, each pipeline what its name says, each
registered with the pieces the rest of the package reads."""
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nnunet_unisegdiff.diffusion.fusion import fuse_masks, probabilities_to_logits, temper_by_draws
from nnunet_unisegdiff.diffusion.sampler import StagedSampler
from nnunet_unisegdiff.diffusion.sampling_plans import StagedPlan
from nnunet_unisegdiff.model.network import UniSegDiffSettings, build_unisegdiff_network
from nnunet_unisegdiff.model.pipelines import (
    DRAW_PIPELINES,
    INFERENCE_PIPELINES,
    PAPER_SAMPLER,
    PIPELINES,
    InferencePipeline,
    PipelineInputs,
    exported_map,
    gate_components,
    pipeline_probabilities,
)

SMALL = UniSegDiffSettings(dnet_width=0.5, token_budget=64, sampler=StagedPlan(draws_per_branch=2))
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def net(plan_2d):
    torch.manual_seed(0)
    n = build_unisegdiff_network(*plan_2d, 3, 2, False, SMALL)
    n.dnet_trained.fill_(True)
    return n.eval()


def test_the_registry_holds_the_pipelines_in_the_order_the_choice_uses():
    """Pinned: the names are what checkpoints record, the order is the trainer's candidates' (ties go to the
    first), the draw pipelines are the ones "free" tempers, CFENet alone keeps nnU-Net's mirroring."""
    from nnunet_unisegdiff.training.trainer import nnUNetTrainerUniSegDiff

    assert PIPELINES == ("cfenet", "rs", "diffusion", "paper", "diffusion+cfenet", "cfenet-gated")
    assert DRAW_PIPELINES == ("diffusion", "diffusion+cfenet", "cfenet-gated")
    assert [name for name, p in INFERENCE_PIPELINES.items() if not p.calls_dnet] == ["cfenet"]
    assert nnUNetTrainerUniSegDiff.pipeline_candidates == PIPELINES
    for name in PIPELINES:
        assert UniSegDiffSettings(pipeline=name).pipeline == name


def test_every_pipeline_type_is_registered_once_under_its_name_with_a_description():
    types = [type(p) for p in INFERENCE_PIPELINES.values()]
    assert sorted(types, key=str) == sorted(InferencePipeline.__subclasses__(), key=str)  # none left out
    assert all(name == p.name for name, p in INFERENCE_PIPELINES.items())  # so no name was registered twice
    texts = [p.describe(UniSegDiffSettings(pipeline=name)) for name, p in INFERENCE_PIPELINES.items()]
    assert all(t and "\n" not in t for t in [*texts, *(p.description for p in INFERENCE_PIPELINES.values())])
    assert len(set(texts)) == len(texts)


def test_the_readme_lists_every_pipeline_in_the_registry_order():
    section = README.read_text().split("## Inference pipelines\n", 1)[1].split("\n## ", 1)[0]
    listed = [line.split("`")[1] for line in section.splitlines() if line.startswith("- `")]
    assert tuple(listed) == PIPELINES


class _WatchedInputs(PipelineInputs):
    """PipelineInputs that note whether a pipeline read the network's draws."""
    read_draws = False

    @property
    def draws(self):
        self.read_draws = True
        return self._draws

    @draws.setter
    def draws(self, value):
        self._draws = value


@pytest.mark.parametrize("name", PIPELINES)
def test_each_pipeline_alone_is_what_it_declares(net, name):
    """Alone, each pipeline gives what it gives among all; it calls DNet and reads the draws as it declares."""
    pipeline, x = INFERENCE_PIPELINES[name], torch.randn(1, 3, 32, 32)
    together = pipeline_probabilities(net, x, PIPELINES)[name]
    dnet_calls = []
    hook = net.dnet.register_forward_hook(lambda *_: dnet_calls.append(1))
    try:
        alone = pipeline_probabilities(net, x, [name])[name]
    finally:
        hook.remove()
    assert torch.equal(alone, together)
    assert bool(dnet_calls) == pipeline.calls_dnet
    logits, cond = net.condition(x)
    inputs = _WatchedInputs(net, x, logits, cond, net.sample(x, cond=cond).masks)
    assert torch.equal(pipeline.probabilities(inputs), together)
    assert inputs.read_draws == pipeline.uses_draws


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
    assert torch.equal(out["cfenet-gated"], gate_components(out["cfenet"], out["diffusion+cfenet"]))
    paper = replace(PAPER_SAMPLER, diffusion=SMALL.sampler.diffusion)
    assert torch.equal(out["paper"], fuse_masks(net.sample(x, StagedSampler(paper)).masks, 2, "staple", None))


def test_forward_runs_the_recorded_pipeline(net):
    x = torch.randn(1, 3, 32, 32)
    for mode in ("off", "free"):  # CFENet alone samples no draws: "free" leaves it as it is
        net.set_settings(replace(SMALL, pipeline="cfenet", temper_with_draws=mode))
        assert torch.equal(net(x), net.cfenet(x))  # nnU-Net's own logits, bit for bit
    net.set_settings(replace(SMALL, pipeline="rs"))
    rs = pipeline_probabilities(net, x, ["rs"])["rs"]
    assert torch.equal(net(x).argmax(1), rs.argmax(1))


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_tempered_forward_keeps_the_segmentation_and_carries_the_draws(net, pipeline):
    x = torch.randn(2, 3, 32, 32)
    net.set_settings(replace(SMALL, pipeline=pipeline, temper_with_draws="off"))
    plain = net(x)
    net.set_settings(replace(SMALL, pipeline=pipeline, temper_with_draws="on"))
    tempered = net(x)
    assert torch.equal(tempered.argmax(1), plain.argmax(1))
    expected = temper_by_draws(pipeline_probabilities(net, x, [pipeline])[pipeline], net.sample(x).masks)
    assert torch.allclose(tempered, probabilities_to_logits(expected))
    assert (tempered.softmax(1).amax(1) <= plain.softmax(1).amax(1) + 1e-6).all()  # only ever less sure
    net.set_settings(replace(SMALL, pipeline=pipeline, temper_with_draws="free"))  # the default
    assert torch.equal(net(x), tempered if pipeline in DRAW_PIPELINES else plain)


def test_tempering_samples_the_draws_once(net, monkeypatch):
    x = torch.randn(1, 3, 32, 32)
    calls = []
    sample = net.sample
    monkeypatch.setattr(net, "sample", lambda *a, **k: calls.append(1) or sample(*a, **k))
    pipeline_probabilities(net, x, ["cfenet", "diffusion", "cfenet-gated"], temper=True)
    assert len(calls) == 1


def test_temper_by_draws_shrinks_by_the_draws_disagreement():
    """Three classes, four pixels: all draws agree; 3 of 4 agree; draws split evenly over two classes; over
    three classes (impossible with 4 draws: 2-1-1 instead)."""
    probs = torch.tensor([0.7, 0.2, 0.1]).view(1, 3, 1, 1).expand(1, 3, 1, 4).clone()  # (B, C, 1, 4)
    masks = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 1], [0, 0, 1, 2]]).T.reshape(1, 4, 1, 4)
    out = temper_by_draws(probs, masks)
    lam = 0.99 * (1 - torch.tensor([1.0, 0.75, 0.5, 0.5])) / (1 - 1 / 3)
    assert torch.allclose(out[0, :, 0], (1 - lam) * probs[0, :, 0] + lam / 3)
    assert torch.equal(out[0, :, 0, 0], probs[0, :, 0, 0])  # unanimous draws: untouched
    assert torch.equal(out.argmax(1), probs.argmax(1)) and torch.allclose(out.sum(1), torch.ones(1, 1, 4))
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 3, 8, 8, generator=g).softmax(1)
    disagreeing = torch.randint(0, 3, (2, 10, 8, 8), generator=g)
    assert torch.equal(temper_by_draws(probs, disagreeing).argmax(1), probs.argmax(1))


def test_unknown_pipeline_is_refused(net):
    with pytest.raises(ValueError, match="unknown inference pipeline"):
        pipeline_probabilities(net, torch.randn(1, 3, 32, 32), ["nnunet"])
    with pytest.raises(ValueError, match="unknown inference pipeline"):
        UniSegDiffSettings(pipeline="nnunet")
    with pytest.raises(ValueError, match="temper_with_draws must be one of off, free, on, got True"):
        UniSegDiffSettings(temper_with_draws=True)


def test_given_condition_skips_cfenet_and_gives_the_same_probabilities(net, monkeypatch):
    x = torch.randn(2, 3, 32, 32)
    expected = pipeline_probabilities(net, x, PIPELINES)
    condition = net.condition(x)
    monkeypatch.setattr(net, "condition", lambda image: pytest.fail("CFENet ran again"))
    for name, probs in pipeline_probabilities(net, x, PIPELINES, condition).items():
        assert torch.equal(probs, expected[name])


def _one_hot(labels: torch.Tensor, num_classes: int, sure: float = 0.9) -> torch.Tensor:
    """(B, *spatial) labels -> (B, C, *spatial) probabilities with `sure` on the label."""
    onehot = torch.nn.functional.one_hot(labels, num_classes).movedim(-1, 1).float()
    return onehot * sure + (1 - onehot) * (1 - sure) / (num_classes - 1)


@pytest.mark.parametrize("spatial", [(12, 12), (6, 12, 12)])
def test_gate_keeps_confirmed_components_whole_and_removes_the_others(spatial):
    """Two CFENet lesions (classes 1 and 2); the gate sees lesion in one pixel of the first only, and a lesion
    of its own elsewhere: the first is kept whole with its class, the second removed, the gate's own ignored."""
    cfenet = torch.zeros(1, *spatial, dtype=torch.long)
    gate = torch.zeros_like(cfenet)
    cfenet[..., 1:4, 1:4] = 1
    cfenet[..., 7:10, 7:10] = 2
    gate[..., 2, 2] = 1
    gate[..., 10:12, 0:2] = 1
    probs, gate_probs = _one_hot(cfenet, 3), _one_hot(gate, 3, sure=0.6)
    out = gate_components(probs, gate_probs)
    expected = cfenet.clone()
    expected[..., 7:10, 7:10] = 0
    assert torch.equal(out.argmax(1), expected)
    out, probs, gate_probs = (t.movedim(1, -1) for t in (out, probs, gate_probs))  # classes last
    assert torch.equal(out[cfenet == 0], probs[cfenet == 0])  # background as CFENet says, gate's lesion too
    assert torch.equal(out[cfenet == 1], probs[cfenet == 1])
    assert torch.equal(out[cfenet == 2], gate_probs[cfenet == 2])


def test_gate_works_per_image_of_a_batch():
    cfenet = torch.zeros(2, 8, 8, dtype=torch.long)
    cfenet[:, 2:5, 2:5] = 1
    gate = torch.zeros_like(cfenet)
    gate[1, 3, 3] = 1  # confirms image 1's lesion only
    out = gate_components(_one_hot(cfenet, 2), _one_hot(gate, 2))
    assert not out.argmax(1)[0].any() and torch.equal(out.argmax(1)[1], cfenet[1])


def test_exported_map_names_the_pipeline_and_whether_it_is_tempered():
    free = {p: exported_map(UniSegDiffSettings(pipeline=p)) for p in PIPELINES}
    for p, text in free.items():
        assert f"`{p}`" in text and ("tempered" in text) == (p in DRAW_PIPELINES), text
    assert "STAPLE" not in free["cfenet"] and "nnU-Net's own" in free["cfenet"]
    assert "tempered" in exported_map(UniSegDiffSettings(pipeline="cfenet", temper_with_draws="on"))
    assert "tempered" not in exported_map(UniSegDiffSettings(pipeline="diffusion", temper_with_draws="off"))
    assert "the vote of" in exported_map(UniSegDiffSettings(pipeline="diffusion", fusion="vote"))
