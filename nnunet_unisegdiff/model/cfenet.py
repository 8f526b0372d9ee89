"""CFENet condition features: one forward pass of nnU-Net's planned UNet, tapped with forward
hooks so its own forward code is used as is (PlainConvUNet and ResidualEncoderUNet alike).

CF_i are the decoder's outputs at each resolution plus the bottleneck (docs/method.md): the trained
decoder has already mapped every modality towards mask-like features.
"""
from __future__ import annotations

from torch import Tensor, nn


class CFENetTap:
    """Records CFENet's per-resolution decoder features while `__call__` runs it; idle otherwise.

    The hooks are registered once, so a compiled CFENet sees the same module every call.
    """

    def __init__(self, cfenet: nn.Module) -> None:
        self.cfenet = cfenet
        self._recording: list[Tensor] | None = None
        self._bottleneck: Tensor | None = None
        for stage in cfenet.decoder.stages:
            stage.register_forward_hook(self._record_stage)
        cfenet.encoder.register_forward_hook(self._record_bottleneck)

    def _record_stage(self, module: nn.Module, args, output: Tensor) -> None:
        if self._recording is not None:
            self._recording.append(output)

    def _record_bottleneck(self, module: nn.Module, args, output) -> None:
        if self._recording is not None:
            self._bottleneck = output[-1] if isinstance(output, (list, tuple)) else output

    def __call__(self, image: Tensor) -> tuple[Tensor, list[Tensor]]:
        """image: (B, C_in, *spatial) -> (CFENet's full-resolution logits, [CF_0 .. CF_{S-1}])
        with CF_0 at full resolution and CF_{S-1} the bottleneck."""
        self._recording = []
        try:
            out = self.cfenet(image)
            decoder_features = self._recording[::-1]  # decoder runs from low to high resolution
            return (out[0] if isinstance(out, (list, tuple)) else out), decoder_features + [self._bottleneck]
        finally:
            self._recording, self._bottleneck = None, None
