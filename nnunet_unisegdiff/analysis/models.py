"""The model `unisegdiff gradients` measures: a trainer folder's checkpoint, a preprocessed dataset's
plans or the synthetic plan, built as its trainer builds it."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_unisegdiff.conversion.registry import BINARY, RGB
from nnunet_unisegdiff.model.plans import unet_plans
from nnunet_unisegdiff.nnunet_ext import TRAINER_DIR
from nnunet_unisegdiff.training import variants
from nnunet_unisegdiff.training.losses import segmentation_loss
from nnunet_unisegdiff.training.trainer import nnUNetTrainerUniSegDiff


class GradientError(ValueError):
    """Bad input (folder of an unknown kind, missing checkpoint or data)."""


def synthetic_plans(size: int = 64, num_channels: int = 3) -> dict:
    """The 2d plan nnU-Net makes for `size` x `size` RGB PNGs, for a model without a dataset."""
    return unet_plans([size, size], num_channels=num_channels, dataset_name="Dataset000_SyntheticInMemory",
                      original_spacing=(999.0, 1.0, 1.0))  # nnU-Net's spacing of natural 2D images


def synthetic_dataset_json(num_channels: int = 3) -> dict:
    names = {str(k): v for k, v in RGB.items()} if num_channels == 3 else {str(i): f"c{i}" for i in range(num_channels)}
    return {"channel_names": names, "labels": dict(BINARY), "numTraining": 0, "file_ending": ".png"}


def find_trainer_class(name: str):
    """One of our trainer classes by name (the package's variants first, then nnU-Net's search
    including nnUNet_extTrainer, as nnUNetv2_predict does)."""
    cls = getattr(variants, name, None)
    if cls is None:
        previous = os.environ.get("nnUNet_extTrainer")
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(p for p in (str(TRAINER_DIR), previous) if p)
        try:
            cls = recursive_find_trainer_class_by_name(name)
        except RuntimeError as e:
            raise GradientError(str(e).splitlines()[0]) from None
        finally:
            if previous is None:
                os.environ.pop("nnUNet_extTrainer", None)
            else:
                os.environ["nnUNet_extTrainer"] = previous
    if not (isinstance(cls, type) and issubclass(cls, nnUNetTrainerUniSegDiff)):
        raise GradientError(f"{name} is not a UniSegDiff trainer (it has no DNet)")
    return cls


def build_model(trainer_cls, plans: dict, dataset_json: dict, configuration: str):
    """(network, plans manager, configuration manager, seg loss) as the trainer builds them."""
    pm = PlansManager(plans)
    if configuration not in pm.available_configurations:
        known = ", ".join(pm.available_configurations)
        raise GradientError(f"configuration {configuration!r} not in the plans ({known})")
    cm = pm.get_configuration(configuration)
    lm = pm.get_label_manager(dataset_json)
    if lm.has_regions:
        raise GradientError("region-based labels are not supported by UniSegDiff")
    network = trainer_cls.build_network_architecture(pm, cm, determine_num_input_channels(pm, cm, dataset_json),
                                                     lm.num_segmentation_heads, enable_deep_supervision=False)
    seg_loss = segmentation_loss(batch_dice=cm.batch_dice, ignore_label=lm.ignore_label)
    return network, pm, cm, seg_loss


def model_dir_kind(folder: Path | None, plans_name: str = "nnUNetPlans") -> str:
    if folder is None:
        return "none"
    if not folder.is_dir():
        raise GradientError(f"not a folder: {folder}")
    if (folder / "plans.json").is_file() and any(folder.glob("fold_*")):
        return "trainer"
    if (folder / f"{plans_name}.json").is_file() and (folder / "dataset.json").is_file():
        return "preprocessed"
    raise GradientError(f"{folder} is neither an nnU-Net trainer folder (plans.json, fold_*/) nor a preprocessed "
                        f"dataset folder ({plans_name}.json, dataset.json)")


@dataclass
class ModelSource:
    """What the model is built from: plans, dataset.json and trainer, and trained weights if any."""
    plans: dict
    dataset_json: dict
    configuration: str
    trainer: str
    state: dict | None
    info: dict
    preprocessed: Path | None  # where its preprocessed cases are, if known


def model_source(model_dir: Path | None, *, fold: int, checkpoint: str, configuration: str, plans_name: str,
                 trainer: str, size: int, preprocessed: Path | None) -> ModelSource:
    """A trainer folder's checkpoint, a preprocessed dataset's plans, or the synthetic plan."""
    kind = model_dir_kind(model_dir, plans_name)
    fresh = {"source": "freshly initialised", "trainer": trainer}
    if kind == "trainer":
        return _trained_source(model_dir, fold, checkpoint, configuration, preprocessed)
    if kind == "preprocessed":
        return ModelSource(json.loads((model_dir / f"{plans_name}.json").read_text()),
                           json.loads((model_dir / "dataset.json").read_text()), configuration, trainer, None,
                           fresh, preprocessed or model_dir)
    return ModelSource(synthetic_plans(size), synthetic_dataset_json(), "2d", trainer, None, fresh, preprocessed)


def _trained_source(model_dir: Path, fold: int, checkpoint: str, configuration: str,
                    preprocessed: Path | None) -> ModelSource:
    ckpt_file = model_dir / f"fold_{fold}" / checkpoint
    if not ckpt_file.is_file():
        raise GradientError(f"no checkpoint {ckpt_file}")
    ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=False)
    plans = json.loads((model_dir / "plans.json").read_text())
    if preprocessed is None and os.environ.get("nnUNet_preprocessed"):
        preprocessed = Path(os.environ["nnUNet_preprocessed"]) / plans["dataset_name"]
    info = {"source": "trained", "trainer": ckpt["trainer_name"], "checkpoint": str(ckpt_file),
            "epoch": ckpt.get("current_epoch")}
    return ModelSource(plans, json.loads((model_dir / "dataset.json").read_text()),
                       ckpt.get("init_args", {}).get("configuration", configuration), ckpt["trainer_name"],
                       ckpt["network_weights"], info, preprocessed)
