"""What a UniSegDiff network is, beyond nnU-Net's plan: DNet's size, the sampler, the fusion and the
inference pipeline. The network keeps these in its state dict (`_extra_state`), so a checkpoint
predicts with the settings it was trained and chosen with, not with the code's defaults of the day."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from nnunet_unisegdiff.diffusion.sampling_plans import PLANS, DDIMPlan, OneStepPlan, SamplingPlan, StagedPlan
from nnunet_unisegdiff.diffusion.settings import DiffusionSettings
from nnunet_unisegdiff.model.pipelines import PIPELINES

# when the exported probabilities are tempered by the draws (model/pipelines.py `tempers`): never; when the
# pipeline is built on the draws anyway (at no cost); always (cfenet, rs, paper: 12 more DNet calls)
TEMPER_MODES = ("off", "free", "on")
ARCHITECTURE_FIELDS = ("dnet_width", "token_budget", "use_dca")  # fixed by the weights' shapes and layout
# The record's layout. 3: with temper_with_draws. 2 (read, not written): the sampler as {"kind": plan kind,
# **plan fields}, no tempering (those models exported their pipeline's probabilities as they were). 1 (read,
# not written): the sampler as one flat dict of all plans' fields with a "plan" key, _FORMAT_1_SAMPLER_FIELDS.
SETTINGS_FORMAT = 3
READ_FORMATS = (1, 2, 3)
_FORMAT_1_SAMPLER_FIELDS = ("plan", "draws_per_branch", "interval", "diffusion", "renoise", "clamp_x0", "dr_head",
                           "ddim_steps", "ddim_prediction", "eta")


@dataclass(frozen=True)
class UniSegDiffSettings:
    """Everything about the method that is not in nnU-Net's plan; trainer variants replace fields."""
    dnet_width: float = 1.0          # fraction of the plan's features per stage (1.0: paper-sized)
    token_budget: int = 1024         # DCA at stages with at most this many positions, fusion above
    use_dca: bool = True
    sampler: SamplingPlan = field(default_factory=StagedPlan)
    fusion: str = "staple"           # or "vote" (no-STAPLE ablation)
    staple_pseudo_pixels: float | None = 0.03  # STAPLE's rate prior, fraction of pixels (None: paper, 1 pixel)
    seed: int | None = 0             # noise seed per forward call: predictions are reproducible
    pipeline: str = "diffusion"      # what eval forward returns (model/pipelines.py); the trainer may choose
    temper_with_draws: str = "free"  # exported probabilities shrunk where the draws disagree (TEMPER_MODES)

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise ValueError(f"unknown inference pipeline {self.pipeline!r}; one of {', '.join(PIPELINES)}")
        if self.temper_with_draws not in TEMPER_MODES:
            raise ValueError(f"temper_with_draws must be one of {', '.join(TEMPER_MODES)}, "
                             f"got {self.temper_with_draws!r}")
        if self.fusion not in ("staple", "vote"):
            raise ValueError(f"fusion must be 'staple' or 'vote', got {self.fusion!r}")
        if not isinstance(self.sampler, SamplingPlan):
            raise TypeError(f"sampler must be a sampling plan ({', '.join(p.__name__ for p in PLANS.values())}), "
                            f"got {self.sampler!r}")


def settings_to_dict(settings: UniSegDiffSettings) -> dict[str, Any]:
    """Plain nested dict (numbers, strings, None), safe for torch.save and JSON; format SETTINGS_FORMAT."""
    return {**asdict(settings), "sampler": {"kind": settings.sampler.kind, **asdict(settings.sampler)}}


def settings_from_dict(record: dict[str, Any], record_format: int = SETTINGS_FORMAT) -> UniSegDiffSettings:
    """Inverse of `settings_to_dict`, also for a record of format 1 or 2 (read as predicting without
    tempering, as they did). A record with other fields than its format's is refused: filling a missing
    field from today's class defaults would silently change how an old model predicts."""
    if record_format not in READ_FORMATS:
        raise ValueError(f"UniSegDiff settings record of format {record_format}, this version reads formats "
                         f"{', '.join(map(str, READ_FORMATS))}")
    before_tempering = record_format < 3
    expected = [f.name for f in fields(UniSegDiffSettings) if not (before_tempering and f.name == "temper_with_draws")]
    _require_fields("UniSegDiff settings", record, expected)
    sampler = _format_1_sampler(record["sampler"]) if record_format == 1 else record["sampler"]
    return UniSegDiffSettings(**{**record, "sampler": _plan_from_dict(sampler),
                                 **({"temper_with_draws": "off"} if before_tempering else {})})


def _plan_from_dict(record: dict[str, Any]) -> SamplingPlan:
    kind = record.get("kind")
    if kind not in PLANS:
        raise ValueError(f"recorded sampling plan of unknown kind {kind!r}; this version knows {', '.join(PLANS)}")
    plan = PLANS[kind]
    _require_fields(f"{kind} sampling plan", record, ["kind", *(f.name for f in fields(plan))])
    diffusion = record["diffusion"]
    _require_fields("diffusion settings", diffusion, [f.name for f in fields(DiffusionSettings)])
    return plan(**{k: v for k, v in record.items() if k not in ("kind", "diffusion")},
                diffusion=DiffusionSettings(**diffusion))


def _format_1_sampler(old: dict[str, Any]) -> dict[str, Any]:
    """A format-1 sampler record as the format-2 record of the plan it ran; the fields of the other plans
    were ignored when it predicted, and are dropped."""
    _require_fields("format-1 sampler", old, _FORMAT_1_SAMPLER_FIELDS)
    if old["plan"] == "staged":
        return {"kind": StagedPlan.kind, **{k: old[k] for k in ("draws_per_branch", "interval", "renoise",
                                                                  "clamp_x0", "dr_head", "diffusion")}}
    if old["plan"] == "ddim":
        return {"kind": DDIMPlan.kind, "samples": old["draws_per_branch"], "steps": old["ddim_steps"],
                "prediction": old["ddim_prediction"], "eta": old["eta"], "diffusion": old["diffusion"]}
    if old["plan"] == "one-step":
        return {"kind": OneStepPlan.kind, "samples": old["draws_per_branch"], "diffusion": old["diffusion"]}
    raise ValueError(f"format-1 sampler record of unknown plan {old['plan']!r}")


def _require_fields(what: str, record: dict[str, Any], names: list[str] | tuple[str, ...]) -> None:
    if set(record) != set(names):
        raise ValueError(f"the fields of the recorded {what} differ from this version's: unknown "
                         f"{sorted(set(record) - set(names))}, missing {sorted(set(names) - set(record))}; a "
                         "checkpoint of another nnunet_unisegdiff version: predict with that version")
