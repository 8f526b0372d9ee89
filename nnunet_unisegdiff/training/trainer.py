"""nnUNetTrainerUniSegDiff: both phases of UniSegDiff in one `nnUNetv2_train` run.

Phase A (epochs [0, A)): CFENet, i.e. the plan's UNet, trained exactly as nnUNetTrainer trains it.
Phase B (epochs [A, A+B)): CFENet frozen, DNet trained with the staged loss, AdamW + cosine (paper).

`self.network` is the module being trained (bare CFENet in A, so `-pretrained_weights` with a plain
nnU-Net checkpoint loads as usual; the composite in B), DDP-wrapped when nnU-Net runs DDP.
Checkpoints always hold the composite plus the phase whose optimiser state they carry.
"""
from __future__ import annotations

import math
import os
from dataclasses import replace
from os.path import isfile, join
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.paths import nnUNet_results
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import autocast, nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_unisegdiff.diffusion.staged import Stage, StagedObjective, phase_b_loss
from nnunet_unisegdiff.model.network import (UniSegDiffNetwork, UniSegDiffSettings, build_cfenet,
                                             build_unisegdiff_network)
from nnunet_unisegdiff.model.pipelines import PIPELINES
from nnunet_unisegdiff.training.augmentation import SegmentationAugmentation, augment_conditions, feature_noise
from nnunet_unisegdiff.training.log_messages import PHASE_B_START
from nnunet_unisegdiff.training.out_of_fold import (OutOfFoldConditions, assign_condition_folds, cfenet_state_dict,
                                                    find_other_folds, fit_stitches, fitting_images)
from nnunet_unisegdiff.training.out_of_fold import write_record as write_out_of_fold_record
from nnunet_unisegdiff.training.plots import plot_stage_losses
from nnunet_unisegdiff.training.selection import (CONFIDENCE, MARGIN, choose_pipeline, format_table,
                                                  label_map_predictor, mirroring_axes, rule_text, score_pipelines,
                                                  validation_cases, write_record)

# points phase-A reuse at a CFENet checkpoint; "none" disables finding nnUNetTrainer's automatically
CFENET_CHECKPOINT_ENV = "nnUNet_unisegdiff_cfenet"
STAGE_LOG_KEYS = {Stage.RS: "train_loss_rs", Stage.PM: "train_loss_pm", Stage.DR: "train_loss_dr"}


class CosineLRScheduler:
    """Cosine annealing as a function of the absolute epoch (nnU-Net steps schedulers by epoch)."""

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, start_epoch: int, num_epochs: int):
        self.optimizer, self.initial_lr = optimizer, initial_lr
        self.start_epoch, self.num_epochs = start_epoch, max(1, num_epochs)

    def step(self, epoch: int) -> None:
        progress = min(max(epoch - self.start_epoch, 0) / self.num_epochs, 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = 0.5 * self.initial_lr * (1 + math.cos(math.pi * progress))


def _unwrap(module: nn.Module) -> nn.Module:
    module = module.module if isinstance(module, DDP) else module
    return module._orig_mod if isinstance(module, OptimizedModule) else module


class nnUNetTrainerUniSegDiff(nnUNetTrainer):
    num_epochs_cfenet = 500            # phase A (nnU-Net's schedule, shortened)
    num_epochs_dnet = 300              # phase B (the paper's 300 epochs)
    dnet_lr = 1e-4                     # AdamW, cosine annealing (paper Table 2)
    dnet_weight_decay = 1e-2
    objective = StagedObjective()
    unisegdiff = UniSegDiffSettings()
    inference_mirroring = False        # of DNet pipelines: test-time mirroring multiplies sampling cost by 4 / 8
    inference_pipeline = "auto"        # "auto": chosen after phase B on the fold's validation cases; or a name
    pipeline_candidates = PIPELINES    # what "auto" chooses from (model/pipelines.py); CFENet alone among them
    pipeline_margin = MARGIN           # Dice points a DNet pipeline must gain over CFENet on validation
    pipeline_confidence = CONFIDENCE   # ... with a paired bootstrap gain > 0 at this confidence (None: mean only)
    out_of_fold_conditions = True      # phase B: condition each training case by another fold's CFENet, when found
    condition_noise = 0.0              # phase B: Gaussian noise on the condition features, in channel sd units
    condition_augmentation: SegmentationAugmentation | None = None  # phase B: nnU-Net's cascade augmentation of
    #                                    the segmentation the condition features encode (training/augmentation.py)
    stitch_cases = 64                  # images per other fold that its stitch into this fold's basis is fitted on
    stitch_ridge = 0.1                 # the stitch's ridge, relative to the mean feature variance (model/stitch.py)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        """nnU-Net's trainer; `num_epochs` becomes phase A + phase B, and settings nnU-Net cannot run with (a
        sampler trained on other stages, region labels) are refused here, before any epoch."""
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.num_epochs_cfenet < 0 or self.num_epochs_dnet < 1:
            raise ValueError(f"{type(self).__name__}: need num_epochs_cfenet >= 0 and num_epochs_dnet >= 1")
        if self.objective.diffusion != self.unisegdiff.sampler.diffusion:
            raise ValueError(f"{type(self).__name__}: the training objective's diffusion settings "
                             f"{self.objective.diffusion} differ from the sampler's "
                             f"{self.unisegdiff.sampler.diffusion}; DNet would be sampled in stages it "
                             "was not trained on")
        if self.inference_pipeline not in ("auto", *PIPELINES):
            raise ValueError(f"{type(self).__name__}.inference_pipeline must be 'auto' or one of {PIPELINES}")
        if self.label_manager.has_regions or self.label_manager.has_ignore_label:
            raise RuntimeError(f"{type(self).__name__} supports plain label maps (softmax over classes); this "
                               "dataset.json declares region-based labels or an ignore label, which the staged "
                               "diffusion (one-hot masks, per-class STAPLE) does not model. Use nnUNetTrainer.")
        self.num_epochs = self.num_epochs_cfenet + self.num_epochs_dnet
        self.phase: str | None = None
        self.composite: UniSegDiffNetwork | None = None
        self.plan_mirroring_axes: tuple[int, ...] | None = None  # nnU-Net's test-time mirroring for this plan
        self._alphas_cumprod = self.objective.diffusion.alphas_cumprod().to(self.device)
        self.cfenet_source: str | None = None  # the checkpoint CFENet was reused from; None: trained in this run
        self._out_of_fold: OutOfFoldConditions | None | bool = False  # False: not looked for yet

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> UniSegDiffNetwork:
        """The composite (CFENet = the plan's network, DNet, sampler): what nnU-Net's predictor builds too."""
        return build_unisegdiff_network(plans_manager, configuration_manager, num_input_channels,
                                        num_output_channels, enable_deep_supervision, cls.unisegdiff)

    # ---- set-up and phases -------------------------------------------------------------------------
    def _do_i_compile(self) -> bool:
        """nnU-Net compiles `self.network` when this says so: never the composite, whose sampling loop and
        CFENet tap stay eager; `initialize` compiles DNet alone where nnU-Net's own rule would compile."""
        return False

    def initialize(self) -> None:
        """nnU-Net's set-up, then the phase the current epoch is in (`_enter_phase`)."""
        super().initialize()
        self.composite = _unwrap(self.network)
        # tells `-pretrained_weights` (loaded into CFENet after this) apart from a fresh CFENet
        self._cfenet_fingerprint = next(self.composite.cfenet.parameters()).detach().clone()
        if super()._do_i_compile():  # nnU-Net's rule (or that of a trainer variant mixed in after this class)
            self.print_to_log_file("Compiling DNet (the sampling loop and CFENet's feature tap stay eager)")
            self.composite.dnet.compile()
        self._enter_phase("A" if self.current_epoch < self.num_epochs_cfenet else "B")

    def _enter_phase(self, phase: str) -> None:
        """Optimiser, schedule, loss, trainable parameters and DDP wrapping of one phase."""
        net = self.composite
        self.phase = phase
        net.set_trainable(phase)
        module = net.cfenet if phase == "A" else net
        if phase == "B":
            net.dnet_trained.fill_(True)
        if self.is_ddp:
            device_ids = [self.local_rank] if self.device.type == "cuda" else None
            module = DDP(module, device_ids=device_ids)
        self.network = module
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        loss = self._build_loss()
        # phase B: nnU-Net's Dice + CE without the deep-supervision wrapper
        self.loss = loss if phase == "A" else getattr(loss, "loss", loss)
        self.set_deep_supervision_enabled(self.enable_deep_supervision)
        self._ensure_stage_log_keys()

    def configure_optimizers(self):
        """nnU-Net's hook, per phase. Phase A: nnU-Net's own (or that of an optimizer variant mixed in
        after this class, e.g. `class T(nnUNetTrainerUniSegDiff, nnUNetTrainerAdam)`) over CFENet, its
        schedule over the phase-A epochs. Phase B: AdamW + cosine over DNet (paper Table 2)."""
        if self.phase != "B":
            total, self.num_epochs = self.num_epochs, max(1, self.num_epochs_cfenet)
            try:
                return super().configure_optimizers()
            finally:
                self.num_epochs = total
        optimizer = torch.optim.AdamW(self.composite.dnet.parameters(), self.dnet_lr,
                                      weight_decay=self.dnet_weight_decay)
        return optimizer, CosineLRScheduler(optimizer, self.dnet_lr, self.num_epochs_cfenet, self.num_epochs_dnet)

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """Deep supervision belongs to CFENet's training only."""
        self.composite.cfenet.decoder.deep_supervision = enabled and self.phase == "A"

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        """nnU-Net's augmentation unchanged; only the test-time mirroring it records follows the pipeline."""
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.plan_mirroring_axes = self.inference_allowed_mirroring_axes
        pipeline = self.composite.settings.pipeline if self.composite is not None else "auto"
        self.inference_allowed_mirroring_axes = self.mirroring_axes_for(pipeline)  # training still mirrors
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    def mirroring_axes_for(self, pipeline: str) -> tuple[int, ...] | None:
        """Test-time mirroring that nnUNetv2_predict applies (unless --disable_tta): nnU-Net's own when the
        model predicts with CFENet alone, so it predicts exactly what nnUNetTrainer would, TTA included;
        none for the DNet pipelines unless `inference_mirroring` (it multiplies their cost by 4 in 2D)."""
        return mirroring_axes(pipeline, self.plan_mirroring_axes, self.inference_mirroring)

    def _ensure_stage_log_keys(self) -> None:
        """nnU-Net's logger logs only keys it holds: the per-stage losses join its lists (NaN for the epochs
        before them), through its own checkpoint round trip."""
        logs = self.logger.get_checkpoint()  # {key: one value per epoch}
        missing = {key: [np.nan] * len(logs["train_losses"]) for key in STAGE_LOG_KEYS.values() if key not in logs}
        if missing:
            self.logger.load_checkpoint({**logs, **missing})

    # ---- phase-A reuse of an nnUNetTrainer checkpoint ---------------------------------------------
    def _reusable_cfenet_checkpoint(self) -> str | None:
        setting = os.environ.get(CFENET_CHECKPOINT_ENV, "")
        if setting.lower() == "none":
            return None
        if setting:
            if not isfile(setting):
                raise FileNotFoundError(f"{CFENET_CHECKPOINT_ENV}={setting}: no such checkpoint file")
            return setting
        folder = f"nnUNetTrainer__{self.plans_manager.plans_name}__{self.configuration_name}"
        candidate = join(nnUNet_results, self.plans_manager.dataset_name, folder, f"fold_{self.fold}",
                         "checkpoint_final.pth")
        return candidate if isfile(candidate) else None

    def _maybe_reuse_cfenet(self) -> None:
        fresh = self.current_epoch == 0 and torch.equal(next(self.composite.cfenet.parameters()),
                                                         self._cfenet_fingerprint)
        checkpoint_file = self._reusable_cfenet_checkpoint() if fresh else None
        if checkpoint_file is None or self.num_epochs_cfenet == 0:
            return
        checkpoint = torch.load(checkpoint_file, map_location=self.device, weights_only=False)
        self.composite.cfenet.load_state_dict(checkpoint["network_weights"])
        self.cfenet_source = str(checkpoint_file)
        self.print_to_log_file(f"Phase A skipped: CFENet weights reused from {checkpoint_file} "
                               f"({checkpoint.get('trainer_name')}, epoch {checkpoint.get('current_epoch')}). "
                               f"Set {CFENET_CHECKPOINT_ENV}=none to train CFENet here instead.")
        reused_dice = checkpoint.get("_best_ema") or 0.0
        padded = {key: values + [reused_dice if key in ("mean_fg_dice", "ema_fg_dice") else np.nan] *
                  (self.num_epochs_cfenet - len(values))  # one entry per skipped epoch keeps the logger aligned
                  for key, values in self.logger.get_checkpoint().items()}
        self.logger.load_checkpoint(padded)
        self.current_epoch = self.num_epochs_cfenet

    def on_train_start(self) -> None:
        """nnU-Net's start, then phase A skipped where a trained nnUNetTrainer fold can serve as CFENet."""
        super().on_train_start()
        self._maybe_reuse_cfenet()

    # ---- epochs ----------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        """Phase B begins at epoch `num_epochs_cfenet`: new optimiser and loss, checkpoint_best chosen anew."""
        if self.phase == "A" and self.current_epoch >= self.num_epochs_cfenet:
            self.print_to_log_file(PHASE_B_START.format(epoch=self.current_epoch, mode=self.objective.kind))
            self._enter_phase("B")
            self._best_ema = None  # checkpoint_best is chosen within phase B
        super().on_train_epoch_start()

    def train_step(self, batch: dict) -> dict:
        """Phase A: nnU-Net's step. Phase B: the staged loss on DNet (CFENet frozen), nnU-Net's AMP and gradient
        clipping, and the per-stage losses for the logger."""
        if self.phase == "A":
            return super().train_step(batch)
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        labels = (target[0] if isinstance(target, list) else target).to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            cond = self._training_conditions(data, batch.get("keys"))  # None: the network's own CFENet pass
            loss, per_stage = phase_b_loss(lambda x_t, t: self.network(data, x_t, t, cond), labels, self.objective,
                                           self.loss, self._alphas_cumprod, self.composite.num_classes)
        trainable = self.composite.dnet.parameters
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(trainable(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable(), 12)
            self.optimizer.step()
        out = {"loss": loss.detach().cpu().numpy()}
        out.update({key: per_stage.get(stage, np.nan) for stage, key in STAGE_LOG_KEYS.items()})
        return out

    # ---- phase-B conditions -----------------------------------------------------------------------
    def _training_conditions(self, data: torch.Tensor, keys) -> list[torch.Tensor] | None:
        """Condition features CF_i of a training batch: out of fold where the other folds' CFENets are found
        (training/out_of_fold.py), with `condition_augmentation` and then `condition_noise`; None when they are
        this fold's CFENet's, unchanged."""
        if self._out_of_fold is False:
            self._out_of_fold = self._build_out_of_fold() if self.out_of_fold_conditions else None
            if not self.out_of_fold_conditions:
                self.print_to_log_file("Phase B conditions: this fold's own CFENet (out_of_fold_conditions off)")
        if self._out_of_fold is None and not self.condition_noise and self.condition_augmentation is None:
            return None
        cond = self._out_of_fold(data, keys) if self._out_of_fold else self.composite.condition(data)[1]
        if self.condition_augmentation is not None:
            with torch.no_grad():
                cond = augment_conditions(cond, self.composite.cfenet.decoder.seg_layers[-1],
                                          self.condition_augmentation)
        return feature_noise(cond, self.condition_noise) if self.condition_noise else cond

    def _build_out_of_fold(self) -> OutOfFoldConditions | None:
        """The other folds' CFENets beside this fold's CFENet checkpoint, their stitches into this fold's basis,
        and which of them conditions each training case; None (and a log line) where none is found."""
        splits_file = join(self.preprocessed_dataset_folder_base, "splits_final.json")
        if self.fold == "all" or not isfile(splits_file) or int(self.fold) >= len(load_json(splits_file)):
            self.print_to_log_file("Phase B conditions: this fold's own CFENet (no cross-validation fold)")
            return None
        splits, fold = load_json(splits_file), int(self.fold)
        source = self.cfenet_source or join(self.output_folder, "checkpoint_final.pth")
        lookup = find_other_folds(Path(source), fold, len(splits), self.configuration_name)
        train_keys = list(splits[fold]["train"])
        fold_of = assign_condition_folds(train_keys, fold, splits, list(lookup.found))
        used = sorted({j for j in fold_of.values() if j is not None})
        self.print_to_log_file(f"Phase B conditions: {lookup.describe()}")
        if not used:
            self.print_to_log_file("Phase B conditions: this fold's own CFENet for every training case (in-sample)")
            return None
        others = {j: self._load_other_cfenet(lookup.found[j]) for j in used}
        fit_keys = {j: _spread([k for k in train_keys if k in set(splits[j]["train"])], self.stitch_cases)
                    for j in used}
        stitches = fit_stitches(self.composite.condition, others, self.stitch_ridge, lambda j: fitting_images(
            validation_cases(self.dataset_class or infer_dataset_class(self.preprocessed_dataset_folder),
                             self.preprocessed_dataset_folder, fit_keys[j],
                             self.folder_with_segs_from_previous_stage),
            self.configuration_manager.patch_size, self.device))
        if self.local_rank == 0:
            record = write_out_of_fold_record(self.output_folder, lookup, fold_of, stitches,
                                              {j: len(k) for j, k in fit_keys.items()})
            self.print_to_log_file(f"Phase B conditions: training cases by conditioning fold "
                                   f"{record['cases_by_condition_fold']}; stitch R^2 per stage {record['stitch_r2']}")
        return OutOfFoldConditions(self.composite.condition, others, stitches, fold_of)

    def _load_other_cfenet(self, checkpoint_file: Path) -> nn.Module:
        net = build_cfenet(self.plans_manager, self.configuration_manager, self.num_input_channels,
                           self.label_manager.num_segmentation_heads, enable_deep_supervision=False)
        checkpoint = torch.load(checkpoint_file, map_location=self.device, weights_only=False)
        net.load_state_dict(cfenet_state_dict(checkpoint))
        return net.to(self.device).eval().requires_grad_(False)

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        """nnU-Net's epoch log, plus the mean loss of each diffusion stage."""
        super().on_train_epoch_end(train_outputs)
        for key in STAGE_LOG_KEYS.values():
            values = [o.get(key, np.nan) for o in train_outputs]
            mean = float(np.nanmean(values)) if np.isfinite(values).any() else np.nan
            self.logger.log(key, mean, self.current_epoch)

    def validation_step(self, batch: dict) -> dict:
        """Phase B: the staged loss at seeded timesteps, and pseudo Dice (which picks checkpoint_best) of
        the sampler's 2-call short plan, RS then one DR call: the full sampler's 12 calls per batch would
        multiply validation cost, RS alone says nothing about the DR draws the prediction is fused from."""
        if self.phase == "A":
            return super().validation_step(batch)
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        labels = (target[0] if isinstance(target, list) else target).to(self.device, non_blocking=True)
        net, ac = self.composite, self._alphas_cumprod
        generator = torch.Generator(device=self.device).manual_seed(self.current_epoch)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            denoise = net.denoiser(net.condition(data)[1])  # CFENet once for all DNet calls
            loss, _ = phase_b_loss(denoise, labels, self.objective, self.loss, ac, net.num_classes, generator)
            x_T = torch.randn((data.shape[0], net.num_classes, *data.shape[2:]), device=self.device,
                              generator=generator)
            x0_hat = net.sampler.short_plan(denoise, x_T, generator)
        onehot = torch.zeros_like(x0_hat).scatter_(1, x0_hat.argmax(1, keepdim=True), 1)
        tp, fp, fn, _ = get_tp_fp_fn_tn(onehot, labels, axes=[0] + list(range(2, onehot.ndim)))
        return {"loss": loss.detach().cpu().numpy(), "tp_hard": tp[1:].cpu().numpy(),
                "fp_hard": fp[1:].cpu().numpy(), "fn_hard": fn[1:].cpu().numpy()}

    def on_epoch_end(self) -> None:
        """nnU-Net's epoch end, plus the per-stage loss plot and a checkpoint at the A -> B boundary."""
        super().on_epoch_end()  # increments current_epoch
        if self.local_rank == 0:
            plot_stage_losses(self.logger.get_checkpoint(), self.num_epochs_cfenet,
                              join(self.output_folder, "progress_stages.png"), self.objective.diffusion)
        if self.phase == "A" and self.current_epoch == self.num_epochs_cfenet:
            # a crash early in phase B resumes from here rather than from an older checkpoint_best
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))

    # ---- the inference pipeline -------------------------------------------------------------------
    def on_train_end(self) -> None:
        """The pipeline is chosen before nnU-Net writes checkpoint_final, which records it."""
        if self.phase == "B":
            self.choose_inference_pipeline()
        super().on_train_end()

    def choose_inference_pipeline(self) -> str:
        """Fixed by `inference_pipeline`, or the best of `pipeline_candidates` on this fold's validation
        cases (training/selection.py): a table in the log and in the fold folder's inference_pipeline.json."""
        net = self.composite
        if self.inference_pipeline != "auto":
            chosen = self.inference_pipeline
            self.print_to_log_file(f"Inference pipeline: {chosen} (fixed by {type(self).__name__})")
        else:
            chosen = self._choose_on_validation() if self.local_rank == 0 else None
            if self.is_ddp:
                box = [chosen]
                dist.broadcast_object_list(box, src=0)
                chosen = box[0]
        net.set_settings(replace(net.settings, pipeline=chosen))
        self.inference_allowed_mirroring_axes = self.mirroring_axes_for(chosen)
        return chosen

    def _choose_on_validation(self) -> str:
        self.print_to_log_file(f"Choosing the inference pipeline on this fold's validation cases among "
                               f"{', '.join(self.pipeline_candidates)}")
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                    perform_everything_on_device=True, device=self.device, verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(self.composite, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, type(self).__name__, self.inference_allowed_mirroring_axes)
        labels = [int(k) for k in self.label_manager.foreground_labels]
        table = score_pipelines(label_map_predictor(predictor, self.composite), self._validation_cases(),
                                self.pipeline_candidates, labels)
        margin, confidence = self.pipeline_margin, self.pipeline_confidence
        chosen = choose_pipeline(table, margin, confidence)
        write_record(self.output_folder, chosen, table, margin, confidence)
        self.print_to_log_file(f"Inference pipeline: {chosen} ({rule_text(margin, confidence)}):\n"
                               f"{format_table(table, chosen)}")
        return chosen

    def _validation_cases(self):
        """(key, preprocessed data (C, *spatial), reference labels (*spatial)) of the fold's validation cases."""
        if self.is_cascaded:
            raise NotImplementedError(f"{type(self).__name__}: choosing a pipeline of a cascade's second stage "
                                      "is not supported; set inference_pipeline to a name")
        _, val_keys = self.do_split()
        return validation_cases(self.dataset_class, self.preprocessed_dataset_folder, val_keys,
                                self.folder_with_segs_from_previous_stage)

    # ---- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint of the composite, plus the phase; written atomically."""
        if self.local_rank != 0 or self.disable_checkpointing:
            return
        checkpoint = {
            "network_weights": self.composite.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            "unisegdiff": {"phase": self.phase, "num_epochs_cfenet": self.num_epochs_cfenet,
                           "num_epochs_dnet": self.num_epochs_dnet, "plan_mirroring_axes": self.plan_mirroring_axes,
                           "dnet_mirroring": self.inference_mirroring, "cfenet_source": self.cfenet_source},
        }
        partial = filename + ".partial"
        torch.save(checkpoint, partial)
        os.replace(partial, filename)  # an interrupted save never replaces a good checkpoint

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        """nnU-Net's resume, into the phase the checkpoint was saved in (its optimiser state is that phase's);
        a plain nnUNetTrainer checkpoint is refused with what to do instead."""
        if not self.was_initialized:
            self.initialize()
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            checkpoint = torch.load(checkpoint, map_location=self.device, weights_only=False)
        meta = checkpoint.get("unisegdiff")
        if meta is None:
            raise RuntimeError(f"{type(self).__name__} cannot resume from a checkpoint of "
                               f"{checkpoint.get('trainer_name')}; to reuse a trained nnUNetTrainer as CFENet, "
                               f"start a fresh run (it is found automatically) or set {CFENET_CHECKPOINT_ENV}.")
        if meta["num_epochs_cfenet"] != self.num_epochs_cfenet:
            raise RuntimeError(f"checkpoint was trained with {meta['num_epochs_cfenet']} CFENet epochs, "
                               f"{type(self).__name__} has {self.num_epochs_cfenet}: resume with the same trainer")
        self._enter_phase(meta["phase"])  # before loading the optimiser state of that phase
        self.cfenet_source = meta.get("cfenet_source", self.cfenet_source)
        self.composite.load_state_dict(checkpoint["network_weights"])
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._ensure_stage_log_keys()
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes",
                                                               self.inference_allowed_mirroring_axes)
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.grad_scaler is not None and checkpoint["grad_scaler_state"] is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])


def _spread(keys: list[str], n: int) -> list[str]:
    """At most n of the sorted keys, evenly spaced (deterministic: a resumed run fits the same stitches)."""
    keys = sorted(keys)
    return keys if len(keys) <= n else [keys[i] for i in np.linspace(0, len(keys) - 1, n).round().astype(int)]
