"""Inference pipelines of a trained UniSegDiff network: how CFENet's output and DNet's draws become the
class probabilities nnU-Net exports. After phase B the trainer scores them on the fold's validation
cases and records the best in the checkpoint (training/selection.py), the way nnU-Net picks
configurations from validation, so a model is never worse there than the CFENet it stands on.

- cfenet: CFENet's softmax, i.e. the nnU-Net the model stands on (1 pass);
- rs: DNet's RS call alone, x0 from pure noise (1 DNet call);
- diffusion: the network's sampler and fusion (default: staged, 20 draws, STAPLE; 12 DNet calls);
- paper: the paper's inference read literally (eps-decoder DR draws, unclamped PM, STAPLE with one
  pseudo-pixel), whatever the network's own sampler;
- diffusion+cfenet: the mean of the draws' vote and CFENet's softmax, CFENet as one more ensemble member
  worth as much as all draws together;
- cfenet-gated: CFENet's softmax, except that each connected lesion component of CFENet's segmentation
  that diffusion+cfenet does not also call lesion anywhere takes diffusion+cfenet's probabilities
  (background throughout it, so the component is removed). CFENet delineates, the draws decide whether
  a lesion is there (why: docs/method.md, item 17). Components are found per sliding-window tile,
  before nnU-Net blends the tiles.

With `temper_with_draws` the network exports a pipeline's probabilities shrunk toward uniform where the
network's 20 draws disagree: the segmentation stays the pipeline's, the saved probabilities carry the
draws' disagreement (docs/method.md, item 18). By default ("free", settings format 3) only the pipelines that sample
those draws anyway are tempered; "on" tempers `cfenet`, `rs` and `paper` too, at 12 more DNet calls per
tile and mirror.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from nnunet_unisegdiff.diffusion.fusion import fuse_masks, temper_by_draws
from nnunet_unisegdiff.diffusion.sampler import StagedSampler
from nnunet_unisegdiff.diffusion.sampling_plans import OneStepPlan, StagedPlan
from nnunet_unisegdiff.model.settings import DRAW_PIPELINES, PIPELINES, UniSegDiffSettings, tempers

PAPER_SAMPLER = StagedPlan(clamp_x0=False, dr_head="eps")  # with the network's diffusion settings
PAPER_PSEUDO_PIXELS = None  # STAPLE's prior as the paper reads: one pseudo-pixel
DNET_PIPELINES = tuple(p for p in PIPELINES if p != "cfenet")


def exported_map(settings: UniSegDiffSettings) -> str:
    """What a network with these settings saves with --save_probabilities, in a reader's words: the chosen
    pipeline's probabilities, tempered or not. Reports name it instead of assuming the paper's STAPLE
    posterior, which a fold that chose another pipeline does not export."""
    fused = "STAPLE's posterior over" if settings.fusion == "staple" else "the vote of"
    exported = {
        "cfenet": "CFENet's softmax, nnU-Net's own",
        "rs": "the softmax of DNet's one RS call",
        "diffusion": f"{fused} the network's draws",
        "paper": "STAPLE's posterior over the paper's draws",
        "diffusion+cfenet": "the mean of the draws' vote and CFENet's softmax",
        "cfenet-gated": "CFENet's softmax without the lesion components the draws do not confirm",
    }[settings.pipeline]
    tempered = ", tempered by the draws' disagreement" if tempers(settings) else ""
    return f"{exported} (pipeline `{settings.pipeline}`){tempered}"


@torch.no_grad()
def pipeline_probabilities(net, image: Tensor, names: tuple[str, ...] | list[str],
                           condition: tuple[Tensor, list[Tensor]] | None = None,
                           temper: bool = False) -> dict[str, Tensor]:
    """{name: (B, C, *spatial) class probabilities} for a UniSegDiffNetwork `net` and image (B, C_in,
    *spatial); CFENet runs once (not at all when its `condition` output is given) and one set of draws
    serves every pipeline built on the network's sampler. temper: each pipeline's probabilities shrunk
    where those draws disagree (diffusion/fusion.py `temper_by_draws`; argmax kept)."""
    unknown = set(names) - set(PIPELINES)
    if unknown:
        raise ValueError(f"unknown inference pipeline(s) {sorted(unknown)}; known: {', '.join(PIPELINES)}")
    s, c = net.settings, net.num_classes
    logits, cond = condition if condition is not None else net.condition(image)
    softmax = logits.float().softmax(1)
    sample = temper or bool(set(DRAW_PIPELINES) & set(names))
    masks = net.sample(image, cond=cond).masks if sample else None  # the network's draws (B, N, *spatial)
    out: dict[str, Tensor] = {}
    if "cfenet" in names:
        out["cfenet"] = softmax
    if "rs" in names:
        one_step = StagedSampler(OneStepPlan(samples=1, diffusion=s.sampler.diffusion))
        out["rs"] = net.sample(image, one_step, cond).probs[:, 0]
    if set(DRAW_PIPELINES) & set(names):
        if "diffusion" in names:
            out["diffusion"] = fuse_masks(masks, c, s.fusion, s.staple_pseudo_pixels)
        out["diffusion+cfenet"] = (fuse_masks(masks, c, "vote") + softmax) / 2
        if "cfenet-gated" in names:
            out["cfenet-gated"] = gate_components(softmax, out["diffusion+cfenet"])
    if "paper" in names:
        paper = StagedSampler(replace(PAPER_SAMPLER, diffusion=s.sampler.diffusion))
        out["paper"] = fuse_masks(net.sample(image, paper, cond).masks, c, "staple", PAPER_PSEUDO_PIXELS)
    if temper:
        return {name: temper_by_draws(out[name], masks) for name in names}
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
