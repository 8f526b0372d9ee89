"""Inference pipelines of a trained UniSegDiff network: how CFENet's output and DNet's draws become the
class probabilities nnU-Net exports. After phase B the trainer scores them on the fold's validation
cases and records the best in the checkpoint (training/selection.py), the way nnU-Net picks
configurations from validation, so a model is never worse there than the CFENet it stands on.

One frozen type per pipeline below, each holding its name, what its probabilities are in a reader's words,
whether it calls DNet and whether it is built on the network's own draws, and how its probabilities are
computed; `INFERENCE_PIPELINES` registers them, and everything that names pipelines (the settings' check, the
trainer's candidates and their order, `unisegdiff pipeline --set`, mirroring, tempering) reads it. Adding a
pipeline is one type here, registered, and its test.

With `temper_with_draws` the network exports a pipeline's probabilities shrunk toward uniform where the
network's 20 draws disagree: the segmentation stays the pipeline's, the saved probabilities carry the
draws' disagreement (docs/method.md, item 18). By default ("free", settings format 3) only the pipelines that sample
those draws anyway are tempered; "on" tempers `cfenet`, `rs` and `paper` too, at 12 more DNet calls per
tile and mirror.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from nnunet_unisegdiff.diffusion.fusion import fuse_masks, temper_by_draws
from nnunet_unisegdiff.diffusion.sampler import StagedSampler
from nnunet_unisegdiff.diffusion.sampling_plans import OneStepPlan, StagedPlan

if TYPE_CHECKING:  # settings.py reads the registry below
    from nnunet_unisegdiff.model.settings import UniSegDiffSettings

PAPER_SAMPLER = StagedPlan(clamp_x0=False, dr_head="eps")  # with the network's diffusion settings
PAPER_PSEUDO_PIXELS = None  # STAPLE's prior as the paper reads: one pseudo-pixel


class PipelineInputs:
    """What the pipelines of one `pipeline_probabilities` call share: the network `net`, the image (B, C_in,
    *spatial), CFENet's softmax and condition features from its one pass, the network's own draws `draws`
    (B, N, *spatial; None unless a requested pipeline `uses_draws` or the call tempers), and each pipeline's
    probabilities once computed, so a pipeline built on another reuses them (`probabilities`)."""

    def __init__(self, net, image: Tensor, logits: Tensor, cond: list[Tensor], draws: Tensor | None) -> None:
        self.net, self.image, self.cond, self.draws = net, image, cond, draws
        self.softmax = logits.float().softmax(1)
        self._computed: dict[str, Tensor] = {}

    def probabilities(self, name: str) -> Tensor:
        """(B, C, *spatial) class probabilities of the registered pipeline `name`, computed once."""
        if name not in self._computed:
            self._computed[name] = INFERENCE_PIPELINES[name].probabilities(self)
        return self._computed[name]


@dataclass(frozen=True)
class InferencePipeline(ABC):
    """One inference pipeline. `name` is what the settings record and the validation table hold; `description`
    says what its probabilities are (`exported_map`); `calls_dnet`: False only for a pipeline that predicts
    exactly what nnU-Net's CFENet does, which keeps nnU-Net's test-time mirroring; `uses_draws`: built on the
    network's own draws, which `pipeline_probabilities` then samples (once, for all) and the "free" tempering
    uses at no cost."""
    name: ClassVar[str]
    description: ClassVar[str]
    calls_dnet: ClassVar[bool] = True
    uses_draws: ClassVar[bool] = False

    @abstractmethod
    def probabilities(self, inputs: PipelineInputs) -> Tensor:
        """(B, C, *spatial) class probabilities of the image in `inputs`; reads `inputs.draws` only if
        `uses_draws`."""

    def describe(self, settings: UniSegDiffSettings) -> str:
        """`description` for a network with these settings."""
        return self.description


@dataclass(frozen=True)
class CFENetPipeline(InferencePipeline):
    """CFENet's softmax, i.e. the nnU-Net the model stands on (1 pass)."""
    name: ClassVar[str] = "cfenet"
    description: ClassVar[str] = "CFENet's softmax, nnU-Net's own"
    calls_dnet: ClassVar[bool] = False

    def probabilities(self, inputs: PipelineInputs) -> Tensor:
        return inputs.softmax


@dataclass(frozen=True)
class RSPipeline(InferencePipeline):
    """DNet's RS call alone, x0 from pure noise (1 DNet call)."""
    name: ClassVar[str] = "rs"
    description: ClassVar[str] = "the softmax of DNet's one RS call"

    def probabilities(self, inputs: PipelineInputs) -> Tensor:
        one_step = StagedSampler(OneStepPlan(samples=1, diffusion=inputs.net.settings.sampler.diffusion))
        return inputs.net.sample(inputs.image, one_step, inputs.cond).probs[:, 0]


@dataclass(frozen=True)
class DiffusionPipeline(InferencePipeline):
    """The network's sampler and fusion (default: staged, 20 draws, STAPLE; 12 DNet calls)."""
    name: ClassVar[str] = "diffusion"
    description: ClassVar[str] = "the network's fusion of its draws"
    uses_draws: ClassVar[bool] = True

    def probabilities(self, inputs: PipelineInputs) -> Tensor:
        s = inputs.net.settings
        return fuse_masks(inputs.draws, inputs.net.num_classes, s.fusion, s.staple_pseudo_pixels)

    def describe(self, settings: UniSegDiffSettings) -> str:
        fused = "STAPLE's posterior over" if settings.fusion == "staple" else "the vote of"
        return f"{fused} the network's draws"


@dataclass(frozen=True)
class PaperPipeline(InferencePipeline):
    """The paper's inference read literally (eps-decoder DR draws, unclamped PM, STAPLE with one
    pseudo-pixel), whatever the network's own sampler."""
    name: ClassVar[str] = "paper"
    description: ClassVar[str] = "STAPLE's posterior over the paper's draws"

    def probabilities(self, inputs: PipelineInputs) -> Tensor:
        paper = StagedSampler(replace(PAPER_SAMPLER, diffusion=inputs.net.settings.sampler.diffusion))
        masks = inputs.net.sample(inputs.image, paper, inputs.cond).masks
        return fuse_masks(masks, inputs.net.num_classes, "staple", PAPER_PSEUDO_PIXELS)


@dataclass(frozen=True)
class DiffusionCFENetPipeline(InferencePipeline):
    """The mean of the draws' vote and CFENet's softmax, CFENet as one more ensemble member worth as much
    as all draws together."""
    name: ClassVar[str] = "diffusion+cfenet"
    description: ClassVar[str] = "the mean of the draws' vote and CFENet's softmax"
    uses_draws: ClassVar[bool] = True

    def probabilities(self, inputs: PipelineInputs) -> Tensor:
        return (fuse_masks(inputs.draws, inputs.net.num_classes, "vote") + inputs.softmax) / 2


@dataclass(frozen=True)
class CFENetGatedPipeline(InferencePipeline):
    """CFENet's softmax, except that each connected lesion component of CFENet's segmentation that
    diffusion+cfenet does not also call lesion anywhere takes diffusion+cfenet's probabilities (background
    throughout it, so the component is removed). CFENet delineates, the draws decide whether a lesion is there
    (why: docs/method.md, item 17). Components are found per sliding-window tile, before nnU-Net blends the
    tiles."""
    name: ClassVar[str] = "cfenet-gated"
    description: ClassVar[str] = "CFENet's softmax without the lesion components the draws do not confirm"
    uses_draws: ClassVar[bool] = True

    def probabilities(self, inputs: PipelineInputs) -> Tensor:
        return gate_components(inputs.softmax, inputs.probabilities(DiffusionCFENetPipeline.name))


# The registry, in the order the trainer scores the candidates and ties go to the first (CFENet first).
INFERENCE_PIPELINES: dict[str, InferencePipeline] = {
    p.name: p for p in (CFENetPipeline(), RSPipeline(), DiffusionPipeline(), PaperPipeline(),
                        DiffusionCFENetPipeline(), CFENetGatedPipeline())}
PIPELINES = tuple(INFERENCE_PIPELINES)  # the names a network can record, in the registry's order
DRAW_PIPELINES = tuple(name for name, p in INFERENCE_PIPELINES.items() if p.uses_draws)


def tempers(settings: UniSegDiffSettings) -> bool:
    """Whether a network with these settings exports its pipeline's probabilities tempered by the draws:
    never ("off"), when the pipeline is built on the draws anyway ("free"), always ("on")."""
    mode = settings.temper_with_draws
    return mode == "on" or (mode == "free" and INFERENCE_PIPELINES[settings.pipeline].uses_draws)


def exported_map(settings: UniSegDiffSettings) -> str:
    """What a network with these settings saves with --save_probabilities, in a reader's words: the chosen
    pipeline's probabilities, tempered or not. Reports name it instead of assuming the paper's STAPLE
    posterior, which a fold that chose another pipeline does not export."""
    exported = INFERENCE_PIPELINES[settings.pipeline].describe(settings)
    tempered = ", tempered by the draws' disagreement" if tempers(settings) else ""
    return f"{exported} (pipeline `{settings.pipeline}`){tempered}"


@torch.no_grad()
def pipeline_probabilities(net, image: Tensor, names: tuple[str, ...] | list[str],
                           condition: tuple[Tensor, list[Tensor]] | None = None,
                           temper: bool = False) -> dict[str, Tensor]:
    """{name: (B, C, *spatial) class probabilities} for a UniSegDiffNetwork `net` and image (B, C_in,
    *spatial); CFENet runs once (not at all when its `condition` output is given) and one set of draws
    serves every pipeline built on the network's sampler. temper: each pipeline's probabilities shrunk
    where those draws disagree (diffusion/fusion.py `temper_by_draws`; argmax kept). The draws are sampled
    first and the pipelines run in the registry's order, whatever the order of `names`, so that with seed None
    the global generator's numbers go to the same sampling calls."""
    unknown = set(names) - set(PIPELINES)
    if unknown:
        raise ValueError(f"unknown inference pipeline(s) {sorted(unknown)}; known: {', '.join(PIPELINES)}")
    logits, cond = condition if condition is not None else net.condition(image)
    sample = temper or any(INFERENCE_PIPELINES[name].uses_draws for name in names)
    draws = net.sample(image, cond=cond).masks if sample else None  # the network's draws (B, N, *spatial)
    inputs = PipelineInputs(net, image, logits, cond, draws)
    out = {name: inputs.probabilities(name) for name in PIPELINES if name in names}
    if temper:
        return {name: temper_by_draws(out[name], draws) for name in names}
    return {name: out[name] for name in names}


def gate_components(probs: Tensor, gate: Tensor) -> Tensor:
    """probs (B, C, *spatial) where each connected lesion component of its argmax (any foreground class,
    face connectivity) in which gate's (B, C, *spatial) argmax is background throughout takes gate's
    probabilities, so that the component is removed; kept components keep every pixel and class of probs."""
    lesion = probs.argmax(1).cpu().numpy() > 0        # (B, *spatial)
    confirmed = gate.argmax(1).cpu().numpy() > 0      # (B, *spatial)
    structure = np.zeros((3,) * lesion.ndim, dtype=bool)
    structure[1] = ndimage.generate_binary_structure(lesion.ndim - 1, 1)  # no connection across the batch
    components, n = ndimage.label(lesion, structure)
    keep = np.bincount(components[confirmed], minlength=n + 1) > 0  # keep[k]: the gate finds lesion in k
    keep[0] = True                                                  # background stays as it is
    drop = torch.from_numpy(~keep[components]).to(probs.device)[:, None]
    return torch.where(drop, gate, probs)
