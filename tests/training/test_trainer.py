"""nnUNetTrainerUniSegDiff in-process: phases, the switch, resume in each phase, reuse of a plain
nnUNetTrainer checkpoint, ablation variants, and the phase-B step under DDP (gloo, 2 processes)."""
import copy
import json
import multiprocessing as mp
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_unisegdiff.diffusion.sampler import StagedSampler
from nnunet_unisegdiff.diffusion.sampling_plans import DDIMPlan, StagedPlan
from nnunet_unisegdiff.diffusion.schedule import linear_alphas_cumprod, split_prediction
from nnunet_unisegdiff.diffusion.settings import DiffusionSettings
from nnunet_unisegdiff.diffusion.staged import StagedObjective
from nnunet_unisegdiff.model.dnet import DNet
from nnunet_unisegdiff.model.plans import tiny_plans
from nnunet_unisegdiff.training.trainer import CFENET_CHECKPOINT_ENV, nnUNetTrainerUniSegDiff
from nnunet_unisegdiff.training.variants import (
    nnUNetTrainerUniSegDiffNoDCA,
    nnUNetTrainerUniSegDiffPaper,
    nnUNetTrainerUniSegDiffUniformEps,
)

DATASET_JSON = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "lesion": 1},
                "numTraining": 2, "file_ending": ".png"}


class Tiny(nnUNetTrainerUniSegDiff):
    num_epochs_cfenet, num_epochs_dnet = 2, 2
    unisegdiff = replace(nnUNetTrainerUniSegDiff.unisegdiff, dnet_width=0.5,
                         sampler=StagedPlan(draws_per_branch=2))


@pytest.fixture
def nnunet_dirs(nnunet_env, monkeypatch):
    data = nnunet_env / "nnUNet_preprocessed" / "Dataset999_Tiny" / "nnUNetPlans_x"
    data.mkdir(parents=True)
    (data / "case.b2nd").touch()  # nnU-Net infers the dataset format from the file ending
    monkeypatch.delenv(CFENET_CHECKPOINT_ENV, raising=False)
    return nnunet_env


def make(cls=Tiny, dataset_json=DATASET_JSON, dim=2, config="2d"):
    plans = tiny_plans(dim, config=config)
    plans["continue_training"] = False
    torch.manual_seed(0)
    trainer = cls(plans, config, 0, copy.deepcopy(dataset_json), torch.device("cpu"))
    trainer.initialize()
    return trainer


def fake_step(trainer, classes=2):
    """One optimiser step of the active phase on random data, so optimiser state exists."""
    spatial = tuple(trainer.configuration_manager.patch_size)
    x = torch.randn(2, 3, *spatial)
    labels = torch.randint(0, classes, (2, 1, *spatial))
    target = [labels] + [labels[(..., *[slice(None, None, 2 ** i)] * len(spatial))] for i in range(1, 4)]
    return trainer.train_step({"data": x, "target": target})


def predict_tile(trainer, image):
    """What nnU-Net's predictor does with the trained network: sliding window over one image."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, type(trainer).__name__, None)
    trainer.network.eval()
    return predictor.predict_sliding_window_return_logits(image)


def test_phase_a_is_nnunets_own_training_of_the_bare_cfenet(nnunet_dirs):
    t = make()
    assert t.phase == "A" and t.network is t.composite.cfenet
    assert isinstance(t.optimizer, torch.optim.SGD)
    assert {id(p) for g in t.optimizer.param_groups for p in g["params"]} == \
        {id(p) for p in t.composite.cfenet.parameters()}
    assert t.composite.cfenet.decoder.deep_supervision
    assert not any(p.requires_grad for p in t.composite.dnet.parameters())
    out = fake_step(t)
    assert np.isfinite(out["loss"])


def test_switch_freezes_cfenet_and_trains_dnet_with_adamw(nnunet_dirs):
    t = make()
    t._best_ema = 0.9
    t.current_epoch = Tiny.num_epochs_cfenet
    t.on_train_epoch_start()
    net = t.composite
    assert t.phase == "B" and t.network is net and t._best_ema is None
    assert_demo_sees_phase_b(t.log_file)
    assert isinstance(t.optimizer, torch.optim.AdamW)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(Tiny.dnet_lr)
    assert not net.cfenet.training and net.dnet.training and bool(net.dnet_trained)
    assert not net.cfenet.decoder.deep_supervision
    before = [p.clone() for p in net.cfenet.parameters()]
    out = fake_step(t)
    assert {"loss", "train_loss_rs", "train_loss_pm", "train_loss_dr"} <= out.keys()
    assert all(torch.equal(a, b) for a, b in zip(before, net.cfenet.parameters())), "CFENet must stay frozen"
    val = t.validation_step({"data": torch.randn(2, 3, 32, 32), "target": (torch.rand(2, 1, 32, 32) > .5).long()})
    assert val["tp_hard"].shape == (1,) and np.isfinite(val["loss"])


def assert_demo_sees_phase_b(log_file):
    """The demo's progress parser recognises the switch in the trainer's real log."""
    from nnunet_unisegdiff.demo.progress import TrainParser

    class Progress:
        desc = None

        def update(self, n=None, info=None, desc=None):
            self.desc = desc or self.desc

    progress = Progress()
    parser = TrainParser(progress, num_epochs=4)
    for line in open(log_file).read().splitlines():
        parser(line)
    assert progress.desc == "epochs (phase B: DNet)"


def test_cosine_schedule_over_phase_b():
    from nnunet_unisegdiff.training.trainer import CosineLRScheduler
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], 1.0)
    sched = CosineLRScheduler(opt, 1e-4, start_epoch=10, num_epochs=4)
    lrs = []
    for epoch in range(10, 15):
        sched.step(epoch)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-4) and lrs[2] == pytest.approx(5e-5) and lrs[4] == pytest.approx(0)


@pytest.mark.parametrize("where", ["in phase A", "at the switch", "in phase B"])
def test_resume_restores_the_phase_its_optimiser_and_the_epoch(nnunet_dirs, where):
    t = make()
    epoch = {"in phase A": 0, "at the switch": 1, "in phase B": 2}[where]
    if epoch >= Tiny.num_epochs_cfenet:
        t.current_epoch = epoch
        t.on_train_epoch_start()
    fake_step(t)
    t.current_epoch = epoch
    path = str(nnunet_dirs / "checkpoint_latest.pth")
    t.save_checkpoint(path)
    assert not os.path.exists(path + ".partial")

    r = make()
    r.load_checkpoint(path)
    assert r.current_epoch == epoch + 1 and r.phase == t.phase
    assert type(r.optimizer) is type(t.optimizer)
    for a, b in zip(r.optimizer.state.values(), t.optimizer.state.values()):
        for key in a:
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key]))
    sd_r, sd_t = r.composite.state_dict(), t.composite.state_dict()
    assert sd_r.keys() == sd_t.keys()  # tensors, and the settings record (a dict under _extra_state)
    assert all(torch.equal(sd_r[k], sd_t[k]) if torch.is_tensor(sd_t[k]) else sd_r[k] == sd_t[k] for k in sd_t)
    r.on_train_epoch_start()  # the next epoch picks the right phase
    assert r.phase == ("A" if epoch + 1 < Tiny.num_epochs_cfenet else "B")
    assert np.isfinite(fake_step(r)["loss"])


def test_resume_refuses_a_checkpoint_with_another_phase_split(nnunet_dirs):
    t = make()
    path = str(nnunet_dirs / "ckpt.pth")
    t.save_checkpoint(path)

    class Longer(Tiny):
        num_epochs_cfenet = 5

    with pytest.raises(RuntimeError, match="CFENet epochs"):
        make(Longer).load_checkpoint(path)


def _write_nnunettrainer_checkpoint(root, weights):
    folder = root / "nnUNet_results" / "Dataset999_Tiny" / "nnUNetTrainer__nnUNetPlans__2d" / "fold_0"
    folder.mkdir(parents=True)
    path = folder / "checkpoint_final.pth"
    torch.save({"network_weights": weights, "trainer_name": "nnUNetTrainer", "current_epoch": 1000,
                "_best_ema": 0.8}, path)
    return path


def test_reuses_a_trained_nnunettrainer_as_cfenet_and_skips_phase_a(nnunet_dirs):
    donor = make().composite.cfenet
    with torch.no_grad():
        for p in donor.parameters():
            p.add_(1.0)
    path = _write_nnunettrainer_checkpoint(nnunet_dirs, donor.state_dict())
    t = make()
    t._maybe_reuse_cfenet()
    assert t.current_epoch == Tiny.num_epochs_cfenet
    assert all(torch.equal(a, b) for a, b in zip(t.composite.cfenet.state_dict().values(),
                                                  donor.state_dict().values()))
    assert len(t.logger.get_value("train_losses", None)) == Tiny.num_epochs_cfenet
    # every list of nnU-Net's logger, the per-stage losses included, has one entry per skipped epoch
    logs = t.logger.get_checkpoint()
    assert {"train_loss_rs", "train_loss_pm", "train_loss_dr"} <= logs.keys()
    assert all(len(values) == Tiny.num_epochs_cfenet for values in logs.values())
    assert str(path) in open(t.log_file).read()
    t.on_train_epoch_start()
    t.on_epoch_start()
    assert t.phase == "B"


@pytest.mark.parametrize("case", ["opt-out", "pretrained weights"])
def test_no_reuse_when_opted_out_or_pretrained_weights_were_loaded(nnunet_dirs, monkeypatch, case):
    _write_nnunettrainer_checkpoint(nnunet_dirs, make().composite.cfenet.state_dict())
    t = make()
    if case == "opt-out":
        monkeypatch.setenv(CFENET_CHECKPOINT_ENV, "none")
    else:  # what `-pretrained_weights` does after initialize()
        with torch.no_grad():
            next(t.composite.cfenet.parameters()).mul_(2)
    t._maybe_reuse_cfenet()
    assert t.current_epoch == 0 and t.phase == "A"


def test_objective_and_sampler_with_different_diffusion_settings_are_refused(nnunet_dirs):
    class Mismatched(Tiny):
        objective = StagedObjective(diffusion=DiffusionSettings(high=700))
    with pytest.raises(ValueError, match="diffusion settings"):
        make(Mismatched)


def test_region_labels_are_refused_up_front(nnunet_dirs):
    regions = dict(DATASET_JSON, labels={"background": 0, "whole": [1, 2], "core": 2}, regions_class_order=[1, 2])
    with pytest.raises(RuntimeError, match="region-based"):
        make(dataset_json=regions)


def test_variants_build_their_own_network_for_the_predictor(nnunet_dirs):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    pm = PlansManager(tiny_plans(2))
    # called on the class, as nnUNetPredictor does (the trainer is never instantiated at inference)
    net = nnUNetTrainerUniSegDiffNoDCA.build_network_architecture(pm, pm.get_configuration("2d"), 3, 2,
                                                                  enable_deep_supervision=False)
    assert not any(net.dnet.uses_dca) and not net.cfenet.decoder.deep_supervision
    eps_net = nnUNetTrainerUniSegDiffUniformEps.build_network_architecture(pm, pm.get_configuration("2d"), 3, 2)
    assert isinstance(eps_net.sampler.plan, DDIMPlan) and eps_net.sampler.plan.steps == 100


@pytest.mark.parametrize("dim, config, classes", [(3, "3d_fullres", 2), (2, "2d", 3)])
def test_phase_b_step_and_prediction_for_3d_plans_and_multiclass_labels(nnunet_dirs, dim, config, classes):
    labels = {"background": 0, **{f"lesion{k}": k for k in range(1, classes)}}
    t = make(dataset_json=dict(DATASET_JSON, labels=labels), dim=dim, config=config)
    t.current_epoch = Tiny.num_epochs_cfenet
    t.on_train_epoch_start()
    assert np.isfinite(fake_step(t, classes)["loss"])
    spatial = tuple(t.configuration_manager.patch_size)
    # nnU-Net's layout is always (c, x, y, z); 2D data has x = 1. Larger than a patch: several tiles
    image = torch.randn(3, *([1] if dim == 2 else []), *[s + 3 for s in spatial])
    logits = predict_tile(t, image)
    assert logits.shape == (classes, *image.shape[1:]) and torch.isfinite(logits).all()
    probs = logits.float().softmax(0)
    assert torch.allclose(probs.sum(0), torch.ones(1), atol=1e-3)


# ---- DDP --------------------------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, store_path: str, queue) -> None:
    import torch.distributed as dist
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from torch.nn.parallel import DistributedDataParallel as DDP

    from nnunet_unisegdiff.diffusion.staged import phase_b_loss
    from nnunet_unisegdiff.model.network import build_unisegdiff_network
    from nnunet_unisegdiff.training.losses import segmentation_loss

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    pm = PlansManager(tiny_plans(2))
    torch.manual_seed(0)  # identical initial weights on both ranks
    net = build_unisegdiff_network(pm, pm.get_configuration("2d"), 3, 2, False, Tiny.unisegdiff)
    net.cfenet.requires_grad_(False)
    net.freeze_cfenet = True
    ddp = DDP(net)  # as nnU-Net wraps: no find_unused_parameters
    seg = segmentation_loss()
    grads = []
    for step in range(2):  # a second step fails if any DNet parameter went without a gradient
        g = torch.Generator().manual_seed(100 * rank + step)  # different data per rank
        x = torch.randn(2, 3, 32, 32, generator=g)
        labels = (torch.rand(2, 1, 32, 32, generator=g) > 0.6).long()
        ddp.zero_grad()
        loss, _ = phase_b_loss(lambda x_t, t, x=x: ddp(x, x_t, t), labels, StagedObjective(), seg,
                               net.sampler.alphas_cumprod, 2, g)
        loss.backward()
        grads = [p.grad.clone() for p in net.dnet.parameters()]
    gathered = [None] * world
    dist.all_gather_object(gathered, grads)
    if rank == 0:
        queue.put([max((a - b).abs().max().item() for a, b in zip(gathered[0], gathered[1])),
                   sum(g.abs().sum().item() for g in grads),
                   all(p.grad is None for p in net.cfenet.parameters())])
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes
def test_phase_b_step_under_ddp_gloo_gives_identical_gradients_on_both_ranks(tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, str(tmp_path / "store"), queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    max_diff, grad_mass, cfenet_untouched = queue.get(timeout=5)
    assert grad_mass > 0 and max_diff < 1e-6 and cfenet_untouched


def test_paper_variant_samples_the_papers_plan_call_for_call():
    """nnUNetTrainerUniSegDiffPaper keeps the paper one setting away: the same 12 calls, batch sizes and
    told timesteps as the default, STAPLE fusion, and every DR draw from the eps decoder (the default
    takes the x0 decoder's output of the same call)."""
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[:, 2:6, 3:7] = 1
    x0 = 2 * torch.nn.functional.one_hot(labels, 2).permute(0, 3, 1, 2).float() - 1
    ab = linear_alphas_cumprod()

    def plan_and_masks(plan):
        calls = []

        def eps_right_x0_wrong_at_dr(x_t, told):  # true eps at the real noise level; x0 head inverted at DR
            calls.append((x_t.shape[0], int(told[0])))
            real_t = plan.diffusion.low - 1 if int(told[0]) == 0 else int(told[0])
            target = x0.repeat(x_t.shape[0], 1, 1, 1)
            _, eps = split_prediction(x_t, torch.full((x_t.shape[0],), real_t), target, "x0", ab)
            return eps, (-20 if int(told[0]) == 0 else 20) * target

        masks = StagedSampler(plan).sample(eps_right_x0_wrong_at_dr, x0.shape, "cpu",
                                             torch.Generator().manual_seed(0)).masks
        return calls, masks

    paper = nnUNetTrainerUniSegDiffPaper.unisegdiff
    assert paper.fusion == "staple" and not paper.sampler.clamp_x0 and paper.sampler.dr_head == "eps"
    paper_calls, paper_masks = plan_and_masks(paper.sampler)
    default_calls, default_masks = plan_and_masks(nnUNetTrainerUniSegDiff.unisegdiff.sampler)
    assert paper_calls == default_calls == [(1, 999)] + [(2, t) for t in range(599, 299, -30)] + [(20, 0)]
    assert torch.equal(paper_masks[0], labels.expand(20, -1, -1))  # eps decoder: the true mask
    assert torch.equal(default_masks[0], 1 - labels.expand(20, -1, -1))  # x0 decoder's (inverted) output


def test_pipeline_chosen_after_phase_b_is_recorded_in_the_fold_and_the_checkpoint(nnunet_dirs, monkeypatch):
    t = make()
    t._enter_phase("B")
    rng = np.random.default_rng(0)
    cases = []
    for i in range(3):
        ref = np.zeros((1, 32, 32), dtype=np.int16)  # nnU-Net's 2D layout: (1, H, W), data (C, 1, H, W)
        ref[:, 8:20, 10:22] = i > 0  # one lesion-free case
        cases.append((f"case{i}", rng.normal(size=(3, 1, 32, 32)).astype(np.float32), ref))
    monkeypatch.setattr(type(t), "_validation_cases", lambda self: iter(cases))
    chosen = t.choose_inference_pipeline()
    record = json.loads((Path(t.output_folder) / "inference_pipeline.json").read_text())
    assert record["chosen"] == chosen == t.composite.settings.pipeline
    assert list(record["table"]) == list(t.pipeline_candidates)
    assert all(r["cases"] == 3 and r["lesion_free"] == 1 for r in record["table"].values())
    t.save_checkpoint(os.path.join(t.output_folder, "checkpoint_final.pth"))
    saved = torch.load(os.path.join(t.output_folder, "checkpoint_final.pth"), weights_only=False)
    assert saved["network_weights"]["_extra_state"]["settings"]["pipeline"] == chosen


def test_fixed_pipeline_variants_skip_the_choice(nnunet_dirs, monkeypatch):
    t = make(nnUNetTrainerUniSegDiffPaper)
    t._enter_phase("B")
    monkeypatch.setattr(type(t), "_validation_cases", lambda self: pytest.fail("no validation scoring expected"))
    assert t.choose_inference_pipeline() == "diffusion" == t.composite.settings.pipeline


@pytest.mark.parametrize("pipeline, mirrored", [("cfenet", True), ("rs", False)])
def test_checkpoint_mirrors_at_test_time_as_nnunet_does_when_cfenet_is_chosen(nnunet_dirs, pipeline, mirrored):
    t = make(type("Fixed", (Tiny,), {"inference_pipeline": pipeline}))
    t.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert t.plan_mirroring_axes == (0, 1) and t.inference_allowed_mirroring_axes is None  # before the choice
    t._enter_phase("B")
    t.choose_inference_pipeline()
    t.save_checkpoint(os.path.join(t.output_folder, "checkpoint_final.pth"))
    saved = torch.load(os.path.join(t.output_folder, "checkpoint_final.pth"), weights_only=False)
    assert saved["inference_allowed_mirroring_axes"] == ((0, 1) if mirrored else None)  # what nnUNetv2_predict reads


def test_phase_a_takes_nnunets_optimizer_hook_so_optimizer_variants_apply(nnunet_dirs):
    from nnunetv2.training.nnUNetTrainer.variants.optimizer.nnUNetTrainerAdam import nnUNetTrainerAdam

    class TinyAdam(Tiny, nnUNetTrainerAdam):  # nnU-Net's optimizer variant mixed in after UniSegDiff
        pass

    t = make(TinyAdam)
    assert type(t.optimizer) is torch.optim.AdamW and t.phase == "A"  # nnUNetTrainerAdam's choice
    assert {id(p) for g in t.optimizer.param_groups for p in g["params"]} == \
        {id(p) for p in t.composite.cfenet.parameters()}
    t.lr_scheduler.step(Tiny.num_epochs_cfenet - 1)  # the schedule spans the phase-A epochs only
    a = Tiny.num_epochs_cfenet  # nnU-Net's poly schedule over A epochs, not over A + B
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(t.initial_lr * (1 - (a - 1) / a) ** 0.9)
    t._enter_phase("B")
    assert {id(p) for g in t.optimizer.param_groups for p in g["params"]} == \
        {id(p) for p in t.composite.dnet.parameters()}
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(Tiny.dnet_lr)


def test_dnet_alone_is_compiled_where_nnunets_rule_compiles(nnunet_dirs, monkeypatch):
    """nnU-Net never compiles the composite (its sampling loop stays eager); DNet is compiled where the rule
    next in the trainer's MRO (nnUNetTrainer's, or a mixin's) says nnU-Net would compile."""
    compiled = []
    monkeypatch.setattr(DNet, "compile", lambda self, *a, **k: compiled.append(self))
    make()
    assert compiled == []  # nnU-Net's rule: never on the CPU

    class NoCompile(nnUNetTrainer):  # an nnU-Net trainer variant, mixed in after UniSegDiff
        def _do_i_compile(self) -> bool:
            return False

    monkeypatch.setattr(nnUNetTrainer, "_do_i_compile", lambda self: True)
    t = make()
    assert compiled == [t.composite.dnet] and not t._do_i_compile()
    assert not isinstance(t.network, torch._dynamo.eval_frame.OptimizedModule)
    make(type("TinyMixedIn", (Tiny, NoCompile), {}))  # the variant's rule decides
    assert len(compiled) == 1
