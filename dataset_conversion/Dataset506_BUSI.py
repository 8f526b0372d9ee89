"""BUSI breast ultrasound (Al-Dhabyani et al. 2020) -> $nnUNet_raw/Dataset506_BUSI.

    python dataset_conversion/Dataset506_BUSI.py ~/data/Dataset_BUSI_with_GT [--include-normal]

The same as `unisegdiff convert busi` (options: `-h`); the reader is
`nnunet_unisegdiff.conversion.busi`, the writer `nnunet_unisegdiff.conversion.writer.write_dataset`.
"""
import sys

from nnunet_unisegdiff.conversion.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script("busi"))
