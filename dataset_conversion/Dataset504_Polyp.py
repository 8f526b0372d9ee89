"""the five colon-polyp sets (Kvasir-SEG, CVC-ClinicDB, CVC-ColonDB, ETIS, CVC-300) -> $nnUNet_raw/Dataset504_Polyp.

    python dataset_conversion/Dataset504_Polyp.py ~/data/polyps [--pranet-test imagesTs]

The same as `unisegdiff convert polyp` (options: `-h`); the reader is
`nnunet_unisegdiff.conversion.polyp`, the writer `nnunet_unisegdiff.conversion.writer.write_dataset`.
"""
import sys

from nnunet_unisegdiff.conversion.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script("polyp"))
