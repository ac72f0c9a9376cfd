"""Docker's json-file log format: one JSON object per line.

A record is ``{"log": "<line incl. \\n>", "stream": "stdout"|"stderr", "time": "<RFC 3339>"}``,
the layout `docker logs`, promtail and fluent-bit already understand. A line the shim had to
split (longer than 16 KiB) becomes several records: every part but the last has no trailing
``\\n`` (Docker's own convention, so existing readers re-join it) and each part also carries
``partial_message``, ``partial_id``, ``partial_ordinal`` (1-based) and ``partial_last``.

The writer runs inside the logging shim, whose start delays every container start, so this
module imports nothing beyond the interpreter's start-up set at load time; the reader's json
import happens on first use (the agent has it loaded anyway).
"""

from __future__ import annotations

import os
import time

try:  # the C escaper behind json.dumps: 2.5x faster than json.dumps, without importing json
    from _json import encode_basestring as _quote
except ImportError:  # pragma: no cover - CPython always ships _json
    from json.encoder import py_encode_basestring as _quote

TYPE_CHECKING = False  # typing costs ~2 ms of shim start-up; mypy treats this name as True
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import BinaryIO

__all__ = [
    "JsonFileWriter",
    "LogEntry",
    "follow",
    "format_time",
    "parse_time",
    "read_entries",
]

_NS = 1_000_000_000
_BLOCK = 64 * 1024
_FILE_MODE = 0o640
_DIR_MODE = 0o750
_STREAM_JSON = {"stdout": '"stdout"', "stderr": '"stderr"'}


class LogEntry:
    """One record read back from a json-file log.

    A plain slotted class rather than a NamedTuple: ``typing`` is too slow to import in the shim.
    ``log`` keeps the trailing newline, so printing entries with ``end=""`` re-joins split lines.
    """

    __slots__ = ("log", "stream", "time_ns")
    __match_args__ = ("time_ns", "stream", "log")

    def __init__(self, time_ns: int, stream: str, log: str) -> None:
        self.time_ns = time_ns
        self.stream = stream
        self.log = log

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LogEntry):
            return NotImplemented
        return (self.time_ns, self.stream, self.log) == (other.time_ns, other.stream, other.log)

    def __hash__(self) -> int:
        return hash((self.time_ns, self.stream, self.log))

    def __repr__(self) -> str:
        return f"LogEntry(time_ns={self.time_ns}, stream={self.stream!r}, log={self.log!r})"

    @property
    def time(self) -> str:
        """The timestamp as written in the file (RFC 3339, nanoseconds, UTC)."""
        return format_time(self.time_ns)


def format_time(time_ns: int) -> str:
    """Render nanoseconds since the epoch as RFC 3339 UTC with all nine fraction digits.

    Fixed width (Go's RFC3339Nano trims trailing zeros; both parse the same) keeps the
    writer's per-second cache trivial.
    """
    seconds, fraction = divmod(time_ns, _NS)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 for a proleptic Gregorian date (no calendar/datetime import)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def parse_time(text: str) -> int:
    """Parse an RFC 3339 timestamp (any fraction length, ``Z`` or ``+hh:mm``) to epoch ns.

    Accepts what Docker writes (trimmed fractions) as well as what this module writes.
    """
    try:
        if text[4] != "-" or text[7] != "-" or text[10] not in "Tt " or text[13] != ":":
            raise ValueError(text)
        if text[16] != ":":
            raise ValueError(text)
        fields = (text[0:4], text[5:7], text[8:10], text[11:13], text[14:16], text[17:19])
        if not all(field.isdigit() for field in fields):
            raise ValueError(text)
        year, month, day, hour, minute, second = (int(field) for field in fields)
        rest = text[19:]
        fraction = 0
        if rest[:1] == ".":
            end = 1
            while end < len(rest) and rest[end].isdigit():
                end += 1
            if end == 1:
                raise ValueError(text)
            fraction = int(rest[1:end][:9].ljust(9, "0"))
            rest = rest[end:]
        offset = _parse_offset(rest)
    except (IndexError, ValueError):
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}") from None
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    days = _days_from_civil(year, month, day)
    seconds = days * 86400 + hour * 3600 + minute * 60 + second - offset
    return seconds * _NS + fraction


def _parse_offset(rest: str) -> int:
    """Seconds east of UTC for ``Z`` / ``+hh:mm`` / ``-hh:mm``."""
    if rest in ("Z", "z"):
        return 0
    if len(rest) == 6 and rest[0] in "+-" and rest[3] == ":":
        hours, minutes = rest[1:3], rest[4:6]
        if hours.isdigit() and minutes.isdigit():
            sign = -1 if rest[0] == "-" else 1
            return sign * (int(hours) * 3600 + int(minutes) * 60)
    raise ValueError(rest)


class JsonFileWriter:
    """Appends json-file records to one file, buffered until :meth:`flush`.

    The shim flushes once per batch of pipe reads, so ``logs -f`` sees a line as soon as the
    container wrote it while a burst of output costs one write(2) per batch, not per line.
    """

    def __init__(self, path: str) -> None:
        """Create the file (0640, parent directories 0750) or open it for appending.

        Appending keeps the log of an earlier run of the same container (a restart) intact.
        """
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, mode=_DIR_MODE, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self._fd = os.open(path, flags, _FILE_MODE)
        os.fchmod(self._fd, _FILE_MODE)  # the umask we inherit is not ours to trust
        self.path = path
        self._parts: list[str] = []
        self._second = -1
        self._time_prefix = ""

    def add(
        self,
        stream: str,
        log: str,
        time_ns: int,
        *,
        partial_id: str | None = None,
        partial_ordinal: int = 0,
        partial_last: bool = False,
    ) -> None:
        """Buffer one record; ``partial_id`` marks a part of a split line."""
        seconds, fraction = divmod(time_ns, _NS)
        if seconds != self._second:  # strftime once per second, not once per line
            self._second = seconds
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            self._time_prefix = ',"time":"' + stamp + "."
        stream_json = _STREAM_JSON.get(stream) or _quote(stream)
        extra = ""
        if partial_id is not None:
            last = "true" if partial_last else "false"
            extra = (
                f',"partial_message":true,"partial_id":{_quote(partial_id)},'
                f'"partial_ordinal":{partial_ordinal},"partial_last":{last}'
            )
        self._parts.append(
            '{"log":'
            + _quote(log)
            + ',"stream":'
            + stream_json
            + self._time_prefix
            + f'{fraction:09d}Z"'
            + extra
            + "}\n"
        )

    @property
    def pending(self) -> int:
        """Number of buffered records not yet written."""
        return len(self._parts)

    def flush(self) -> None:
        """Write every buffered record; on OSError the batch is dropped and the error raised.

        Dropping (rather than keeping) a batch that failed keeps memory bounded when the disk
        stays full; the caller decides whether to report it.
        """
        if not self._parts:
            return
        data = "".join(self._parts).encode("utf-8")
        self._parts.clear()
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def close(self) -> None:
        """Flush and close the file."""
        try:
            self.flush()
        finally:
            os.close(self._fd)

    def __enter__(self) -> JsonFileWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Reader (used by the agent for `nstask logs`)


def _decode(line: bytes) -> LogEntry | None:
    """Turn one complete line into an entry; None for a line that is not a record.

    Lines are skipped, not fatal: a shim killed mid-write leaves a torn line that the next run
    appends to, and `nstask logs` must still show everything around it.
    """
    import json  # lazy: only the reader needs it

    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    log, stream, stamp = record.get("log"), record.get("stream"), record.get("time")
    if not isinstance(log, str) or not isinstance(stream, str) or not isinstance(stamp, str):
        return None
    try:
        return LogEntry(parse_time(stamp), stream, log)
    except ValueError:
        return None


def _lines_backwards(file: BinaryIO, end: int) -> Iterator[bytes]:
    """Yield the complete lines of ``file[:end]``, newest first, reading blocks from the end.

    A trailing line without its newline is still being written and is not yielded.
    """
    pos = end
    carry = b""
    in_trailing_fragment = True
    while pos > 0:
        step = min(_BLOCK, pos)
        pos -= step
        file.seek(pos)
        data = file.read(step) + carry
        if in_trailing_fragment:
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = b""
                continue
            data = data[: cut + 1]
            in_trailing_fragment = False
        lines = data.split(b"\n")  # data ends with b"\n": the last element is empty
        if pos > 0:
            carry = lines[0] + b"\n"  # may start before this block: finish it next round
            lines = lines[1:-1]
        else:
            carry = b""
            lines = lines[:-1]
        yield from reversed(lines)


def _lines_forward(file: BinaryIO, end: int) -> Iterator[bytes]:
    """Yield the complete lines of ``file[:end]`` in order (a torn last line is left out)."""
    file.seek(0)
    remaining = end
    pending = b""
    while remaining > 0:
        chunk = file.read(min(_BLOCK, remaining))
        if not chunk:
            break
        remaining -= len(chunk)
        pending += chunk
        cut = pending.rfind(b"\n")
        if cut < 0:
            continue
        yield from pending[:cut].split(b"\n")
        pending = pending[cut + 1 :]


def _select(file: BinaryIO, end: int, since: float | None, tail: int | None) -> list[LogEntry]:
    """The entries of ``file[:end]`` newer than ``since``, then only the last ``tail`` of them.

    (since is applied first, so ``--since 5m --tail 10`` shows up to ten lines from the last
    five minutes.) Tail alone reads backwards, so it costs the tail, not the whole file.
    """
    if tail is not None and tail < 0:
        raise ValueError(f"tail must be >= 0, not {tail}")
    if tail == 0:
        return []
    since_ns = None if since is None else int(since * _NS)
    if tail is not None and since_ns is None:
        newest_first: list[LogEntry] = []
        for line in _lines_backwards(file, end):
            entry = _decode(line)
            if entry is not None:
                newest_first.append(entry)
                if len(newest_first) == tail:
                    break
        newest_first.reverse()
        return newest_first
    selected: list[LogEntry] = []
    for line in _lines_forward(file, end):
        entry = _decode(line)
        if entry is not None and (since_ns is None or entry.time_ns >= since_ns):
            selected.append(entry)
            if tail is not None and len(selected) > 2 * tail:
                del selected[:-tail]  # keep memory bounded on long files
    return selected if tail is None else selected[-tail:]


def read_entries(
    path: str, *, since: float | None = None, tail: int | None = None
) -> Iterator[LogEntry]:
    """The records in ``path``: those at or after ``since`` (epoch seconds), the last ``tail``.

    Raises FileNotFoundError when there is no log (the container never started a shim).
    """
    with open(path, "rb") as file:
        end = os.fstat(file.fileno()).st_size
        entries = _select(file, end, since, tail)
    yield from entries


def _complete_end(file: BinaryIO, size: int) -> int:
    """Offset just after the last newline in ``file[:size]`` (0 when there is none)."""
    pos = size
    while pos > 0:
        step = min(_BLOCK, pos)
        pos -= step
        file.seek(pos)
        cut = file.read(step).rfind(b"\n")
        if cut >= 0:
            return pos + cut + 1
    return 0


def _open_when_present(path: str, stop: Callable[[], bool], poll: float) -> BinaryIO | None:
    """Open ``path``, waiting for it to appear; None if stop() turns true first."""
    while True:
        stopping = stop()
        try:
            return open(path, "rb", buffering=0)
        except FileNotFoundError:
            if stopping:
                return None
        time.sleep(poll)


def follow(
    path: str,
    *,
    stop: Callable[[], bool],
    poll: float = 0.1,
    since: float | None = None,
    tail: int | None = None,
) -> Iterator[LogEntry]:
    """Yield the existing records (filtered like :func:`read_entries`), then new ones as written.

    Returns once ``stop()`` is true and every complete line written before that is yielded; a
    line still missing its newline is waited for, never yielded torn. Blocking (time.sleep):
    an asyncio caller runs it in a thread. A truncated file is read again from the start.
    """
    file = _open_when_present(path, stop, poll)
    if file is None:
        return
    with file:
        size = os.fstat(file.fileno()).st_size
        offset = _complete_end(file, size)
        yield from _select(file, offset, since, tail)
        since_ns = None if since is None else int(since * _NS)
        yield from _follow_from(file, offset, stop, poll, since_ns)


def _follow_from(
    file: BinaryIO, offset: int, stop: Callable[[], bool], poll: float, since_ns: int | None
) -> Iterator[LogEntry]:
    """The polling half of :func:`follow`, starting at a line boundary ``offset``."""
    file.seek(offset)
    pending = b""
    while True:
        stopping = stop()  # sampled before reading: all data written before stop() is seen
        chunk = file.read(_BLOCK)
        if chunk:
            pending += chunk
            cut = pending.rfind(b"\n")
            if cut >= 0:
                for line in pending[:cut].split(b"\n"):
                    entry = _decode(line)
                    if entry is not None and (since_ns is None or entry.time_ns >= since_ns):
                        yield entry
                pending = pending[cut + 1 :]
            continue
        if os.fstat(file.fileno()).st_size < file.tell():  # truncated under us: start over
            file.seek(0)
            pending = b""
            continue
        if stopping:
            return
        time.sleep(poll)
