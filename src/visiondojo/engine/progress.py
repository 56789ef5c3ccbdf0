"""Progress: a rich bar per epoch (loss, images/s, ETA) and one summary line per epoch."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


SUMMARY_INTERVAL_S = 1.0
"""Epoch summary lines come at most this often (a tiny dataset runs hundreds of epochs a minute)."""


class TrainingProgress:
    """Shows progress on a terminal; with ``enabled=False`` it stays silent (tests, libraries)."""

    def __init__(self, enabled: bool | None = None, console: Console | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task = None
        self._last_summary = -float("inf")

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False, soft_wrap=True)

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if not self.enabled:
            return
        self._progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[ips]} img/s"),
            TimeRemainingColumn(), console=self.console, transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=steps, loss="-", ips="-")

    def update(self, step: int, loss: float, images_per_s: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, loss=f"{loss:.4f}", ips=f"{images_per_s:,.0f}")

    def end_epoch(self, summary: str, *, last: bool = False) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        now = time.perf_counter()
        if last or now - self._last_summary >= SUMMARY_INTERVAL_S:
            self._last_summary = now
            self.log(summary)
