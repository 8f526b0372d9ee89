"""BTD brain tumour MRI (Cheng et al., figshare 1512427) -> $nnUNet_raw/Dataset502_BTD.

    python dataset_conversion/Dataset502_BTD.py ~/data/brain_tumor_dataset [--folds cvind]

The same as `unisegdiff convert btd` (options: `-h`); the reader is
`nnunet_unisegdiff.conversion.btd`, the writer `nnunet_unisegdiff.conversion.writer.write_dataset`.
"""
import sys

from nnunet_unisegdiff.conversion.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script("btd"))
