"""The json-file format: writer output, timestamps, and the reader behind `nstask logs`."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shim.jsonfile import (
    JsonFileWriter,
    LogEntry,
    follow,
    format_time,
    parse_time,
    read_entries,
)

T0 = 1_795_000_000_000_000_000  # 2026-11-18, in ns


def _write(path: Path, lines: list[tuple[str, str, int]]) -> None:
    with JsonFileWriter(str(path)) as writer:
        for stream, log, time_ns in lines:
            writer.add(stream, log, time_ns)


def test_record_is_dockers_layout(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    _write(path, [("stdout", 'say "hi"\t\\ é 日\x01\r\n', T0 + 123_456_789)])
    line = path.read_bytes()
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
    assert list(json.loads(line)) == ["log", "stream", "time"]
    assert json.loads(line) == {
        "log": 'say "hi"\t\\ é 日\x01\r\n',
        "stream": "stdout",
        "time": "2026-11-18T11:06:40.123456789Z",
    }
    assert "é 日".encode() in line  # UTF-8 as is, not \\u escapes


def test_file_is_0640_with_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c.log"
    old = os.umask(0o077)
    try:
        JsonFileWriter(str(path)).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_nothing_reaches_the_file_before_flush(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    writer = JsonFileWriter(str(path))
    writer.add("stderr", "x\n", T0)
    assert path.read_bytes() == b""
    writer.flush()
    assert json.loads(path.read_bytes())["stream"] == "stderr"
    writer.close()


def test_partial_fields_only_on_split_parts(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with JsonFileWriter(str(path)) as writer:
        writer.add("stdout", "ab", T0, partial_id="p1", partial_ordinal=1)
        writer.add("stdout", "c\n", T0, partial_id="p1", partial_ordinal=2, partial_last=True)
        writer.add("stdout", "d\n", T0)
    first, second, third = (json.loads(line) for line in path.read_bytes().splitlines())
    assert first["partial_message"] is True and first["partial_last"] is False
    assert (second["partial_id"], second["partial_ordinal"], second["partial_last"]) == (
        "p1",
        2,
        True,
    )
    assert "partial_message" not in third


@pytest.mark.parametrize(
    "time_ns", [0, T0, T0 + 1, 951_782_400_123_000_000, 4_102_444_799_999_999_999]
)
def test_time_round_trips_and_matches_datetime(time_ns: int) -> None:
    text = format_time(time_ns)
    assert parse_time(text) == time_ns
    expected = datetime.fromtimestamp(time_ns // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert text == f"{expected}.{time_ns % 10**9:09d}Z"


@pytest.mark.parametrize(
    ("text", "time_ns"),
    [
        ("2019-03-01T10:00:00.5Z", 1_551_434_400_500_000_000),  # Go trims trailing zeros
        ("2019-03-01T10:00:00Z", 1_551_434_400_000_000_000),
        ("2019-03-01T12:00:00.000000001+02:00", 1_551_434_400_000_000_001),
        ("2024-02-29T00:00:00.1234567891Z", 1_709_164_800_123_456_789),
    ],
)
def test_parse_time_accepts_other_writers(text: str, time_ns: int) -> None:
    assert parse_time(text) == time_ns


@pytest.mark.parametrize("text", ["", "2019-03-01", "2019-13-01T00:00:00Z", "2019-03-01T10:00:00"])
def test_parse_time_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


def _numbered(path: Path, count: int, *, start: int = 0) -> list[LogEntry]:
    entries = [
        LogEntry(T0 + i * 10**9, "stderr" if i % 3 == 0 else "stdout", f"line {i} {'y' * 300}\n")
        for i in range(start, start + count)
    ]
    with JsonFileWriter(str(path)) as writer:
        for entry in entries:
            writer.add(entry.stream, entry.log, entry.time_ns)
    return entries


def test_read_all_skips_torn_and_foreign_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    entries = _numbered(path, 3)
    with path.open("ab") as file:
        file.write(b'{"log":"torn by a kill\nnot json at all\n[1,2]\n{"log":"half')
    assert list(read_entries(str(path))) == entries


def test_tail_reads_the_last_entries_across_blocks(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    entries = _numbered(path, 1000)  # ~370 KiB: several 64 KiB blocks back from the end
    with path.open("ab") as file:
        file.write(b'{"log":"still being wri')
    assert list(read_entries(str(path), tail=250)) == entries[-250:]
    assert list(read_entries(str(path), tail=5000)) == entries
    assert list(read_entries(str(path), tail=0)) == []


def test_since_keeps_entries_at_or_after(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    entries = _numbered(path, 20)
    since = (T0 + 15 * 10**9) / 10**9
    assert list(read_entries(str(path), since=since)) == entries[15:]
    assert list(read_entries(str(path), since=since, tail=2)) == entries[-2:]
    assert list(read_entries(str(path), since=since + 100)) == []


def test_missing_log_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(read_entries(str(tmp_path / "none.log")))


def test_follow_sees_appended_lines_and_stops(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    existing = _numbered(path, 5)
    done = threading.Event()

    def append() -> None:
        with path.open("ab") as file:
            for i in range(5, 25):
                record = {"log": f"late {i}\n", "stream": "stdout", "time": format_time(T0 + i)}
                raw = json.dumps(record).encode() + b"\n"
                file.write(raw[:10])  # a reader must wait for the newline, not yield a torn line
                file.flush()
                time.sleep(0.005)
                file.write(raw[10:])
                file.flush()
        done.set()

    thread = threading.Thread(target=append)
    thread.start()
    seen = list(follow(str(path), stop=done.is_set, poll=0.01, tail=2))
    thread.join()
    assert seen[:2] == existing[-2:]
    assert [entry.log for entry in seen[2:]] == [f"late {i}\n" for i in range(5, 25)]


def test_follow_ends_when_woken_not_a_poll_later(tmp_path: Path) -> None:
    """With a wake event, a follower sleeping out a long poll returns as soon as the stop
    comes (the agent's `logs -f` of a task that stopped: `run --rm` ends that much sooner),
    with the lines written before it, whether or not the file is there yet."""
    for name, lines in (("c.log", 3), ("missing.log", 0)):
        path = tmp_path / name
        if lines:
            _numbered(path, lines)
        stop = threading.Event()
        seen: list[object] = []
        thread = threading.Thread(
            target=lambda p=path, out=seen, ev=stop: out.extend(
                follow(str(p), stop=ev.is_set, poll=3600, wake=ev.wait)
            )
        )
        thread.start()
        time.sleep(0.05)  # the follower is asleep in its hour-long poll
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), f"{name}: the follower slept through the wake-up"
        assert len(seen) == lines


def test_follow_waits_for_the_file_and_returns_on_stop(tmp_path: Path) -> None:
    path = tmp_path / "later.log"
    started = time.monotonic()
    assert list(follow(str(path), stop=lambda: time.monotonic() - started > 0.2, poll=0.01)) == []
    staged = tmp_path / "staged.log"
    _numbered(staged, 1)
    timer = threading.Timer(0.1, staged.rename, args=(path,))  # appears complete, atomically
    timer.start()
    seen = list(follow(str(path), stop=lambda: path.exists(), poll=0.01))
    timer.join()
    assert [entry.log.split()[0] for entry in seen] == ["line"]
