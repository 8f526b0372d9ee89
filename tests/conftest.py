"""Shared fixtures: tiny nnU-Net plans (2D and 3D, from the package's plan builder), nnU-Net's three
folders in a temporary directory, and helpers of the converter tests."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_unisegdiff.model.plans import tiny_plans

os.environ.setdefault("nnUNet_compile", "0")
# nnU-Net's export and metric pools spawn workers that import nnU-Net and torch again: one each is enough for
# tiny data (the subprocesses of the end-to-end and smoke runs inherit this)
os.environ.setdefault("nnUNet_def_n_proc", "1")
# every process the tests start samples a smaller intensity fingerprint when it plans (tests/site/sitecustomize.py)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent / "site"),
                                                       os.environ.get("PYTHONPATH")) if p)
# under pytest-xdist every worker has a core of its own
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


@pytest.fixture
def plan_2d():
    pm = PlansManager(tiny_plans(2))
    return pm, pm.get_configuration("2d")


@pytest.fixture
def plan_3d():
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
