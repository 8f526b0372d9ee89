"""synthetic lesion images for the demo and the tests (no download) -> $nnUNet_raw/Dataset599_Synthetic.

    python dataset_conversion/Dataset599_Synthetic.py --num-cases 40 --num-test 10 --size 64

The same as `unisegdiff convert synthetic` (options: `-h`); the reader is
`nnunet_unisegdiff.conversion.synthetic`, the writer `nnunet_unisegdiff.conversion.writer.write_dataset`.
"""
import sys

from nnunet_unisegdiff.conversion.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script("synthetic"))
