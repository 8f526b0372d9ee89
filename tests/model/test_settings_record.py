"""Inference settings travel with the weights: a state dict records sampler, fusion, STAPLE prior, seed
and pipeline, and a network built with other class defaults predicts as the recorded one did; a state
dict saved before the record existed still loads and predicts with the class's settings."""
import logging
from dataclasses import replace

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_unisegdiff.diffusion.sampling_plans import StagedPlan
from nnunet_unisegdiff.model.network import UniSegDiffSettings
from nnunet_unisegdiff.model.plans import tiny_plans
from nnunet_unisegdiff.model.settings import PIPELINES, settings_from_dict, settings_to_dict
from nnunet_unisegdiff.training.trainer import nnUNetTrainerUniSegDiff

TRAINED = UniSegDiffSettings(dnet_width=0.5, token_budget=64, sampler=StagedPlan(draws_per_branch=2, dr_head="eps"),
                             staple_pseudo_pixels=0.05, seed=7, pipeline="diffusion+cfenet")


def _build(monkeypatch, settings: UniSegDiffSettings, seed: int = 0):
    """The network as nnU-Net's predictor builds it: from the trainer class, whose defaults are `settings`."""
    monkeypatch.setattr(nnUNetTrainerUniSegDiff, "unisegdiff", settings)
    pm = PlansManager(tiny_plans(2))
    torch.manual_seed(seed)
    net = nnUNetTrainerUniSegDiff.build_network_architecture(pm, pm.get_configuration("2d"), 3, 2, False)
    net.dnet_trained.fill_(True)
    return net.eval()


def test_settings_round_trip_through_a_plain_dict():
    for pipeline in PIPELINES:
        s = replace(TRAINED, pipeline=pipeline, staple_pseudo_pixels=None)
        assert settings_from_dict(settings_to_dict(s)) == s


def test_recorded_settings_win_over_changed_class_defaults(monkeypatch):
    trained = _build(monkeypatch, TRAINED, seed=1)
    x = torch.randn(1, 3, 32, 32)
    expected = trained(x)
    checkpoint = trained.state_dict()
    # the code's defaults change after training (another pipeline, seed, decoder and prior)
    today = replace(TRAINED, sampler=StagedPlan(draws_per_branch=2), staple_pseudo_pixels=0.5, seed=3,
                    pipeline="paper")
    loaded = _build(monkeypatch, today, seed=2)
    assert not torch.equal(loaded(x), expected)  # the class defaults alone would predict differently
    loaded.load_state_dict(checkpoint)
    assert loaded.settings == TRAINED
    assert loaded.sampler.plan == TRAINED.sampler
    assert torch.equal(loaded(x), expected)


def test_checkpoint_without_a_record_predicts_with_the_class_settings_and_says_so(monkeypatch, caplog):
    old = _build(monkeypatch, TRAINED, seed=1)
    x = torch.randn(1, 3, 32, 32)
    expected = old(x)
    checkpoint = {k: v for k, v in old.state_dict().items() if k != "_extra_state"}  # as saved before the record
    loaded = _build(monkeypatch, replace(TRAINED, seed=TRAINED.seed), seed=2)
    with caplog.at_level(logging.WARNING, logger="nnunet_unisegdiff"):
        loaded.load_state_dict(checkpoint, strict=True)
    assert "without recorded inference settings" in caplog.text and "pipeline='diffusion+cfenet'" in caplog.text
    assert torch.equal(loaded(x), expected)


def test_a_record_of_another_architecture_is_refused_with_the_field_named(monkeypatch):
    net = _build(monkeypatch, TRAINED)
    state = net.get_extra_state()
    state["settings"]["dnet_width"] = 1.0
    with pytest.raises(ValueError, match="dnet_width"):
        net.set_extra_state(state)


def test_a_record_with_unknown_or_missing_fields_is_refused():
    with pytest.raises(ValueError, match="temperature"):
        settings_from_dict(settings_to_dict(TRAINED) | {"temperature": 2.0})
    missing = settings_to_dict(TRAINED)
    del missing["seed"]
    with pytest.raises(ValueError, match="missing \\['seed'\\]"):
        settings_from_dict(missing)
