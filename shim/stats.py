"""The shim's counters, written to ``<log path>.stats.json`` for the agent to show.

File format (one JSON object, replaced atomically by rename, at most about once a second while
anything changes and once more at exit)::

    {
      "version": 1,
      "pid": 1234,                 # the shim process
      "driver": "json-file",       # or "fluentd"
      "mode": "blocking",          # or "non-blocking"
      "lines": 10,                 # records read from the container (a split line counts per part)
      "bytes": 640,                # bytes of container output read (newlines included)
      "written_lines": 10,         # records the sink accepted (file written / sent or acked)
      "written_bytes": 640,        # bytes of log text in those records
      "dropped_lines": 0,          # records lost: ring buffer full, or the sink gave up on them
      "dropped_bytes": 0,
      "buffered_lines": 0,         # records waiting in the non-blocking ring buffer
      "sink_errors": 0,            # failed sink operations (connect, write, ack, rotate, ...)
      "sink_state": "ok",          # starting | ok | connecting | down | failed | closed
      "last_error": "",            # text of the most recent sink error, "" when none
      "started": 1795000000.12,    # epoch seconds
      "updated": 1795000001.50,    # epoch seconds of this snapshot
      "exited": false              # true in the final snapshot written at exit
    }

``failed`` means the driver could not start (for example fluentd unreachable without
fluentd-async); the shim exits 1 right after writing it, and last_error says why. Readers must
ignore keys they do not know. Counters are per shim process: a restarted container starts at 0.
"""

from __future__ import annotations

import os
import time

try:
    from _json import encode_basestring as _quote
except ImportError:  # pragma: no cover - CPython always ships _json
    from json.encoder import py_encode_basestring as _quote

__all__ = ["STATS_SUFFIX", "Stats", "stats_path"]

STATS_SUFFIX = ".stats.json"
INTERVAL = 1.0


def stats_path(log_path: str) -> str:
    """Where the shim for ``log_path`` keeps its counters."""
    return log_path + STATS_SUFFIX


class Stats:
    """Counters updated by the reader (main thread) and the sink (main or sender thread).

    Each counter has one writer thread, so plain ints are safe under the GIL; ``save`` is only
    called from the main thread.
    """

    def __init__(self, path: str, driver: str, mode: str) -> None:
        self.path = path
        self.driver = driver
        self.mode = mode
        self.lines = 0
        self.bytes = 0
        self.written_lines = 0
        self.written_bytes = 0
        self.ring_dropped_lines = 0  # written by the reader
        self.ring_dropped_bytes = 0
        self.sink_dropped_lines = 0  # written by the sink's thread
        self.sink_dropped_bytes = 0
        self.buffered_lines = 0
        self.sink_errors = 0
        self.sink_state = "starting"
        self.last_error = ""
        self.started = time.time()
        self._next_save = 0.0
        self._saved: tuple[object, ...] = ()

    def sink_error(self, message: str, *, state: str) -> None:
        """Count one failed sink operation and remember why."""
        self.sink_errors += 1
        self.last_error = message
        self.sink_state = state

    def _snapshot(self) -> tuple[object, ...]:
        return (
            self.lines,
            self.bytes,
            self.written_lines,
            self.written_bytes,
            self.ring_dropped_lines + self.sink_dropped_lines,
            self.ring_dropped_bytes + self.sink_dropped_bytes,
            self.buffered_lines,
            self.sink_errors,
            self.sink_state,
            self.last_error,
        )

    def render(self, *, exited: bool = False) -> str:
        """The JSON text of the current counters (no json import: the shim must start fast)."""
        (lines, nbytes, wlines, wbytes, dlines, dbytes, blines, errors, state, error) = (
            self._snapshot()
        )
        return (
            f'{{"version":1,"pid":{os.getpid()},"driver":{_quote(self.driver)},'
            f'"mode":{_quote(self.mode)},"lines":{lines},"bytes":{nbytes},'
            f'"written_lines":{wlines},"written_bytes":{wbytes},'
            f'"dropped_lines":{dlines},"dropped_bytes":{dbytes},"buffered_lines":{blines},'
            f'"sink_errors":{errors},"sink_state":{_quote(str(state))},'
            f'"last_error":{_quote(str(error))},"started":{self.started:.3f},'
            f'"updated":{time.time():.3f},"exited":{"true" if exited else "false"}}}\n'
        )

    def maybe_save(self) -> None:
        """Save if a second has passed since the last save and something changed."""
        now = time.monotonic()
        if now < self._next_save:
            return
        snapshot = self._snapshot()
        if snapshot == self._saved:
            return
        self._next_save = now + INTERVAL
        self.save(snapshot=snapshot)

    def save(self, *, exited: bool = False, snapshot: tuple[object, ...] | None = None) -> None:
        """Write the file atomically (temp file + rename); errors are ignored, never fatal."""
        self._saved = snapshot if snapshot is not None else self._snapshot()
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
            try:
                os.write(fd, self.render(exited=exited).encode("utf-8"))
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            try:  # noqa: SIM105 (contextlib is not loaded: the shim starts without site)
                os.unlink(tmp)
            except OSError:
                pass

    @property
    def seconds_to_next_save(self) -> float:
        """How long the poll loop may sleep before a due save (never negative)."""
        return max(0.0, self._next_save - time.monotonic())
