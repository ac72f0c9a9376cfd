"""nstask-shim-logger: the binary logging shim containerd starts for each container.

containerd's runtime shim runs us for a stdout/stderr URI
``binary:///abs/path/nstask-shim-logger?driver=json-file&path=/var/lib/...``: every query pair
becomes two argv entries (in no fixed order), fd 3 is the container's stdout, fd 4 its stderr,
fd 5 the readiness pipe, and the environment holds only CONTAINER_ID and CONTAINER_NAMESPACE.
Tasks.Create waits until we write to fd 5 (or close it), so start-up time is container start
time: only what the chosen driver and mode need is imported (json-file in blocking mode: os,
sys, time, select, _signal and shim.jsonfile/stats/lifecycle; the launcher runs Python with
-I -S, so not even `site` is loaded).

Options (query pairs) for every driver:

- ``driver``: ``json-file`` (default) or ``fluentd`` (see shim.fluentd for its options).
- ``path``: absolute path of the json-file log; for every driver also where the counters go
  (``<path>.stats.json``, format in shim.stats).
- ``mode``: ``blocking`` (default: a slow sink slows the container, nothing is dropped) or
  ``non-blocking`` with ``max-buffer-size`` (default 1m; see shim.ring).
- ``options-file``: a file (mode 0600) of NUL-separated key/value pairs holding the driver's
  options, which the agent keeps out of our argv because they may hold secrets
  (logConfiguration.secretOptions); pairs in argv win over the file's.
- ``container`` (name; default CONTAINER_ID), ``task`` and ``family``: used by fluentd tags and
  record fields. ``label.<name>=<value>``: an extra fluentd record field.
- json-file: ``max-size`` (Docker's decimal units: 10k, 20m, 1g; unset = no rotation),
  ``max-file`` (default 1), ``compress`` (gzip rotated files; needs max-size and max-file >= 2).

Lifecycle: open the driver (fluentd connects unless fluentd-async) -> signal readiness -> copy
lines from fds 3 and 4 until both reach EOF (containerd closes them at task delete) or SIGTERM
arrives (sent right after; SIGKILL follows ~12 s later), drain what is still readable, deliver
within DRAIN_SECONDS, write the final counters, exit 0.

The shim cannot see the container exit: containerd's shim holds the pipes' write ends until
task delete, and sends nothing else (so `logs -f` ends on the agent's task-stop, not on EOF).

Bad arguments exit 2 at once, before readiness; a driver that cannot start (unopenable log,
fluentd unreachable without fluentd-async, a bad option value) writes a stats file with
sink_state "failed" and last_error, then exits 1 (2 for a bad option value). This does NOT
make Tasks.Create fail: containerd 1.6 reads one byte from the readiness pipe and accepts
io.EOF as ready (pkg/process/io.go). Seen with containerd 1.6.20 here: the task starts and
its writes to stdout/stderr fail with EPIPE. Exiting fast is still better than hanging
(Tasks.Create has no timeout on that read) or pretending to log, and our stderr goes to
/dev/null under containerd, so the agent owns the check: after Tasks.Create, a stats file that
is missing or says "failed" is a failed container start.
"""

from __future__ import annotations

import os
import select
import sys
import time

from shim.lifecycle import Lifecycle
from shim.options import OptionError, parse_bool, parse_size
from shim.stats import Stats, stats_path

TYPE_CHECKING = False  # typing costs ~2 ms of start-up; mypy treats this name as True
if TYPE_CHECKING:
    import signal
else:  # the C module: `signal` wraps it in enums, which cost ~3 ms of start-up
    import _signal as signal
if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

    from shim.sinks import Sink

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
POLL_MS = 1000  # wake at least once a second to keep the stats file current
EXIT_USAGE = 2
EXIT_DRIVER = 1
DRIVERS = ("json-file", "fluentd")
MODES = ("blocking", "non-blocking")
JSON_FILE_KEYS = ("max-size", "max-file", "compress")
PROG = "nstask-shim-logger"


class UsageError(Exception):
    """The argv containerd built from the URI cannot be used; the message says why."""


class Config:
    """What the log URI asked for: the driver, its path, mode, names and driver options."""

    __slots__ = (
        "container_id",
        "container_name",
        "driver",
        "family",
        "labels",
        "max_buffer_size",
        "mode",
        "options",
        "path",
        "task",
        "unknown",
    )

    def __init__(
        self,
        driver: str,
        path: str,
        unknown: dict[str, str],
        *,
        mode: str = "blocking",
        max_buffer_size: int = 1024 * 1024,
        options: dict[str, str] | None = None,
        container_id: str = "",
        container_name: str = "",
        task: str = "",
        family: str = "",
        labels: dict[str, str] | None = None,
    ) -> None:
        self.driver = driver
        self.path = path
        self.unknown = unknown  # ignored, kept so a caller or test can see what was dropped
        self.mode = mode
        self.max_buffer_size = max_buffer_size
        self.options = options or {}  # the driver's own options, validated when it opens
        self.container_id = container_id
        self.container_name = container_name
        self.task = task
        self.family = family
        self.labels = labels or {}


def parse_args(args: Sequence[str], environ: dict[str, str] | None = None) -> Config:
    """Read ``key value`` pairs (any order); require an absolute ``path``.

    The path must be absolute because our working directory is containerd's bundle
    directory, which says nothing about where logs belong.
    """
    if len(args) % 2:
        raise UsageError(f"expected key value pairs from the log URI, got {list(args)!r}")
    env = os.environ if environ is None else environ
    options: dict[str, str] = {}
    for index in range(0, len(args), 2):
        options[args[index]] = args[index + 1]
    options_file = options.pop("options-file", "")
    if options_file:
        for key, value in read_options_file(options_file).items():
            options.setdefault(key, value)
    driver = options.pop("driver", "json-file")
    path = options.pop("path", "")
    if driver not in DRIVERS:
        raise UsageError(f"unknown driver {driver!r} (supported: {', '.join(DRIVERS)})")
    if not path:
        raise UsageError("missing path: add path=/absolute/file.log to the log URI")
    if not os.path.isabs(path):
        raise UsageError(f"path must be absolute, got {path!r}")
    mode = options.pop("mode", "blocking")
    if mode not in MODES:
        raise UsageError(f"mode must be blocking or non-blocking, got {mode!r}")
    try:
        max_buffer = parse_size(
            "max-buffer-size", options.pop("max-buffer-size", "1m"), binary=True
        )
    except OptionError as exc:
        raise UsageError(str(exc)) from None
    container_id = env.get("CONTAINER_ID", "")
    config = Config(
        driver,
        path,
        {},
        mode=mode,
        max_buffer_size=max_buffer,
        container_id=container_id,
        container_name=options.pop("container", "") or container_id,
        task=options.pop("task", ""),
        family=options.pop("family", ""),
    )
    for key, value in options.items():
        if key.startswith("label.") and len(key) > 6:
            config.labels[key[6:]] = value
        elif (driver == "json-file" and key in JSON_FILE_KEYS) or (
            driver == "fluentd" and (key.startswith("fluentd-") or key == "tag")
        ):
            config.options[key] = value
        else:
            config.unknown[key] = value
    return config


def read_options_file(path: str) -> dict[str, str]:
    """Driver options the agent kept out of our argv (they may hold secrets): NUL-separated
    key/value pairs in a file only its owner may read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"options-file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077:
            raise UsageError(
                f"options-file {path}: mode {st.st_mode & 0o777:o} lets others read it; "
                "expected 0600"
            )
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    fields = b"".join(chunks).split(b"\0")
    if fields[-1] != b"" or len(fields) % 2 == 0:
        raise UsageError(f"options-file {path}: not NUL-separated key/value pairs")
    return {fields[i].decode(): fields[i + 1].decode() for i in range(0, len(fields) - 1, 2)}


class LineSplitter:
    """Turns one stream's bytes into records: lines, long lines cut at MAX_LINE.

    A part is emitted as soon as MAX_LINE bytes without a newline have arrived, so a container
    that never prints a newline cannot make us buffer without bound. As in the ECS shim logger,
    the parts of one line share a 64-hex-digit partial_id, count partial_ordinal from 1, carry
    the first part's timestamp, and the part that ends the line has partial_last.
    """

    __slots__ = ("_buf", "_ordinal", "_partial_id", "_partial_time", "sink", "stats", "stream")

    def __init__(self, stream: str, sink: Sink, stats: Stats | None = None) -> None:
        self.stream = stream
        self.sink = sink
        self.stats = stats
        self._buf = bytearray()
        self._partial_id: str | None = None
        self._partial_time = 0
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
        """Emit an unterminated last line (at EOF or shutdown) as a record without newline."""
        if self._buf:
            self._emit(bytes(self._buf), time_ns, last=True)
            self._buf.clear()

    def _emit(self, raw: bytes, time_ns: int, *, last: bool) -> None:
        """Decode (invalid UTF-8 becomes U+FFFD, as Docker does) and hand to the sink."""
        text = raw.decode("utf-8", "replace")
        if self.stats is not None:
            self.stats.lines += 1
        if self._partial_id is None:
            if last:
                self.sink.add(self.stream, text, time_ns)
                return
            self._partial_id = os.urandom(32).hex()
            self._partial_time = time_ns
            self._ordinal = 0
        self._ordinal += 1
        self.sink.add(
            self.stream,
            text,
            self._partial_time,
            self._partial_id,
            self._ordinal,
            last,
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
    """The copy loop: poll fds 3 and 4 plus the signal wake-up pipe, deliver per batch."""

    def __init__(
        self, sink: Sink, stats: Stats, lifecycle: Lifecycle, stdout_fd: int, stderr_fd: int
    ) -> None:
        self.sink = sink
        self.stats = stats
        self.lifecycle = lifecycle
        self.splitters = {
            stdout_fd: LineSplitter("stdout", sink, stats),
            stderr_fd: LineSplitter("stderr", sink, stats),
        }
        self.write_errors = 0

    def serve(self, wakeup_fd: int) -> None:
        """Copy until both streams hit EOF, or drain and stop once a signal arrives."""
        poller = select.poll()
        for fd in self.splitters:
            poller.register(fd, select.POLLIN)
        poller.register(wakeup_fd, select.POLLIN)
        open_fds = set(self.splitters)
        stats = self.stats
        while open_fds:
            terminating = False
            for fd, _events in poller.poll(POLL_MS):
                if fd == wakeup_fd:
                    terminating = True
                elif not self._read_once(fd):
                    poller.unregister(fd)
                    open_fds.discard(fd)
            if terminating:
                self.lifecycle.begin_shutdown()
                self._drain(open_fds)
                open_fds.clear()
            self._flush()
            stats.maybe_save()
        self.lifecycle.begin_shutdown()

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
        self.stats.bytes += len(data)
        self.splitters[fd].feed(data, now)
        return True

    def _drain(self, open_fds: set[int]) -> None:
        """After SIGTERM: take what is already in the pipes, without waiting for more."""
        deadline = self.lifecycle.deadline or time.monotonic()
        for fd in open_fds:
            os.set_blocking(fd, False)
            while time.monotonic() < deadline:
                try:
                    data = os.read(fd, READ_SIZE)
                except OSError:  # BlockingIOError included: the pipe is empty
                    break
                if not data:
                    break
                self.stats.bytes += len(data)
                self.splitters[fd].feed(data, time.time_ns())
                if self.sink.pending > 1024:
                    self._flush()
            self.splitters[fd].finish(time.time_ns())

    def _flush(self) -> None:
        """Deliver the batch; on failure drop it and keep reading so the container never hangs."""
        try:
            self.sink.flush()
        except OSError as exc:
            self.write_errors += 1
            self.stats.sink_error(str(exc), state="down")
            if self.write_errors == 1:  # once: a full disk must not flood containerd's log
                _complain(f"cannot write the log: {exc}; dropping log lines")


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
    """Route SIGTERM/SIGINT to a wake-up pipe the poll loop watches; return its read end.

    Nothing ever reads the pipe: once a signal arrived it stays readable, which is how every
    waiting sink (see shim.lifecycle) learns that the shim is shutting down.
    """
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a dead receiver is an error, not a death
    return read_end


def _open_json_file(config: Config, stats: Stats) -> Sink:
    from shim.jsonfile import JsonFileWriter

    options = config.options
    max_size = 0
    if "max-size" in options:
        max_size = parse_size("max-size", options["max-size"], binary=False)
        if max_size <= 0:
            raise OptionError("max-size must be a positive number")
    max_file = 1
    if "max-file" in options:
        text = options["max-file"]
        if not text.isdigit() or int(text) < 1:
            raise OptionError(f"max-file must be a whole number >= 1, got {text!r}")
        max_file = int(text)
    compress = parse_bool("compress", options.get("compress", "false"))
    if compress and (max_file < 2 or max_size <= 0):
        raise OptionError("compress needs max-size and max-file of at least 2 (as Docker)")
    return JsonFileWriter(
        config.path, max_size=max_size, max_file=max_file, compress=compress, stats=stats
    )


def _open_fluentd(config: Config, stats: Stats, lifecycle: Lifecycle) -> Sink:
    from shim.fluentd import sink_from_options  # only fluentd loggers pay for socket

    sink, lazy = sink_from_options(
        config.options,
        container_id=config.container_id,
        container_name=config.container_name,
        task=config.task,
        family=config.family,
        labels=config.labels,
        stats=stats,
        lifecycle=lifecycle,
    )
    if lazy:
        stats.sink_state = "connecting"
    else:
        sink.connect()  # Docker fails the start when fluentd is unreachable; so do we
    return sink


def _open_sink(config: Config, stats: Stats, lifecycle: Lifecycle) -> Sink:
    """The driver, wrapped in the ring buffer for mode=non-blocking."""
    if config.driver == "fluentd":
        sink = _open_fluentd(config, stats, lifecycle)
    else:
        sink = _open_json_file(config, stats)
        stats.sink_state = "ok"
    if config.mode == "non-blocking":
        from shim.ring import RingSink

        return RingSink(sink, max_bytes=config.max_buffer_size, stats=stats, lifecycle=lifecycle)
    return sink


def _fail(stats: Stats, message: str, status: int) -> int:
    stats.sink_error(message, state="failed")
    stats.save(exited=True)
    _complain(message)
    return status


def run(
    config: Config,
    *,
    stdout_fd: int = STDOUT_FD,
    stderr_fd: int = STDERR_FD,
    ready_fd: int = READY_FD,
) -> int:
    """Open the driver, signal readiness, copy until EOF or SIGTERM; the exit status."""
    parent = os.path.dirname(config.path)
    stats = Stats(stats_path(config.path), config.driver, config.mode)
    wakeup_fd = _install_signals()
    lifecycle = Lifecycle(wakeup_fd)
    try:
        os.makedirs(parent, mode=0o750, exist_ok=True)
        sink = _open_sink(config, stats, lifecycle)
    except OptionError as exc:
        return _fail(stats, str(exc), EXIT_USAGE)
    except OSError as exc:
        what = "fluentd" if config.driver == "fluentd" else f"log file {config.path}"
        return _fail(stats, f"cannot open {what}: {exc}", EXIT_DRIVER)
    stats.save()
    if config.mode == "blocking":
        lifecycle.idle = stats.maybe_save  # a sink backing off in this thread keeps stats fresh
    _signal_ready(ready_fd)
    shim = _Shim(sink, stats, lifecycle, stdout_fd, stderr_fd)
    try:
        shim.serve(wakeup_fd)
    finally:
        try:
            sink.close()
        except OSError as exc:
            stats.sink_error(str(exc), state="down")
            _complain(f"cannot write the log: {exc}")
        if stats.sink_state != "down":
            stats.sink_state = "closed"
        stats.save(exited=True)
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
