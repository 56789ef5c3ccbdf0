"""Stopping on request: SIGINT (Ctrl-C) and SIGTERM (what clusters send before preemption).

The first signal sets a flag; the training loop reads it at the next step boundary, writes a
checkpoint of the exact position (mid-epoch included) and raises ``Interrupted``, whose message
gives the resume command. A second SIGINT while the checkpoint is pending raises
``KeyboardInterrupt`` at once (the user insists; the last complete checkpoint stays). Handlers
are installed only in the main thread (Python delivers signals there) and put back on exit.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Iterator

from ..errors import VisionDojoError

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(VisionDojoError):
    """Training stopped on a signal after writing a resumable checkpoint."""

    def __init__(self, message: str, signal_number: int, run_dir: str):
        super().__init__(message)
        self.signal_number = signal_number
        self.run_dir = run_dir

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(signal.Signals(self.signal_number), 1)


class StopRequest:
    """The flag a signal sets; ``requested`` is the signal number, or 0."""

    def __init__(self) -> None:
        self.requested = 0

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.requested and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = self.requested or number


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {number: signal.signal(number, request._handle) for number in SIGNALS}
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
