"""AMD-SD retinal OCT (Hu et al., Sci Data 2024) -> $nnUNet_raw/Dataset501_AMDSD.

    python dataset_conversion/Dataset501_AMDSD.py ~/data/AMD-SD [--classes multi]

The same as `unisegdiff convert amdsd` (options: `-h`); the reader is
`nnunet_unisegdiff.conversion.amdsd`, the writer `nnunet_unisegdiff.conversion.writer.write_dataset`.
"""
import sys

from nnunet_unisegdiff.conversion.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script("amdsd"))
