"""mode=non-blocking: a bounded buffer between the pipe reader and a sender thread.

The reader never waits for the sink: records go into a buffer of at most ``max-buffer-size``
bytes of log text (default 1m, binary units, as the ECS shim logger); when a record does not
fit (and the buffer is not empty) it is dropped and counted, so a slow or dead sink can never
block the container. One sender thread hands buffered records to the real sink. Only this
mode imports threading.
"""

from __future__ import annotations

import threading
import time
from collections import deque

TYPE_CHECKING = False
if TYPE_CHECKING:
    from shim.lifecycle import Lifecycle
    from shim.sinks import Sink
    from shim.stats import Stats

    Record = tuple[str, str, int, str | None, int, bool]

__all__ = ["DEFAULT_MAX_BUFFER", "RingSink"]

DEFAULT_MAX_BUFFER = 1024 * 1024


class RingSink:
    """Looks like a sink to the reader (``add``/``flush``/``close``); feeds ``sink`` in a thread."""

    def __init__(
        self,
        sink: Sink,
        *,
        max_bytes: int,
        stats: Stats,
        lifecycle: Lifecycle,
    ) -> None:
        self.sink = sink
        self.max_bytes = max_bytes
        self.stats = stats
        self.lifecycle = lifecycle
        self._cond = threading.Condition()
        self._queue: deque[Record] = deque()
        self._queued_bytes = 0  # guarded by _cond
        self._batch: list[Record] = []  # reader only
        self._batch_bytes = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="nstask-sender", daemon=True)
        self._thread.start()

    def add(
        self,
        stream: str,
        log: str,
        time_ns: int,
        partial_id: str | None = None,
        partial_ordinal: int = 0,
        partial_last: bool = False,
    ) -> None:
        """Buffer one record, or drop it (counted) when the buffer is full."""
        size = len(log)
        used = self._queued_bytes + self._batch_bytes  # a racy read only makes us conservative
        if used + size > self.max_bytes and (self._batch or self._queue):
            self.stats.ring_dropped_lines += 1
            self.stats.ring_dropped_bytes += size
            return
        self._batch.append((stream, log, time_ns, partial_id, partial_ordinal, partial_last))
        self._batch_bytes += size

    @property
    def pending(self) -> int:
        """Records the reader added since the last flush."""
        return len(self._batch)

    def flush(self) -> None:
        """Hand the reader's batch to the sender thread (never waits for the sink)."""
        if not self._batch:
            return
        with self._cond:
            self._queue.extend(self._batch)
            self._queued_bytes += self._batch_bytes
            self.stats.buffered_lines = len(self._queue)
            self._cond.notify()
        self._batch = []
        self._batch_bytes = 0

    def close(self) -> None:
        """Flush, let the sender finish within the shutdown deadline, close the sink."""
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify()
        self.lifecycle.begin_shutdown()
        deadline = self.lifecycle.deadline or 0.0
        self._thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
        if self._thread.is_alive():  # the sink is stuck past the deadline: count what is left
            with self._cond:
                left = list(self._queue)
                self._queue.clear()
            self.stats.ring_dropped_lines += len(left)
            self.stats.ring_dropped_bytes += sum(len(record[1]) for record in left)
            self.stats.buffered_lines = 0

    def _take(self) -> list[Record] | None:
        """Everything queued, waiting for some; None once closed and empty."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            records = list(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            self.stats.buffered_lines = 0
            return records

    def _run(self) -> None:
        """The sender thread: move records to the sink; sink errors are counted, never fatal."""
        sink = self.sink
        while (records := self._take()) is not None:
            try:
                for record in records:
                    sink.add(*record)
                sink.flush()
            except OSError as exc:
                self.stats.sink_error(f"{exc}", state="down")
            except Exception as exc:  # a bug in a sink must not silently stop logging
                self.stats.sink_error(f"internal error: {exc!r}", state="down")
        try:
            sink.close()
        except OSError as exc:
            self.stats.sink_error(f"{exc}", state="down")
