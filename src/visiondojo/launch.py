"""What the launcher (torchrun, or any launcher that sets its variables) says about this process.

Environment only, no ``torch.distributed``: planning and data loading read the job's size before
(or without) a process group, from any layer of the package.
"""

from __future__ import annotations

import os


def launched_world_size() -> int:
    """How many processes the launcher started for this job; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_world_size() -> int:
    """How many of the job's processes run on this machine (LOCAL_WORLD_SIZE); 1 without a launcher."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def launched() -> bool:
    """Whether this process is one of several that a launcher started."""
    return launched_world_size() > 1
