"""COVID-19 CT lung infection (Ma et al. and MedSeg), axial slices -> $nnUNet_raw/Dataset505_COVID19.

    python dataset_conversion/Dataset505_COVID19.py ~/data/covid19 [--slices lesion]

The same as `unisegdiff convert covid19` (options: `-h`); the reader is
`nnunet_unisegdiff.conversion.covid19`, the writer `nnunet_unisegdiff.conversion.writer.write_dataset`.
"""
import sys

from nnunet_unisegdiff.conversion.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script("covid19"))
