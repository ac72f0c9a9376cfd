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
    `wakeup` is set, or after `timeout` seconds. Raises OSError when inotify is refused."""

    def __init__(self, directory: str, wakeup: Wakeup) -> None:
        fd = _libc.inotify_init1(_IN_CLOEXEC | _IN_NONBLOCK)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        if _libc.inotify_add_watch(fd, os.fsencode(directory), _MASK) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {directory}: {os.strerror(err)}")
        self._fd = fd
        self._wakeup = wakeup

    def wait(self, timeout: float) -> None:
        if self._wakeup.is_set():
            return
        ready, _, _ = select.select([self._fd, self._wakeup], [], [], timeout)
        if self._fd in ready:
            self._drain()

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
