#!/usr/bin/env python3
"""HF vs Megatron-Core logits parity; prints one JSON line.

    torchrun --nproc-per-node 2 tools/check_parity.py --hf HF_DIR --mcore MCORE_DIR --tp 2 --pp 1
"""

import sys

from uniapl_mcore.megatron.parity import main

if __name__ == "__main__":
    sys.exit(main())
