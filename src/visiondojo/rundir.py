"""Run folders: what a run writes, and the rule that an existing run is never overwritten silently."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from .errors import RunExistsError, VisionDojoError

PLAN = "plan.yaml"
WEIGHTS = "model.safetensors"
METRICS = "metrics.json"
HISTORY = "history.csv"
REPORT = "report.html"
CHECKPOINTS = "checkpoints"
RUN_FILES = (PLAN, WEIGHTS, METRICS, HISTORY, REPORT, CHECKPOINTS)


def default_run_dir(root: Path = Path("runs"), prefix: str = "") -> Path:
    """A fresh ``runs/[prefix]YYYYmmdd-HHMMSS[-N]`` folder name that does not exist yet."""
    stamp = prefix + time.strftime("%Y%m%d-%H%M%S")
    candidate = root / stamp
    n = 1
    while candidate.exists():
        n += 1
        candidate = root / f"{stamp}-{n}"
    return candidate


def require_run(path: Path) -> Path:
    """``path`` must hold a run (its plan.yaml) to be resumed."""
    if not (path / PLAN).is_file():
        raise RunExistsError(f"{path}: no run to resume (no {PLAN}); drop --resume to start a new run")
    return path


def claim_run_dir(path: Path, *, overwrite: bool, resume: bool) -> Path:
    """Create ``path`` for a new run, refusing a folder that holds anything unless told otherwise.

    ``overwrite`` removes only the files a run writes (listed in RUN_FILES); anything else the
    user keeps there stays. ``resume`` needs the folder to hold a run.
    """
    if resume:
        return require_run(path)
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            holds_run = any((path / name).exists() for name in RUN_FILES)
            what = "already holds a run" if holds_run else "is not empty"
            raise RunExistsError(
                f"{path}: the output folder {what}. Choose another --out, continue it with --resume, "
                "or pass --overwrite (Python: overwrite=True) to replace the run's files"
            )
        for name in RUN_FILES:
            target = path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VisionDojoError(f"{path}: the run folder cannot be created ({exc.strerror or exc}); choose another "
                              "--out (Python: out=...)") from None
    return path


CHECKPOINT_COPIES = 8
"""Copies of the weights a run keeps on disk at once: the last checkpoint and its predecessor
(weights + two optimizer moments each), the best weights and model.safetensors."""
REPORT_MB = 50
"""Room for the report, its figures, the history and the plan."""


def check_writable(path: Path, weight_bytes: int) -> None:
    """Refuse, before any training, a run folder that cannot be written or whose disk lacks the
    room for the run's checkpoints and report; the error says which and how much."""
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise VisionDojoError(f"{path}: the run folder cannot be written ({exc.strerror or exc}); choose another "
                              "--out (Python: out=...) or fix its permissions") from None
    needed = CHECKPOINT_COPIES * weight_bytes + REPORT_MB * 2**20
    free = shutil.disk_usage(path).free
    if free < needed:
        raise VisionDojoError(f"{path}: {free / 2**20:.0f} MB free on its disk, but the run needs about "
                              f"{needed / 2**20:.0f} MB for its checkpoints and report; free some space or choose "
                              "another --out")
