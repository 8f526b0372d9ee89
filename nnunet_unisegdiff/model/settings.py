"""What a UniSegDiff network is, beyond nnU-Net's plan: DNet's size, the sampler, the fusion and the
inference pipeline. The network keeps these in its state dict (`_extra_state`), so a checkpoint
predicts with the settings it was trained and chosen with, not with the code's defaults of the day."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from nnunet_unisegdiff.diffusion.sampler import SamplerConfig
from nnunet_unisegdiff.diffusion.settings import DiffusionSettings

# the inference pipelines a network can run (model/pipelines.py); "diffusion" = its own sampler + fusion
PIPELINES = ("cfenet", "rs", "diffusion", "paper", "diffusion+cfenet")
ARCHITECTURE_FIELDS = ("dnet_width", "token_budget", "use_dca")  # fixed by the weights' shapes and layout


@dataclass(frozen=True)
class UniSegDiffSettings:
    """Everything about the method that is not in nnU-Net's plan; trainer variants replace fields."""
    dnet_width: float = 1.0          # fraction of the plan's features per stage (1.0: paper-sized)
    token_budget: int = 1024         # DCA at stages with at most this many positions, fusion above
    use_dca: bool = True
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    fusion: str = "staple"           # or "vote" (no-STAPLE ablation)
    staple_pseudo_pixels: float | None = 0.03  # STAPLE's rate prior, fraction of pixels (None: paper, 1 pixel)
    seed: int | None = 0             # noise seed per forward call: predictions are reproducible
    pipeline: str = "diffusion"      # what eval forward returns (one of PIPELINES); the trainer may choose

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise ValueError(f"unknown inference pipeline {self.pipeline!r}; one of {', '.join(PIPELINES)}")
        if self.fusion not in ("staple", "vote"):
            raise ValueError(f"fusion must be 'staple' or 'vote', got {self.fusion!r}")


def settings_to_dict(settings: UniSegDiffSettings) -> dict[str, Any]:
    """Plain nested dict (numbers, strings, None), safe for torch.save and JSON."""
    return asdict(settings)


def settings_from_dict(record: dict[str, Any]) -> UniSegDiffSettings:
    """Inverse of `settings_to_dict`. A record with other fields than this version's is refused: filling a
    missing field from today's class defaults would silently change how an old model predicts."""
    names = {f.name for f in fields(UniSegDiffSettings)}
    if set(record) != names:
        raise ValueError(f"recorded UniSegDiff settings differ in their fields from this version's: unknown "
                         f"{sorted(set(record) - names)}, missing {sorted(names - set(record))}; a checkpoint of "
                         "another nnunet_unisegdiff version: predict with that version")
    sampler = {**record["sampler"], "diffusion": DiffusionSettings(**record["sampler"]["diffusion"])}
    return UniSegDiffSettings(**{**record, "sampler": SamplerConfig(**sampler)})
