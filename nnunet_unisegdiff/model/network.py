"""The one module nnU-Net saves, loads and predicts with: CFENet + DNet + staged sampler + fusion.

nnU-Net never instantiates a trainer at inference: it calls the static-style
`build_network_architecture` and loads `network_weights` strictly, then runs `network(tile)` in eval
mode. So in eval mode `forward(image)` runs the recorded inference pipeline (model/pipelines.py;
default: staged sampling + STAPLE, probabilities tempered by the draws) and returns logits whose softmax
is its probabilities. Until DNet is trained (a flag kept in the state dict) it returns CFENet's logits,
which is what phase-A validation needs.

The settings (sampler, fusion, STAPLE prior, seed, pipeline, tempering) travel in the state dict as torch's
`_extra_state`, so nnU-Net's predictor, which builds the network from the trainer class and then loads
the weights, predicts with what the checkpoint recorded. A checkpoint saved before the settings were
recorded loads with the class's settings, untempered as it predicted then, and a log line naming them.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Mapping

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import Tensor, nn

from nnunet_unisegdiff.diffusion.fusion import probabilities_to_logits
from nnunet_unisegdiff.diffusion.sampler import StagedSampler
from nnunet_unisegdiff.model.cfenet import CFENetTap
from nnunet_unisegdiff.model.denoiser import Denoiser
from nnunet_unisegdiff.model.dnet import DNet
from nnunet_unisegdiff.model.pipelines import pipeline_probabilities, tempers
from nnunet_unisegdiff.model.settings import (ARCHITECTURE_FIELDS, SETTINGS_FORMAT, UniSegDiffSettings,
                                              settings_from_dict, settings_to_dict)

__all__ = ["UniSegDiffNetwork", "UniSegDiffSettings", "build_cfenet", "build_unisegdiff_network"]
log = logging.getLogger("nnunet_unisegdiff")
EXTRA_STATE_KEY = "_extra_state"  # torch's key for get_extra_state(); holds the settings record


class UniSegDiffNetwork(nn.Module):
    def __init__(self, cfenet: nn.Module, dnet: DNet, num_classes: int, settings: UniSegDiffSettings) -> None:
        super().__init__()
        self.cfenet = cfenet
        self.dnet = dnet
        self.num_classes = num_classes
        self.settings = settings
        self.sampler = StagedSampler(settings.sampler)
        self.register_buffer("dnet_trained", torch.tensor(False))
        self.freeze_cfenet = False  # phase B: CFENet stays in eval mode whatever train() says
        self._tap = CFENetTap(cfenet)

    @property
    def decoder(self) -> nn.Module:
        """nnU-Net toggles `network.decoder.deep_supervision`: that is CFENet's."""
        return self.cfenet.decoder

    def set_trainable(self, phase: str) -> None:
        """The one place that says what trains in each phase: "A" CFENet alone; "B" DNet alone, with
        CFENet frozen and kept in eval mode (its batch-norm statistics stay those of phase A)."""
        if phase not in ("A", "B"):
            raise ValueError(f"phase must be 'A' or 'B', got {phase!r}")
        self.cfenet.requires_grad_(phase == "A")
        self.dnet.requires_grad_(phase == "B")
        self.freeze_cfenet = phase == "B"

    def train(self, mode: bool = True) -> "UniSegDiffNetwork":
        super().train(mode)
        if self.freeze_cfenet:
            self.cfenet.eval()
        return self

    @torch.no_grad()
    def condition(self, image: Tensor) -> tuple[Tensor, list[Tensor]]:
        """CFENet once: (its logits, condition features CF_0..CF_{S-1}), no gradient."""
        return self._tap(image)

    @property
    def active_pipeline(self) -> str:
        """What `network(image)` runs: CFENet while training (nnU-Net's loop, phase-A validation) and until
        DNet is trained; afterwards, in eval mode, the recorded pipeline."""
        if self.training or not bool(self.dnet_trained):
            return "cfenet"
        return self.settings.pipeline

    @property
    def tempers(self) -> bool:
        """Whether `network(image)` exports probabilities tempered by the draws (eval mode, DNet trained)."""
        return not self.training and bool(self.dnet_trained) and tempers(self.settings)

    def forward(self, image: Tensor, x_t: Tensor | None = None, t: Tensor | None = None,
                cond: list[Tensor] | None = None):
        """Two calls:
        - `network(image)` -> logits (B, C, *spatial) of `active_pipeline` (what nnU-Net trains phase A on,
          validates and predicts with; "cfenet" gives nnU-Net's own output, deep supervision included);
        - `network(image, x_t, t)` -> (eps_hat, x0_logits) of DNet on noisy masks x_t (B, C, *spatial) told
          t (B,): phase B's training step, which must pass through forward for DDP's gradient sync; `cond`:
          condition features of `image` to use instead of this CFENet's (out-of-fold, augmented)."""
        if x_t is not None:
            return self.denoiser(cond if cond is not None else self.condition(image)[1])(x_t, t)
        if self.active_pipeline == "cfenet" and not self.tempers:
            return self.cfenet(image)  # nnU-Net's own logits, bit for bit
        return probabilities_to_logits(self.predict_probabilities(image))

    def denoiser(self, cond: list[Tensor]) -> Denoiser:
        """DNet bound to the condition features of a batch (model/denoiser.py)."""
        return Denoiser(self.dnet, cond)

    @torch.no_grad()
    def sample(self, image: Tensor, sampler: StagedSampler | None = None, cond: list[Tensor] | None = None):
        """Staged sampling for a batch of images: SampleResult with (B, N, *spatial) masks. `sampler`
        (default: this network's) and `cond` (CFENet's features of `image`, if already computed) let
        one CFENet pass serve several sampler settings."""
        sampler = sampler or self.sampler
        if cond is None:
            _, cond = self.condition(image)
        generator = None
        if self.settings.seed is not None:
            generator = torch.Generator(device=image.device).manual_seed(self.settings.seed)
        shape = (image.shape[0], self.num_classes, *image.shape[2:])
        return sampler.sample(self.denoiser(cond), shape, image.device, generator)

    def predict_probabilities(self, image: Tensor) -> Tensor:
        """(B, C_in, *spatial) -> class probabilities (B, C, *spatial) of the recorded pipeline, tempered by
        the draws if the record says so."""
        name = self.settings.pipeline
        return pipeline_probabilities(self, image, [name], temper=tempers(self.settings))[name]

    # ---- the settings record in the state dict ---------------------------------------------------
    def set_settings(self, settings: UniSegDiffSettings) -> None:
        """Inference settings only: DNet's architecture is fixed by its weights."""
        changed = [f for f in ARCHITECTURE_FIELDS if getattr(settings, f) != getattr(self.settings, f)]
        if changed:
            raise ValueError(f"settings change DNet's architecture ({', '.join(changed)}): "
                             f"{[(f, getattr(self.settings, f), getattr(settings, f)) for f in changed]}; build "
                             "the network with the trainer class the checkpoint was trained with")
        self.settings = settings
        self.sampler = StagedSampler(settings.sampler)

    def get_extra_state(self) -> dict[str, Any]:
        return {"format": SETTINGS_FORMAT, "settings": settings_to_dict(self.settings)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.set_settings(settings_from_dict(state["settings"], state.get("format")))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        if EXTRA_STATE_KEY not in state_dict:
            assumed = replace(self.settings, temper_with_draws="off")  # tempering came after the record
            log.warning("UniSegDiff checkpoint without recorded inference settings (saved by a version before "
                        "they were recorded): predicting with the trainer class's settings, untempered, %s", assumed)
            state_dict = {**state_dict, EXTRA_STATE_KEY: {"format": SETTINGS_FORMAT,
                                                          "settings": settings_to_dict(assumed)}}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def build_cfenet(plans_manager: PlansManager, configuration_manager: ConfigurationManager, num_input_channels: int,
                 num_output_channels: int, enable_deep_supervision: bool) -> nn.Module:
    """nnU-Net's planned network, as nnUNetTrainer builds it: CFENet."""
    return get_network_from_plans(
        configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import, num_input_channels, num_output_channels,
        allow_init=True, deep_supervision=enable_deep_supervision)


def build_unisegdiff_network(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                             num_input_channels: int, num_output_channels: int,
                             enable_deep_supervision: bool, settings: UniSegDiffSettings) -> UniSegDiffNetwork:
    """CFENet exactly as nnU-Net builds it from the plan, DNet from the same plan."""
    cfenet = build_cfenet(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                          enable_deep_supervision)
    dnet = DNet.from_plan(configuration_manager.network_arch_init_kwargs,
                          configuration_manager.network_arch_init_kwargs_req_import,
                          configuration_manager.patch_size, num_output_channels, width=settings.dnet_width,
                          token_budget=settings.token_budget, use_dca=settings.use_dca)
    return UniSegDiffNetwork(cfenet, dnet, num_output_channels, settings)
