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
    from collections.abc import Callable, Generator, Iterator
    from threading import Thread
    from typing import BinaryIO

    from shim.stats import Stats

__all__ = [
    "JsonFileWriter",
    "LogEntry",
    "follow",
    "format_time",
    "parse_time",
    "read_entries",
    "rotated_files",
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
    """Appends json-file records to one file, buffered until :meth:`flush`, rotating like Docker.

    The shim flushes once per batch of pipe reads, so ``logs -f`` sees a line as soon as the
    container wrote it while a burst of output costs one write(2) per batch, not per line.

    Rotation (``max_size`` > 0) follows Docker's json-file: before a record is written, a file
    that has reached ``max_size`` bytes is rotated, so a file ends at most one record past the
    limit. With ``max_file`` >= 2 the file becomes ``<path>.1`` and older ones shift up
    (``.1`` -> ``.2`` ...), the oldest beyond ``max_file - 1`` is removed; with ``max_file`` 1
    the file is replaced by an empty one. ``compress`` gzips ``<path>.1`` to ``<path>.1.gz`` in
    a background thread (readers use the plain file until the .gz is complete), as Docker does.
    """

    def __init__(
        self,
        path: str,
        *,
        max_size: int = 0,
        max_file: int = 1,
        compress: bool = False,
        stats: Stats | None = None,
    ) -> None:
        """Create the file (0640, parent directories 0750) or open it for appending.

        Appending keeps the log of an earlier run of the same container (a restart) intact.
        """
        if max_file < 1:
            raise ValueError("max_file cannot be less than 1")
        if compress and (max_file < 2 or max_size <= 0):
            raise ValueError("compress needs max_size and max_file >= 2")
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, mode=_DIR_MODE, exist_ok=True)
        self.path = path
        self.max_size = max_size
        self.max_file = max_file
        self.compress = compress
        self.stats = stats
        self.rotations = 0
        self._fd = self._open(os.O_APPEND)
        self._size = os.fstat(self._fd).st_size
        self._parts: list[str] = []
        self._pending_bytes = 0
        self._second = -1
        self._time_prefix = ""
        self._compressor: Thread | None = None

    def _open(self, extra_flags: int) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | extra_flags
        fd = os.open(self.path, flags, _FILE_MODE)
        os.fchmod(fd, _FILE_MODE)  # the umask we inherit is not ours to trust
        return fd

    def add(
        self,
        stream: str,
        log: str,
        time_ns: int,
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
        self._pending_bytes += len(log)
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
        count, nbytes = len(self._parts), self._pending_bytes
        self._parts.clear()
        self._pending_bytes = 0
        stats = self.stats
        try:
            if self.max_size > 0:
                self._write_rotating(data)
            else:
                self._write(data, 0, len(data))
        except OSError:
            if stats is not None:
                stats.sink_dropped_lines += count
                stats.sink_dropped_bytes += nbytes
            raise
        if stats is not None:
            stats.written_lines += count
            stats.written_bytes += nbytes
            stats.sink_state = "ok"

    def _write(self, data: bytes, start: int, end: int) -> None:
        view = memoryview(data)[start:end]
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
            self._size += written

    def _write_rotating(self, data: bytes) -> None:
        """Write ``data`` (whole records), rotating whenever the file has reached max_size.

        Every b"\\n" in ``data`` ends a record (JSON escapes newlines inside strings), so the
        record that takes the file to max_size is found with one ``find``.
        """
        pos, end = 0, len(data)
        while pos < end:
            if self._size >= self.max_size:
                self._rotate()
            need = self.max_size - self._size  # bytes until the file is full (> 0 here)
            newline = data.find(b"\n", pos + need - 1)
            cut = end if newline < 0 else newline + 1
            self._write(data, pos, cut)
            pos = cut

    def _rotate(self) -> None:
        """Close the full file, shift the rotated ones, start an empty file (see class doc)."""
        os.close(self._fd)
        self._fd = -1
        path = self.path
        if self.max_file < 2:
            _unlink(path)
        else:
            self._wait_compressor()  # the .1 being compressed must become .1.gz before shifting
            ext = ".gz" if self.compress else ""
            _unlink(f"{path}.{self.max_file - 1}{ext}")
            for index in range(self.max_file - 1, 1, -1):
                _rename(f"{path}.{index - 1}{ext}", f"{path}.{index}{ext}")
            _rename(path, path + ".1")
        self._fd = self._open(os.O_TRUNC)
        self._size = 0
        self.rotations += 1
        if self.compress:
            self._start_compressor(path + ".1")

    def _start_compressor(self, source: str) -> None:
        from threading import Thread  # only loggers with compress=true pay for threading

        self._compressor = Thread(target=_gzip_file, args=(source, self.stats), daemon=True)
        self._compressor.start()

    def _wait_compressor(self) -> None:
        if self._compressor is not None:
            self._compressor.join()
            self._compressor = None

    def close(self) -> None:
        """Flush, finish a running compression, close the file."""
        try:
            self.flush()
        finally:
            self._wait_compressor()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> JsonFileWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _unlink(path: str) -> None:
    try:  # noqa: SIM105 (contextlib is not loaded: the shim starts without site)
        os.unlink(path)
    except FileNotFoundError:
        pass


def _rename(source: str, target: str) -> None:
    try:  # noqa: SIM105
        os.rename(source, target)
    except FileNotFoundError:
        pass


def _gzip_file(source: str, stats: Stats | None) -> None:
    """Compress ``source`` to ``source.gz`` (level 6, as Go's default), then remove ``source``.

    The plain file is removed only once the .gz is complete, so a reader always finds one
    complete copy; a failure leaves the plain file and removes the partial .gz.
    """
    import gzip
    import shutil

    target = source + ".gz"
    try:
        with open(source, "rb") as plain, open(target, "wb") as raw:
            os.fchmod(raw.fileno(), _FILE_MODE)
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as packed:
                shutil.copyfileobj(plain, packed, 1 << 20)
        os.unlink(source)
    except OSError as exc:
        _unlink(target)
        if stats is not None:
            stats.sink_error(f"cannot compress {source}: {exc}", state=stats.sink_state)


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


def rotated_files(path: str) -> list[str]:
    """The rotated files of ``path``, oldest first: ``<path>.N[.gz]`` ... ``<path>.1[.gz]``.

    Found by listing the directory (the reader does not know max-file). When both ``.N`` and
    ``.N.gz`` exist a compression is in progress and the plain file is the complete one.
    """
    directory, base = os.path.split(path)
    prefix = base + "."
    numbers: dict[int, str] = {}
    try:
        names = os.listdir(directory or ".")
    except FileNotFoundError:
        return []
    for name in names:
        if not name.startswith(prefix):
            continue
        suffix = name[len(prefix) :]
        number = suffix[:-3] if suffix.endswith(".gz") else suffix
        if not number.isdigit() or number.startswith("0"):
            continue
        index = int(number)
        if index not in numbers or not suffix.endswith(".gz"):
            numbers[index] = os.path.join(directory, name)
    return [numbers[index] for index in sorted(numbers, reverse=True)]


def _open_rotated(path: str, current_ino: int) -> list[BinaryIO]:
    """Open every rotated file of ``path``, oldest first, skipping the one we already hold.

    Opening (not reading) them all first gives a consistent set even if the writer rotates
    meanwhile: a file renamed under us stays readable, and its inode tells it apart.
    """
    files: list[BinaryIO] = []
    for name in rotated_files(path):
        try:
            file = open(name, "rb")  # noqa: SIM115 - closed by the caller
        except FileNotFoundError:
            continue
        if os.fstat(file.fileno()).st_ino == current_ino:
            file.close()
            continue
        files.append(file)
    return files


def _entries_of_rotated(file: BinaryIO) -> Iterator[LogEntry]:
    """Every complete record in a rotated file, decompressing a .gz one on the fly.

    A damaged or truncated .gz (a shim killed mid-compression) yields what it can.
    """
    if file.name.endswith(".gz") if isinstance(file.name, str) else False:
        import gzip
        import zlib

        try:
            with gzip.GzipFile(fileobj=file, mode="rb") as packed:
                for line in packed:
                    if line.endswith(b"\n"):
                        entry = _decode(line)
                        if entry is not None:
                            yield entry
        except (OSError, EOFError, zlib.error):
            return
        return
    for line in _lines_forward(file, os.fstat(file.fileno()).st_size):
        entry = _decode(line)
        if entry is not None:
            yield entry


def _select_all(
    current: BinaryIO, end: int, rotated: list[BinaryIO], since: float | None, tail: int | None
) -> list[LogEntry]:
    """Like :func:`_select` over the rotated files (oldest first) followed by ``current``."""
    if not rotated:
        return _select(current, end, since, tail)
    if tail is not None and tail < 0:
        raise ValueError(f"tail must be >= 0, not {tail}")
    if tail == 0:
        return []
    newest = _select(current, end, since, tail)
    if tail is not None and len(newest) >= tail:
        return newest  # the current file alone holds the tail: rotated files are not read
    since_ns = None if since is None else int(since * _NS)
    older: list[LogEntry] = []
    for file in rotated:
        for entry in _entries_of_rotated(file):
            if since_ns is None or entry.time_ns >= since_ns:
                older.append(entry)
                if tail is not None and len(older) > 2 * tail:
                    del older[:-tail]
    selected = older + newest
    return selected if tail is None else selected[-tail:]


def read_entries(
    path: str, *, since: float | None = None, tail: int | None = None
) -> Iterator[LogEntry]:
    """The records of ``path`` and its rotated files, oldest first, filtered.

    Only those at or after ``since`` (epoch seconds), then only the last ``tail``. Rotated
    files (``<path>.1``, ``<path>.2.gz`` ...) come before the current file.
    Raises FileNotFoundError when there is no log (the container never started a shim).
    """
    with open(path, "rb") as file:
        stat = os.fstat(file.fileno())
        rotated = _open_rotated(path, stat.st_ino)
        try:
            entries = _select_all(file, stat.st_size, rotated, since, tail)
        finally:
            for other in rotated:
                other.close()
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


def _open_when_present(
    path: str, stop: Callable[[], bool], sleep: Callable[[float], object], poll: float
) -> BinaryIO | None:
    """Open ``path``, waiting for it to appear; None if stop() turns true first."""
    while True:
        stopping = stop()
        try:
            return open(path, "rb", buffering=0)
        except FileNotFoundError:
            if stopping:
                return None
        sleep(poll)


def follow(
    path: str,
    *,
    stop: Callable[[], bool],
    poll: float = 0.1,
    since: float | None = None,
    tail: int | None = None,
    wake: Callable[[float], object] | None = None,
) -> Iterator[LogEntry]:
    """Yield the existing records (filtered like :func:`read_entries`), then new ones as written.

    Returns once ``stop()`` is true and every complete line written before that is yielded; a
    line still missing its newline is waited for, never yielded torn. Blocking (time.sleep):
    an asyncio caller runs it in a thread. A truncated file is read again from the start. When
    the writer rotates, the old file is read to its end and the new ``path`` from its start
    (a file rotated out and away again within one ``poll`` interval is missed).

    ``wake``, if given, is slept in instead of time.sleep (a threading.Event's wait): whoever
    makes ``stop()`` true sets that event, and the follow ends at once, not a poll later.
    """
    sleep = wake or time.sleep
    file = _open_when_present(path, stop, sleep, poll)
    if file is None:
        return
    try:
        stat = os.fstat(file.fileno())
        offset = _complete_end(file, stat.st_size)
        rotated = _open_rotated(path, stat.st_ino)
        try:
            yield from _select_all(file, offset, rotated, since, tail)
        finally:
            for other in rotated:
                other.close()
        since_ns = None if since is None else int(since * _NS)
        while True:
            replacement = yield from _follow_from(file, offset, stop, sleep, poll, since_ns, path)
            if replacement is None:
                return
            for entry in _between(path, file, replacement):
                if since_ns is None or entry.time_ns >= since_ns:
                    yield entry
            file.close()
            file, offset = replacement, 0
    finally:
        file.close()


def _between(path: str, old: BinaryIO, new: BinaryIO) -> Iterator[LogEntry]:
    """Records of files rotated out between ``old`` and ``new`` (several rotations in one poll).

    Found by inode among the rotated files; a file compressed meanwhile has a new inode and
    cannot be placed, so with compress a burst of rotations within one poll can be missed.
    """
    old_ino = os.fstat(old.fileno()).st_ino
    new_ino = os.fstat(new.fileno()).st_ino
    names = rotated_files(path)
    inodes = []
    for name in names:
        try:
            inodes.append(os.stat(name).st_ino)
        except FileNotFoundError:
            inodes.append(-1)
    if old_ino not in inodes:
        return
    start = inodes.index(old_ino) + 1
    end = inodes.index(new_ino) if new_ino in inodes else len(names)
    for name in names[start:end]:
        try:
            with open(name, "rb") as rotated:
                yield from _entries_of_rotated(rotated)
        except FileNotFoundError:
            continue


def _replaced(path: str, file: BinaryIO) -> BinaryIO | None:
    """A new file now at ``path`` (the writer rotated ours away), or None."""
    try:
        fresh = open(path, "rb", buffering=0)  # noqa: SIM115 - returned open
    except FileNotFoundError:
        return None  # mid-rotation: the new file is not there yet
    if os.fstat(fresh.fileno()).st_ino == os.fstat(file.fileno()).st_ino:
        fresh.close()
        return None
    return fresh


def _follow_from(
    file: BinaryIO,
    offset: int,
    stop: Callable[[], bool],
    sleep: Callable[[float], object],
    poll: float,
    since_ns: int | None,
    path: str,
) -> Generator[LogEntry, None, BinaryIO | None]:
    """The polling half of :func:`follow`, starting at a line boundary ``offset``.

    Returns the file that replaced ours at ``path`` once ours is read to its end, or None
    when ``stop()`` ended the follow.
    """
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
        replacement = _replaced(path, file)
        if replacement is not None:
            # The writer opens the new file only after its last write to ours, so reading ours
            # once more after seeing the replacement gets everything.
            tail_chunk = file.read()
            if tail_chunk:
                pending += tail_chunk
                for line in pending.split(b"\n"):
                    entry = _decode(line)
                    if entry is not None and (since_ns is None or entry.time_ns >= since_ns):
                        yield entry
            return replacement
        if stopping:
            return None
        sleep(poll)
