"""Start a logging binary the way containerd's runtime shim does, without containerd.

For the shim's tests, bench/shim_start.py and debugging a logger by hand: fd 3 = the read end
of a stdout pipe, fd 4 = stderr, fd 5 = the write end of the readiness pipe, argv = the URI's
query pairs, environment = only CONTAINER_ID and CONTAINER_NAMESPACE (no PATH), as
containerd 1.6's newBinaryCmd builds it. posix_spawn with dup2 file actions plays Go's
exec.Cmd ExtraFiles. Not imported by the shim itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import time
from collections.abc import Mapping, Sequence

__all__ = ["LoggerProcess", "spawn_logger", "uri_args"]

_HIGH_FD = 64  # sources are moved above 3..5 first so the dup2 actions cannot clobber each other


def uri_args(query: Mapping[str, str]) -> list[str]:
    """The argv tail containerd builds from a URI query: ``key value`` for each pair."""
    args: list[str] = []
    for key, value in query.items():
        args += [key, value]
    return args


class LoggerProcess:
    """A running logger with the container-side ends of its pipes.

    ``stdout``/``stderr`` are the write ends (what the container would write to),
    ``ready`` the read end of the readiness pipe, ``errors`` the read end of the logger's
    own stderr (containerd sends that to /dev/null; tests want to read it).
    """

    def __init__(
        self, pid: int, stdout: int, stderr: int, ready: int, errors: int, started: float
    ) -> None:
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self.ready = ready
        self.errors = errors
        self.started = started  # time.perf_counter() just before posix_spawn
        self.returncode: int | None = None
        self._pidfd = os.pidfd_open(pid)

    def wait_ready(self, timeout: float = 10.0) -> bytes:
        """Block until the readiness pipe yields a byte (b"R") or EOF (b""); TimeoutError."""
        ready, _, _ = select.select([self.ready], [], [], timeout)
        if not ready:
            raise TimeoutError(f"logger {self.pid} not ready after {timeout} s")
        return os.read(self.ready, 1)

    def close_stdout(self) -> None:
        """Close the container's stdout write end (the logger sees EOF on fd 3)."""
        self.stdout = _close(self.stdout)

    def close_stderr(self) -> None:
        """Close the container's stderr write end (the logger sees EOF on fd 4)."""
        self.stderr = _close(self.stderr)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Send a signal to the logger (containerd sends SIGTERM at task delete)."""
        signal.pidfd_send_signal(self._pidfd, signum)

    def wait(self, timeout: float = 10.0) -> int:
        """Reap the logger; its exit status (negative signal number if killed); TimeoutError."""
        if self.returncode is not None:
            return self.returncode
        ready, _, _ = select.select([self._pidfd], [], [], timeout)
        if not ready:
            raise TimeoutError(f"logger {self.pid} still running after {timeout} s")
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def read_errors(self) -> str:
        """What the logger wrote to its stderr (call after it exited)."""
        chunks = []
        while chunk := os.read(self.errors, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    def close(self) -> None:
        """Kill the logger if still running and close every fd we hold (idempotent)."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            self.wait()
        self.stdout = _close(self.stdout)
        self.stderr = _close(self.stderr)
        self.ready = _close(self.ready)
        self.errors = _close(self.errors)
        self._pidfd = _close(self._pidfd)

    def __enter__(self) -> LoggerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _close(fd: int) -> int:
    if fd >= 0:
        os.close(fd)
    return -1


def _high(fd: int) -> int:
    """A close-on-exec duplicate of ``fd`` numbered >= _HIGH_FD; the original is closed."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
    os.close(fd)
    return moved


def spawn_logger(
    argv: Sequence[str],
    *,
    container_id: str = "nstask-test",
    namespace: str = "nstask-test",
    env: Mapping[str, str] | None = None,
) -> LoggerProcess:
    """Start ``argv`` (binary path first) with fds 3/4/5 wired like containerd does.

    ``env`` replaces the containerd environment entirely when given (for baselines).
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    ready_r, ready_w = os.pipe()
    log_r, log_w = os.pipe()
    out_r, err_r, ready_w, log_w = (_high(fd) for fd in (out_r, err_r, ready_w, log_w))
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
        (os.POSIX_SPAWN_DUP2, log_w, 2),
        (os.POSIX_SPAWN_DUP2, out_r, 3),
        (os.POSIX_SPAWN_DUP2, err_r, 4),
        (os.POSIX_SPAWN_DUP2, ready_w, 5),
    ]
    environment = (
        {"CONTAINER_ID": container_id, "CONTAINER_NAMESPACE": namespace}
        if env is None
        else dict(env)
    )
    started = time.perf_counter()
    try:
        pid = os.posix_spawn(argv[0], list(argv), environment, file_actions=actions)
    finally:
        for fd in (out_r, err_r, ready_w, log_w):
            os.close(fd)  # the child has its copies; keeping ours would hide EOFs
    return LoggerProcess(pid, out_w, err_w, ready_r, log_r, started)
