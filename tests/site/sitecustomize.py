"""Run at start-up by every Python process the tests launch (tests/conftest.py puts this folder on
PYTHONPATH): nnU-Net's dataset fingerprint with a smaller intensity sample.

`DatasetFingerprintExtractor` samples 1e8 foreground intensities per dataset, whatever the dataset's
size, and sends them through its process pool: about 12 s of CPU and 5 GB per `nnUNetv2_plan_and_preprocess`,
for statistics that only CT normalisation reads. The tests' datasets are tiny and z-scored, so under the
tests the sample is `VOXELS`; every other step of the command runs as shipped. nnU-Net is patched when
its module is first imported, so processes that never plan import nothing more.
"""
import importlib.abc
import importlib.util
import sys

MODULE = "nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor"
VOXELS = 100_000


def _smaller_sample(module) -> None:
    init = module.DatasetFingerprintExtractor.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.num_foreground_voxels_for_intensitystats = VOXELS

    module.DatasetFingerprintExtractor.__init__ = __init__


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != MODULE:
            return None
        sys.meta_path.remove(self)  # find the real module, once
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _smaller_sample(module)

        spec.loader.exec_module = exec_and_patch
        return spec


sys.meta_path.insert(0, _PatchOnImport())
