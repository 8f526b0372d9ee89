"""the paper's unified lesion dataset, merged from the six converted ones -> $nnUNet_raw/Dataset510_Unified.

    python dataset_conversion/Dataset510_Unified.py [RAW_DIR] --datasets 501 502 503 504 505 506 --resize 256

The same as `unisegdiff convert unified` (options: `-h`); the reader is
`nnunet_unisegdiff.conversion.unified`, the writer `nnunet_unisegdiff.conversion.writer.write_dataset`.
"""
import sys

from nnunet_unisegdiff.conversion.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script("unified"))
