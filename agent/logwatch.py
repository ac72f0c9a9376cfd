"""Waiting for a container's log file to change, with inotify, instead of polling it.

A follower of `nstask logs -f` (and `nstask run`, which streams its task's output) sleeps
until the directory of the file it reads sees a write, a new file or a rename (the shim
rotating), or until it is woken: its task stopped or its client went away. Polling every
20 ms cost each follower a read, two fstats and an open 50 times a second for as long as
its task ran. When inotify is not available (no watch left: `fs.inotify.max_user_watches`)
the follower polls as before.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select

__all__ = ["Wakeup", "Watch"]

_IN_CLOEXEC = 0o2000000
_IN_NONBLOCK = 0o4000
_IN_MODIFY = 0x002
_IN_ATTRIB = 0x004
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
)
_libc = ctypes.CDLL(None, use_errno=True)


class Wakeup:
    """A threading.Event over an eventfd, so that a wait can also watch other fds: once
    set, every wait (current and later) returns at once."""

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._set = False

    def fileno(self) -> int:
        return self._fd

    def set(self) -> None:
        if not self._set:
            self._set = True
            os.eventfd_write(self._fd, 1)

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        if not self._set:
            select.select([self._fd], [], [], timeout)
        return self._set

    def close(self) -> None:
        os.close(self._fd)


class Watch:
    """inotify on one directory; `wait(timeout)` returns when something in it changed, when
    `wakeup` is set, or after `timeout` seconds. A directory not there yet (a follower asks
    before its container has started) is waited for through its parent, then watched.
    Raises OSError when inotify is refused or neither the directory nor its parent exists."""

    def __init__(self, directory: str, wakeup: Wakeup) -> None:
        fd = _libc.inotify_init1(_IN_CLOEXEC | _IN_NONBLOCK)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._fd = fd
        self._wakeup = wakeup
        self._directory = directory
        self._parent: int | None = None  # the parent's watch, while ours is missing
        try:
            if self._add(directory, missing_ok=True) is None:
                self._parent = self._add(
                    os.path.dirname(directory.rstrip("/")) or "/", missing_ok=False
                )
                self._watch_directory()  # made between the two adds: its event went to nobody
        except BaseException:
            os.close(fd)
            raise

    def _add(self, directory: str, *, missing_ok: bool) -> int | None:
        wd = int(_libc.inotify_add_watch(self._fd, os.fsencode(directory), _MASK))
        if wd >= 0:
            return wd
        err = ctypes.get_errno()
        if missing_ok and err == errno.ENOENT:
            return None
        raise OSError(err, f"inotify_add_watch {directory}: {os.strerror(err)}")

    def _watch_directory(self) -> None:
        """Once the directory exists: watch it, and no longer the parent (other tasks' comings
        and goings would wake us for nothing)."""
        if self._parent is not None and self._add(self._directory, missing_ok=True) is not None:
            _libc.inotify_rm_watch(self._fd, self._parent)
            self._parent = None

    def wait(self, timeout: float) -> None:
        if self._wakeup.is_set():
            return
        ready, _, _ = select.select([self._fd, self._wakeup], [], [], timeout)
        if self._fd in ready:
            self._drain()
            self._watch_directory()  # when something appeared in the parent

    def _drain(self) -> None:
        while True:
            try:
                if not os.read(self._fd, 4096):
                    return
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return
                raise

    def close(self) -> None:
        os.close(self._fd)
