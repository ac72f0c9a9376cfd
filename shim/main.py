"""nstask-shim-logger: the binary logging shim containerd starts for each container.

containerd's runtime shim runs us for a stdout/stderr URI
``binary:///abs/path/nstask-shim-logger?driver=json-file&path=/var/lib/...``: every query pair
becomes two argv entries (in no fixed order), fd 3 is the container's stdout, fd 4 its stderr,
fd 5 the readiness pipe, and the environment holds only CONTAINER_ID and CONTAINER_NAMESPACE.
Tasks.Create waits until we write to fd 5 (or close it), so start-up time is container start
time: this module imports only os, sys, time, select, signal and shim.jsonfile.

Lifecycle: open the log (the driver) -> signal readiness -> copy lines from fds 3 and 4 until
both reach EOF (containerd closes them at task delete) or SIGTERM arrives (sent right after;
SIGKILL follows ~12 s later), drain what is still readable, flush, exit 0.

Bad arguments exit 2 at once, before readiness (an unopenable log file exits 1). This does NOT
make Tasks.Create fail: containerd 1.6 reads one byte from the readiness pipe and accepts
io.EOF as ready (pkg/process/io.go). Seen with containerd 1.6.20 here: the task starts and
its writes to stdout/stderr fail with EPIPE. Exiting fast is still better than hanging
(Tasks.Create has no timeout on that read) or pretending to log, and our stderr goes to
/dev/null under containerd, so the agent owns the check: build the URI itself, and treat a
log file that does not exist once Tasks.Create returns as a failed container start.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

from shim.jsonfile import JsonFileWriter

TYPE_CHECKING = False  # typing costs ~2 ms of start-up; mypy treats this name as True
if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

__all__ = [
    "MAX_LINE",
    "Config",
    "LineSplitter",
    "UsageError",
    "main",
    "parse_args",
    "run",
]

STDOUT_FD = 3
STDERR_FD = 4
READY_FD = 5
MAX_LINE = 16 * 1024  # bytes of content per record, as Docker and the ECS shim logger split
READ_SIZE = 128 * 1024  # two default pipe buffers: one read usually empties a full pipe
DRAIN_SECONDS = 8.0  # after SIGTERM, stop draining well before containerd's 12 s SIGKILL
EXIT_USAGE = 2
EXIT_DRIVER = 1
DRIVERS = ("json-file",)
PROG = "nstask-shim-logger"


class UsageError(Exception):
    """The argv containerd built from the URI cannot be used; the message says why."""


class Config:
    """What the log URI asked for: the driver, its path, and the keys we did not know."""

    __slots__ = ("driver", "path", "unknown")

    def __init__(self, driver: str, path: str, unknown: dict[str, str]) -> None:
        self.driver = driver
        self.path = path
        self.unknown = unknown  # ignored, kept so a caller or test can see what was dropped


def parse_args(args: Sequence[str]) -> Config:
    """Read ``key value`` pairs (any order); require an absolute ``path``.

    The path must be absolute because our working directory is containerd's bundle
    directory, which says nothing about where logs belong.
    """
    if len(args) % 2:
        raise UsageError(f"expected key value pairs from the log URI, got {list(args)!r}")
    options: dict[str, str] = {}
    for index in range(0, len(args), 2):
        options[args[index]] = args[index + 1]
    driver = options.pop("driver", "json-file")
    path = options.pop("path", "")
    if driver not in DRIVERS:
        raise UsageError(f"unknown driver {driver!r} (supported: {', '.join(DRIVERS)})")
    if not path:
        raise UsageError("missing path: add path=/absolute/file.log to the log URI")
    if not os.path.isabs(path):
        raise UsageError(f"path must be absolute, got {path!r}")
    return Config(driver, path, options)


class LineSplitter:
    """Turns one stream's bytes into json-file records: lines, long lines cut at MAX_LINE.

    A part is written as soon as MAX_LINE bytes without a newline have arrived, so a container
    that never prints a newline cannot make us buffer without bound.
    """

    __slots__ = ("_buf", "_ordinal", "_partial_id", "_writer", "stream")

    def __init__(self, stream: str, writer: JsonFileWriter) -> None:
        self.stream = stream
        self._writer = writer
        self._buf = bytearray()
        self._partial_id: str | None = None
        self._ordinal = 0

    def feed(self, data: bytes, time_ns: int) -> None:
        """Add bytes from one read; every record they complete gets ``time_ns``.

        One timestamp per read (not per line) is both cheaper and true: the lines arrived
        together.
        """
        buf = self._buf
        buf += data
        pos = 0
        size = len(buf)
        while pos < size:
            newline = buf.find(b"\n", pos, pos + MAX_LINE + 1)
            if newline >= 0:
                self._emit(bytes(buf[pos : newline + 1]), time_ns, last=True)
                pos = newline + 1
            elif size - pos > MAX_LINE:
                cut = _utf8_boundary(buf, pos, pos + MAX_LINE)
                self._emit(bytes(buf[pos:cut]), time_ns, last=False)
                pos = cut
            else:
                break
        del buf[:pos]

    def finish(self, time_ns: int) -> None:
        """Write an unterminated last line (at EOF or shutdown) as a record without newline."""
        if self._buf:
            self._emit(bytes(self._buf), time_ns, last=True)
            self._buf.clear()

    def _emit(self, raw: bytes, time_ns: int, *, last: bool) -> None:
        """Decode (invalid UTF-8 becomes U+FFFD, as Docker does) and hand to the writer."""
        text = raw.decode("utf-8", "replace")
        if self._partial_id is None:
            if last:
                self._writer.add(self.stream, text, time_ns)
                return
            self._partial_id = os.urandom(8).hex()
            self._ordinal = 0
        self._ordinal += 1
        self._writer.add(
            self.stream,
            text,
            time_ns,
            partial_id=self._partial_id,
            partial_ordinal=self._ordinal,
            partial_last=last,
        )
        if last:
            self._partial_id = None


def _utf8_boundary(buf: bytearray, start: int, cut: int) -> int:
    """Move ``cut`` back to the start of a UTF-8 character so no part decodes to U+FFFD.

    Gives up after 3 continuation bytes (the data is not UTF-8 then) and cuts where asked.
    """
    for candidate in range(cut, max(start + 1, cut - 3) - 1, -1):
        if buf[candidate] & 0xC0 != 0x80:
            return candidate
    return cut


class _Shim:
    """The copy loop: poll fds 3 and 4 plus the signal wake-up pipe, write per batch."""

    def __init__(self, writer: JsonFileWriter, stdout_fd: int, stderr_fd: int) -> None:
        self.writer = writer
        self.splitters = {
            stdout_fd: LineSplitter("stdout", writer),
            stderr_fd: LineSplitter("stderr", writer),
        }
        self.write_errors = 0

    def serve(self, wakeup_fd: int) -> None:
        """Copy until both streams hit EOF, or drain and stop once a signal arrives."""
        poller = select.poll()
        for fd in self.splitters:
            poller.register(fd, select.POLLIN)
        poller.register(wakeup_fd, select.POLLIN)
        open_fds = set(self.splitters)
        while open_fds:
            terminating = False
            for fd, _events in poller.poll():
                if fd == wakeup_fd:
                    terminating = True
                elif not self._read_once(fd):
                    poller.unregister(fd)
                    open_fds.discard(fd)
            if terminating:
                self._drain(open_fds)
                open_fds.clear()
            self._flush()

    def _read_once(self, fd: int) -> bool:
        """Read one chunk from ``fd`` into its splitter; False at EOF (or a read error)."""
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        now = time.time_ns()
        if not data:
            self.splitters[fd].finish(now)
            return False
        self.splitters[fd].feed(data, now)
        return True

    def _drain(self, open_fds: set[int]) -> None:
        """After SIGTERM: take what is already in the pipes, without waiting for more."""
        deadline = time.monotonic() + DRAIN_SECONDS
        for fd in open_fds:
            os.set_blocking(fd, False)
            while time.monotonic() < deadline:
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    break
                except OSError:
                    break
                if not data:
                    break
                self.splitters[fd].feed(data, time.time_ns())
                if self.writer.pending > 1024:
                    self._flush()
            self.splitters[fd].finish(time.time_ns())

    def _flush(self) -> None:
        """Write the batch; on failure drop it and keep reading so the container never blocks."""
        try:
            self.writer.flush()
        except OSError as exc:
            self.write_errors += 1
            if self.write_errors == 1:  # once: a full disk must not flood containerd's log
                _complain(f"cannot write {self.writer.path}: {exc}; dropping log lines")


def _complain(message: str) -> None:
    """One line on stderr (containerd points it at /dev/null; useful when run by hand)."""
    try:
        sys.stderr.write(f"{PROG}: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _check_fds(fds: Sequence[int]) -> None:
    """Fail with a clear message when not started the way containerd starts us."""
    for fd in fds:
        try:
            os.fstat(fd)
        except OSError:
            raise UsageError(
                f"fd {fd} is not open: run by containerd for a binary:// log URI "
                "(fd 3 stdout, fd 4 stderr, fd 5 readiness)"
            ) from None


def _signal_ready(fd: int) -> None:
    """Tell containerd we are ready; a reader that has gone away is not our problem."""
    try:
        os.write(fd, b"R")
    except OSError:
        pass
    finally:
        os.close(fd)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Do nothing here: the wake-up fd already told the poll loop, which drains safely."""


def _install_signals() -> int:
    """Route SIGTERM/SIGINT to a wake-up pipe the poll loop watches; return its read end."""
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return read_end


def run(
    config: Config,
    *,
    stdout_fd: int = STDOUT_FD,
    stderr_fd: int = STDERR_FD,
    ready_fd: int = READY_FD,
) -> int:
    """Open the driver, signal readiness, copy until EOF or SIGTERM; the exit status."""
    try:
        writer = JsonFileWriter(config.path)
    except OSError as exc:
        _complain(f"cannot open log file {config.path}: {exc}")
        return EXIT_DRIVER
    wakeup_fd = _install_signals()
    _signal_ready(ready_fd)
    shim = _Shim(writer, stdout_fd, stderr_fd)
    try:
        shim.serve(wakeup_fd)
    finally:
        try:
            writer.close()
        except OSError as exc:
            _complain(f"cannot write {config.path}: {exc}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (``nstask-shim-logger``)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        config = parse_args(args)
        _check_fds((STDOUT_FD, STDERR_FD, READY_FD))
    except UsageError as exc:
        _complain(str(exc))
        return EXIT_USAGE
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
