#!/usr/bin/env python3
"""The paper's comparison (Table 2, Figures 3–4) at any scale; resumable.

    python tools/reproduce_paper.py [--config FILE] [--quick] [--seeds N] --out DIR
"""

import sys

from uniapl_mcore.eval.reproduce_cli import main

if __name__ == "__main__":
    sys.exit(main())
