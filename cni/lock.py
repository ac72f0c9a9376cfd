"""One host-wide lock around CNI operations.

Concurrent portmap/firewall/bridge calls race on iptables and IPAM state (FACTS: field
reports), so every CNI operation on the host runs under one exclusive flock. That also makes
GC exclusive of ADD/DEL. Each acquisition opens its own file description: flock locks belong
to the open file description, so two threads of one process exclude each other too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator

from agent.errors import Unavailable
from cni.errors import io_failure

__all__ = ["DEFAULT_LOCK_PATH", "HostLock"]

DEFAULT_LOCK_PATH = "/run/nstask/cni.lock"


class HostLock:
    """An exclusive flock on `path`; `timeout=None` waits forever."""

    def __init__(self, path: str = DEFAULT_LOCK_PATH, *, timeout: float | None = None) -> None:
        self.path = path
        self.timeout = timeout

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        fd = self._open()
        try:
            self._acquire(fd)
            yield
        finally:
            os.close(fd)  # closing the description releases the flock

    def _open(self) -> int:
        try:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise io_failure(f"cannot open CNI lock {self.path}: {exc.strerror}") from exc

    def _acquire(self, fd: int) -> None:
        if self.timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Unavailable(
                        f"CNI lock {self.path} is held by another operation "
                        f"for more than {self.timeout:g} s",
                        path=self.path,
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
