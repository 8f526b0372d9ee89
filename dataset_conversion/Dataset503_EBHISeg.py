"""EBHI-Seg colorectal histology, Adenocarcinoma (Shi et al. 2023) -> $nnUNet_raw/Dataset503_EBHISeg.

    python dataset_conversion/Dataset503_EBHISeg.py ~/data/EBHI-SEG [--classes all]

The same as `unisegdiff convert ebhiseg` (options: `-h`); the reader is
`nnunet_unisegdiff.conversion.ebhiseg`, the writer `nnunet_unisegdiff.conversion.writer.write_dataset`.
"""
import sys

from nnunet_unisegdiff.conversion.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script("ebhiseg"))
