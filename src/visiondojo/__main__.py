"""``python -m visiondojo ...`` (and ``torchrun --nproc-per-node N -m visiondojo train cfg.yaml``): the CLI."""

import sys

from .cli import main

sys.exit(main())
