"""Locks around CNI operations: one per attachment, and GC exclusive of everything else.

The spec forbids only concurrent operations on the same attachment (network, container id,
ifname), and asks GC to be exclusive of ADD/DEL. Plugins lock their own shared state:
host-local flocks its data dir, portmap/firewall call iptables with its wait lock (FACTS:
"Who serializes"). So ADD, DEL and CHECK of different attachments run in parallel here, as
containerd's go-cni runs them; an earlier version held one host-wide exclusive lock around
every operation, which capped a host at about 7 tasks/s.

- `CNILocks.attachment(...)`: a shared flock on the host lock file (so GC can exclude it),
  then an exclusive flock on a file of that attachment's own under `<lock file>.d/`.
- `CNILocks.exclusive()`: the exclusive flock on the host lock file (GC).

A waiting GC is not starved by a stream of ADDs: every acquisition first passes a turnstile
(`<lock file>.turn`), which GC holds for as long as it runs, so new ADDs queue behind it.

Every acquisition opens its own file description: flock locks belong to the open file
description, so two threads of one process exclude each other too. flock also works across
processes, so two agents (or `nstask gc`) on one host exclude each other the same way; an
older agent that still takes the host lock exclusively stays correct beside a newer one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator

from agent.errors import Unavailable
from cni.errors import io_failure

__all__ = ["DEFAULT_LOCK_PATH", "CNILocks", "HostLock"]

DEFAULT_LOCK_PATH = "/run/nstask/cni.lock"


class HostLock:
    """A flock on `path` (exclusive, or shared with `hold(shared=True)`); `timeout=None`
    waits forever."""

    def __init__(self, path: str = DEFAULT_LOCK_PATH, *, timeout: float | None = None) -> None:
        self.path = path
        self.timeout = timeout

    @contextlib.contextmanager
    def hold(self, *, shared: bool = False) -> Iterator[None]:
        fd = _open(self.path)
        try:
            _acquire(fd, self.path, self.timeout, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the description releases the flock


class CNILocks:
    """Per-attachment locks plus the GC lock, all under the host lock file's directory."""

    def __init__(self, path: str = DEFAULT_LOCK_PATH, *, timeout: float | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.turnstile = HostLock(path + ".turn", timeout=timeout)
        self.attachments_dir = path + ".d"

    @contextlib.contextmanager
    def attachment(self, network: str, container_id: str, ifname: str) -> Iterator[None]:
        """Hold the lock of one attachment (and keep GC out) for an ADD, DEL or CHECK."""
        host = self._shared()
        try:
            with self._attachment_file(f"{network}-{container_id}-{ifname}"):
                yield
        finally:
            os.close(host)

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Keep GC out, nothing else (STATUS)."""
        fd = self._shared()
        try:
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Exclusive of every other CNI operation on the host (GC)."""
        with self.turnstile.hold(), HostLock(self.path, timeout=self.timeout).hold():
            yield

    def _shared(self) -> int:
        """Pass the turnstile, take the host lock shared; returns its fd (close to release)."""
        with self.turnstile.hold():
            fd = _open(self.path)
            try:
                _acquire(fd, self.path, self.timeout, fcntl.LOCK_SH)
            except BaseException:
                os.close(fd)
                raise
        return fd

    @contextlib.contextmanager
    def _attachment_file(self, name: str) -> Iterator[None]:
        """An exclusive flock on `<dir>/<name>`, a file that exists only while held.

        The holder unlinks the file before releasing it, so lock files do not pile up. A
        waiter that then gets the flock holds it on an unlinked inode: it notices (the path
        is gone or names another inode) and tries again on the path's current file.
        """
        path = os.path.join(self.attachments_dir, name)
        while True:
            fd = _open(path)
            try:
                _acquire(fd, path, self.timeout, fcntl.LOCK_EX)
                if _same_file(fd, path):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.close(fd)


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _open(path: str) -> int:
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise io_failure(f"cannot open CNI lock {path}: {exc.strerror}") from exc


def _acquire(fd: int, path: str, timeout: float | None, mode: int) -> None:
    if timeout is None:
        fcntl.flock(fd, mode)
        return
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"CNI lock {path} is held by another operation for more than {timeout:g} s",
                    path=path,
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
