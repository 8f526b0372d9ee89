"""UniSegDiff (MICCAI 2025) as an nnU-Net v2 plugin: staged diffusion on top of nnU-Net's UNet.

`staple`, `staple_batched` and `staple_multiclass` are importable from here; they load on first
use (they need torch), so importing the package, as `unisegdiff trainer-dir` does, stays light.
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {name: "nnunet_unisegdiff.diffusion.staple" for name in ("staple", "staple_batched", "staple_multiclass")}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
