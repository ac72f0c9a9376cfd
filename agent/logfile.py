"""The agent's own log file, rotated by size (`nstask agent --log-file`, and every detached
agent): agent.log, then agent.log.1 ... agent.log.<log_max_files> (the oldest dropped).

The file is the process's fd 1 and 2 as well, so a traceback or anything a library prints lands
in the current file too; at each rotation the new file is put on both with dup2. Under systemd
the agent logs to stderr and journald keeps (and rotates) it: no file there.
"""

from __future__ import annotations

import contextlib
import os
import threading


class RotatingLog:
    """A text stream (what structlog's PrintLogger writes to) that rotates its file by size."""

    def __init__(
        self, path: str, *, max_bytes: int, max_files: int, std_fds: tuple[int, ...] = (1, 2)
    ) -> None:
        self.path = path
        self.std_fds = std_fds
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._lock = threading.Lock()
        self._fd = -1
        self._size = 0
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        for target in self.std_fds:
            os.dup2(fd, target)  # inheritable, as fds 1 and 2 are: children print here too
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._size = os.fstat(fd).st_size

    def _rotate(self) -> None:
        if self.max_files <= 0:
            os.ftruncate(self._fd, 0)
            self._size = 0
            return
        for n in range(self.max_files - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}.{n}", f"{self.path}.{n + 1}")
        os.replace(self.path, f"{self.path}.1")
        self._open()

    def write(self, text: str) -> int:
        data = text.encode(errors="replace")
        with self._lock:
            if self.max_bytes > 0 and self._size and self._size + len(data) > self.max_bytes:
                # A failed rotation: keep writing where we are rather than lose the line.
                with contextlib.suppress(OSError):
                    self._rotate()
            os.write(self._fd, data)
            self._size += len(data)
        return len(text)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False
