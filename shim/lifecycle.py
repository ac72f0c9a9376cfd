"""When the shim must stop trying: the shutdown deadline every retrying sink obeys.

containerd sends SIGTERM at task delete and SIGKILL about 12 s later. A sink that cannot
deliver (fluentd down) may retry while the container runs, but once the streams end or SIGTERM
arrives it gets DRAIN_SECONDS, then drops what is left (counted) so the shim exits on its own.
"""

from __future__ import annotations

import select
import time

__all__ = ["DRAIN_SECONDS", "Lifecycle"]

DRAIN_SECONDS = 8.0  # after SIGTERM/EOF, stop well before containerd's 12 s SIGKILL
_IDLE_STEP = 0.5  # a long back-off wakes this often to keep the stats file current


def _nothing() -> None:
    """Default idle hook."""


class Lifecycle:
    """Watches the signal wake-up fd (which stays readable once a signal arrived).

    Safe to call from the sender thread too: it only polls the fd and reads floats.
    """

    def __init__(self, wakeup_fd: int) -> None:
        self._poller = select.poll()
        self._poller.register(wakeup_fd, select.POLLIN)
        self.deadline: float | None = None
        self.idle = _nothing  # the main thread sets this to save stats while a sink backs off

    def begin_shutdown(self) -> None:
        """Start the drain period (at EOF of both streams, or on SIGTERM)."""
        if self.deadline is None:
            self.deadline = time.monotonic() + DRAIN_SECONDS

    def shutting_down(self) -> bool:
        """True once SIGTERM arrived or the streams ended."""
        if self.deadline is None and self._poller.poll(0):
            self.begin_shutdown()
        return self.deadline is not None

    def expired(self) -> bool:
        """True when the drain period is over: give up and drop."""
        return self.shutting_down() and time.monotonic() >= (self.deadline or 0.0)

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, returning early when a signal arrives or the deadline passes."""
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            if self.deadline is not None:
                end = min(end, self.deadline)
            if now >= end:
                return
            if self._poller.poll(int(min(end - now, _IDLE_STEP) * 1000) + 1):
                if self.deadline is None:
                    self.begin_shutdown()
                    continue
                time.sleep(min(end - now, _IDLE_STEP))  # fd stays readable: do not spin
            self.idle()
