"""nnU-Net plans built in memory, the way nnU-Net's planner writes them, for a model without a
preprocessed dataset: the tests' tiny networks, the benchmarks' paper-sized ones and
`unisegdiff gradients` without MODEL_DIR all come from `unet_plans`."""
from __future__ import annotations

import math
from collections.abc import Sequence

_REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def nnunet_features(patch: Sequence[int], base: int = 32, cap: int | None = None) -> list[int]:
    """Stages and widths as nnU-Net plans them: halve until the smallest side is 4 (at least two
    stages), features base * 2^i capped at 512 (2D) / 320 (3D)."""
    cap = cap or (512 if len(patch) == 2 else 320)
    n_stages = max(2, int(math.log2(min(patch) / 4)) + 1)
    return [min(base * 2 ** i, cap) for i in range(n_stages)]


def _arch_kwargs(dim: int, features: Sequence[int], arch: str, decoder_convs: int) -> dict:
    n = len(features)
    kwargs = {"n_stages": n, "features_per_stage": list(features), "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
              "kernel_sizes": [[3] * dim] * n, "strides": [[1] * dim] + [[2] * dim] * (n - 1),
              "n_conv_per_stage_decoder": [decoder_convs] * (n - 1), "conv_bias": True,
              "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
              "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
              "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    if arch == "PlainConvUNet":
        kwargs["n_conv_per_stage"] = [2] * n
    else:
        kwargs["n_blocks_per_stage"] = [1] * n
    return kwargs


def unet_plans(patch: Sequence[int], features: Sequence[int] | None = None, *, arch: str = "PlainConvUNet",
               decoder_convs: int = 2, num_channels: int = 1, batch_size: int = 2, batch_dice: bool = True,
               configuration: str | None = None, dataset_name: str = "Dataset000_InMemory",
               data_identifier: str | None = None, original_spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict:
    """A plans dict with one configuration (default "2d"/"3d" by the patch) of a `PlainConvUNet`
    or `ResidualEncoderUNet` over `patch`; features default to nnU-Net's (`nnunet_features`)."""
    dim, patch = len(patch), list(patch)
    configuration = configuration or f"{dim}d"
    features = list(features or nnunet_features(patch))
    cfg = {"data_identifier": data_identifier or f"nnUNetPlans_{configuration}",
           "preprocessor_name": "DefaultPreprocessor", "batch_size": batch_size,
           "patch_size": patch, "median_image_size_in_voxels": patch, "spacing": [1.0] * dim,
           "normalization_schemes": ["ZScoreNormalization"] * num_channels, "use_mask_for_norm": [False] * num_channels,
           "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
           "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {},
           "resampling_fn_probabilities": "resample_data_or_seg_to_shape", "resampling_fn_probabilities_kwargs": {},
           "architecture": {"network_class_name": f"dynamic_network_architectures.architectures.unet.{arch}",
                            "arch_kwargs": _arch_kwargs(dim, features, arch, decoder_convs),
                            "_kw_requires_import": list(_REQUIRES_IMPORT)},
           "batch_dice": batch_dice}
    return {"dataset_name": dataset_name, "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": list(original_spacing),
            "original_median_shape_after_transp": [1] + patch,
            "image_reader_writer": "NaturalImage2DIO", "label_manager": "LabelManager",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "foreground_intensity_properties_per_channel": {}, "configurations": {configuration: cfg}}


def tiny_plans(dim: int = 2, patch: Sequence[int] | None = None, features: Sequence[int] = (8, 16, 32, 32),
               arch: str = "PlainConvUNet", config: str | None = None) -> dict:
    """The tests' plan: a 32x32 (2D) or 16^3 (3D) patch, 8..32 features, one decoder conv."""
    patch = list(patch or ([32, 32] if dim == 2 else [16, 16, 16]))
    return unet_plans(patch, features, arch=arch, decoder_convs=1, batch_dice=False, configuration=config,
                      dataset_name="Dataset999_Tiny", data_identifier="nnUNetPlans_x")
