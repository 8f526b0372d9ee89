"""Inference settings travel with the weights: a state dict records sampler, fusion, STAPLE prior, seed
and pipeline, and a network built with other class defaults predicts as the recorded one did; a state
dict saved before the record existed still loads and predicts with the class's settings, and one of
record format 1 (the sampler as one flat dict of every plan's fields) predicts as the plan it ran."""
import copy
import json
import logging
from dataclasses import replace

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_unisegdiff.diffusion.sampling_plans import DDIMPlan, OneStepPlan, StagedPlan
from nnunet_unisegdiff.diffusion.settings import DiffusionSettings
from nnunet_unisegdiff.model.network import UniSegDiffSettings
from nnunet_unisegdiff.model.pipelines import PIPELINES
from nnunet_unisegdiff.model.plans import tiny_plans
from nnunet_unisegdiff.model.settings import SETTINGS_FORMAT, settings_from_dict, settings_to_dict
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
    """Before the record there was no tempering either: the class's settings, untempered."""
    old = _build(monkeypatch, replace(TRAINED, temper_with_draws="off"), seed=1)
    x = torch.randn(1, 3, 32, 32)
    expected = old(x)
    checkpoint = {k: v for k, v in old.state_dict().items() if k != "_extra_state"}  # as saved before the record
    loaded = _build(monkeypatch, TRAINED, seed=2)
    with caplog.at_level(logging.WARNING, logger="nnunet_unisegdiff"):
        loaded.load_state_dict(checkpoint, strict=True)
    assert "without recorded inference settings" in caplog.text and "pipeline='diffusion+cfenet'" in caplog.text
    assert "temper_with_draws='off'" in caplog.text and loaded.settings.temper_with_draws == "off"
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


PLAN_OF_EACH_KIND = [StagedPlan(draws_per_branch=3, renoise="none", clamp_x0=False, interval=50,
                                diffusion=DiffusionSettings(high=700, low=200)),
                     DDIMPlan(samples=3, steps=4, prediction="x0", eta=0.5),
                     OneStepPlan(samples=4, diffusion=DiffusionSettings(num_timesteps=500, high=400, low=100))]


@pytest.mark.parametrize("plan", PLAN_OF_EACH_KIND, ids=lambda p: p.kind)
def test_a_record_of_each_plan_kind_names_the_kind_and_round_trips(plan):
    settings = replace(TRAINED, sampler=plan)
    record = settings_to_dict(settings)
    assert record["sampler"] == {"kind": plan.kind, **{k: v for k, v in vars(plan).items() if k != "diffusion"},
                                 "diffusion": vars(plan.diffusion)}
    assert json.loads(json.dumps(record)) == record  # plain numbers and strings
    assert settings_from_dict(record) == settings


def test_networks_write_records_of_format_3_that_name_the_plan_kind_and_the_tempering(monkeypatch):
    state = _build(monkeypatch, TRAINED).get_extra_state()
    assert state["format"] == SETTINGS_FORMAT == 3 and state["settings"]["sampler"]["kind"] == "staged"
    assert state["settings"]["temper_with_draws"] == "free"


def test_a_format_2_record_predicts_untempered_as_it_did(monkeypatch):
    """Models of format 2 exported their pipeline's probabilities as they were: loaded by a version whose
    default tempers, they still do, bit for bit."""
    untempered = replace(TRAINED, temper_with_draws="off")
    reference = _build(monkeypatch, untempered, seed=1)
    x = torch.randn(1, 3, 32, 32)
    expected = reference(x)
    checkpoint = reference.state_dict()
    record = settings_to_dict(untempered)
    del record["temper_with_draws"]
    checkpoint["_extra_state"] = {"format": 2, "settings": record}
    loaded = _build(monkeypatch, TRAINED, seed=2)
    assert loaded.settings.temper_with_draws == "free"
    assert not torch.equal(loaded(x), expected)  # today's defaults temper diffusion+cfenet
    loaded.load_state_dict(checkpoint)
    assert loaded.settings == untempered
    assert torch.equal(loaded(x), expected)
    with pytest.raises(ValueError, match="missing \\['temper_with_draws'\\]"):
        settings_from_dict(record, 3)  # a format-3 record must say


# A format-1 record exactly as the code before format 2 wrote it for TRAINED (SamplerConfig as one flat dict)
FORMAT_1_TRAINED = {
    "dnet_width": 0.5, "token_budget": 64, "use_dca": True,
    "sampler": {"plan": "staged", "draws_per_branch": 2, "interval": 30,
                "diffusion": {"num_timesteps": 1000, "high": 600, "low": 300, "beta_start": 0.0001, "beta_end": 0.02},
                "renoise": "fresh", "clamp_x0": True, "dr_head": "eps", "ddim_steps": 100, "ddim_prediction": "eps",
                "eta": 0.0},
    "fusion": "staple", "staple_pseudo_pixels": 0.05, "seed": 7, "pipeline": "diffusion+cfenet"}


@pytest.mark.parametrize("old_sampler, plan", [
    ({}, TRAINED.sampler),
    ({"plan": "ddim", "draws_per_branch": 3, "ddim_steps": 4, "ddim_prediction": "x0", "eta": 0.5},
     DDIMPlan(samples=3, steps=4, prediction="x0", eta=0.5)),
    ({"plan": "one-step", "draws_per_branch": 4}, OneStepPlan(samples=4)),
], ids=["staged", "ddim", "one-step"])
def test_a_format_1_record_loads_as_the_plan_it_ran_and_predicts_bit_identically(monkeypatch, old_sampler, plan):
    equivalent = replace(TRAINED, sampler=plan, temper_with_draws="off")
    reference = _build(monkeypatch, equivalent, seed=1)
    x = torch.randn(1, 3, 32, 32)
    expected = reference(x)
    checkpoint = reference.state_dict()
    old = copy.deepcopy(FORMAT_1_TRAINED)
    old["sampler"].update(old_sampler)
    checkpoint["_extra_state"] = {"format": 1, "settings": old}
    loaded = _build(monkeypatch, replace(TRAINED, sampler=StagedPlan(), seed=3, pipeline="paper"), seed=2)
    loaded.load_state_dict(checkpoint)
    assert loaded.settings == equivalent and loaded.sampler.plan == plan
    assert torch.equal(loaded(x), expected)


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("seed"), "UniSegDiff settings .* missing \\['seed'\\]"),
    (lambda r: r["sampler"].update(temperature=1.0), "format-1 sampler .* unknown \\['temperature'\\], missing \\[\\]"),
    (lambda r: r["sampler"].pop("ddim_steps"), "format-1 sampler .* missing \\['ddim_steps'\\]"),
    (lambda r: r["sampler"]["diffusion"].pop("beta_end"), "diffusion settings .* missing \\['beta_end'\\]"),
    (lambda r: r["sampler"].update(plan="ddpm"), "unknown plan 'ddpm'"),
])
def test_a_format_1_record_with_other_fields_is_refused_with_the_field_named(change, message):
    old = copy.deepcopy(FORMAT_1_TRAINED)
    change(old)
    with pytest.raises(ValueError, match=message):
        settings_from_dict(old, 1)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(draws_per_branch=2), "ddim sampling plan .* unknown \\['draws_per_branch'\\]"),
    (lambda s: s.pop("eta"), "ddim sampling plan .* missing \\['eta'\\]"),
    (lambda s: s["diffusion"].update(schedule="cosine"), "diffusion settings .* unknown \\['schedule'\\]"),
    (lambda s: s.update(kind="ddpm"), "unknown kind 'ddpm'; this version knows staged, ddim, one-step"),
    (lambda s: s.pop("kind"), "unknown kind None"),
    (lambda s: s.update(steps=0), "DDIMPlan.steps must be a positive integer"),
])
def test_a_format_2_plan_record_with_other_fields_is_refused_with_the_field_named(change, message):
    record = settings_to_dict(replace(TRAINED, sampler=DDIMPlan()))
    change(record["sampler"])
    with pytest.raises(ValueError, match=message):
        settings_from_dict(record)


def test_a_record_of_an_unknown_format_is_refused(monkeypatch):
    net = _build(monkeypatch, TRAINED)
    with pytest.raises(ValueError, match="format 4, this version reads formats 1, 2, 3"):
        net.set_extra_state({"format": 4, "settings": settings_to_dict(TRAINED)})
