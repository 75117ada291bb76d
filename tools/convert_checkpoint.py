#!/usr/bin/env python3
"""Convert checkpoints between Hugging Face and Megatron-Core torch_dist.

    python tools/convert_checkpoint.py hf-to-mcore --hf HF_DIR --out MCORE_DIR
    python tools/convert_checkpoint.py mcore-to-hf --mcore MCORE_DIR --out HF_DIR
    python tools/convert_checkpoint.py mcore-to-hf --mcore RUN/checkpoints/latest/policy \
        --out HF_DIR
"""

import sys

from uniapl_mcore.checkpoint.convert_cli import main

if __name__ == "__main__":
    sys.exit(main())
