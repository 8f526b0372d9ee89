"""Shared fixtures: tiny nnU-Net plans (2D and 3D) built the way nnU-Net's planner writes them."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("nnUNet_compile", "0")
torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_plans(dim: int = 2, patch=None, features=(8, 16, 32, 32), arch="PlainConvUNet", config: str | None = None) -> dict:
    n = len(features)
    patch = list(patch or ([32, 32] if dim == 2 else [16, 16, 16]))
    conv = f"torch.nn.modules.conv.Conv{dim}d"
    kwargs = {"n_stages": n, "features_per_stage": list(features), "conv_op": conv,
              "kernel_sizes": [[3] * dim] * n, "strides": [[1] * dim] + [[2] * dim] * (n - 1),
              "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
              "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
              "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
              "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    if arch == "PlainConvUNet":
        kwargs["n_conv_per_stage"] = [2] * n
    else:
        kwargs["n_blocks_per_stage"] = [1] * n
    cfg = {"data_identifier": "nnUNetPlans_x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
           "patch_size": patch, "median_image_size_in_voxels": patch, "spacing": [1.0] * dim,
           "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
           "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
           "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {},
           "resampling_fn_probabilities": "resample_data_or_seg_to_shape", "resampling_fn_probabilities_kwargs": {},
           "architecture": {"network_class_name": f"dynamic_network_architectures.architectures.unet.{arch}",
                            "arch_kwargs": kwargs, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
           "batch_dice": False}
    return {"dataset_name": "Dataset999_Tiny", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": [1.0] * 3, "original_median_shape_after_transp": [1] + patch,
            "image_reader_writer": "NaturalImage2DIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "foreground_intensity_properties_per_channel": {}, "configurations": {config or f"{dim}d": cfg}}


@pytest.fixture
def plan_2d():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    pm = PlansManager(tiny_plans(2))
    return pm, pm.get_configuration("2d")


@pytest.fixture
def plan_3d():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    pm = PlansManager(tiny_plans(3))
    return pm, pm.get_configuration("3d")


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    """nnU-Net's three folders in tmp_path (nnunetv2.paths reads the variables lazily)."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    return tmp_path


def read_png(p: Path) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(p))


def verify_integrity(folder: Path, monkeypatch) -> None:
    """nnU-Net's own `verify_dataset_integrity`, its spawn pool replaced by an in-process one."""
    import types

    import nnunetv2.experiment_planning.verify_dataset_integrity as vdi

    class SerialPool:
        def __init__(self, *_):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *_):
            return False

        def starmap(self, fn, args):
            return [fn(*a) for a in args]

    serial = types.SimpleNamespace(get_context=lambda *_: types.SimpleNamespace(Pool=SerialPool))
    monkeypatch.setattr(vdi, "multiprocessing", serial)
    vdi.verify_dataset_integrity(str(folder), 1)
