"""Fusion of the staged draws: STAPLE's rate prior on near-empty stacks (a regression case recorded
from the demo's model) and on stacks that hold a lesion."""
import json
from pathlib import Path

import torch

from nnunet_unisegdiff.diffusion.fusion import fuse_masks

DATA = Path(__file__).parent / "data"


def _near_empty_draws() -> torch.Tensor:
    rec = json.loads((DATA / "near_empty_draws.json").read_text())
    masks = torch.zeros(rec["shape"], dtype=torch.long)
    r, y, x = torch.tensor(rec["foreground"]).t()
    masks[r, y, x] = 1
    return masks[None]  # (1, 20, 64, 64)


def test_scattered_draws_on_a_lesion_free_image_fuse_to_empty_with_the_rate_prior():
    masks = _near_empty_draws()
    assert masks.sum(1).max() <= 6  # no pixel has more than 6 of the 20 votes: the vote is empty
    paper = fuse_masks(masks, 2, "staple")[0, 1]
    default = fuse_masks(masks, 2, "staple", pseudo_pixels=0.03)[0, 1]
    assert (paper > 0.5).sum() > 50 and paper.mean() > 0.4  # paper EM: uninformative rates, ~0.5 everywhere
    assert (default > 0.5).sum() == 0 and default.mean() < 1e-3


def test_the_rate_prior_keeps_staple_on_draws_that_hold_a_lesion():
    g = torch.Generator().manual_seed(0)
    truth = torch.zeros(64, 64, dtype=torch.bool)
    truth[20:40, 18:44] = True
    flips = torch.rand((20, 64, 64), generator=g) < 0.02  # each draw: the lesion with 2 % of pixels flipped
    masks = (truth ^ flips).long()[None]
    for pseudo_pixels in (None, 0.03):
        fused = fuse_masks(masks, 2, "staple", pseudo_pixels=pseudo_pixels)[0, 1] > 0.5
        assert torch.equal(fused, truth)
