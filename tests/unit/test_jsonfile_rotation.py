"""json-file rotation (max-size, max-file, compress) and reading across rotated files."""

from __future__ import annotations

import gzip
import json
import os
import sys
import threading
from pathlib import Path

import pytest

from shim.harness import spawn_logger, uri_args
from shim.jsonfile import JsonFileWriter, LogEntry, follow, read_entries, rotated_files

T0 = 1_795_000_000_000_000_000
SHIM = str(Path(sys.executable).parent / "nstask-shim-logger")


def _entries(count: int, start: int = 0) -> list[LogEntry]:
    return [
        LogEntry(T0 + i * 10**6, "stdout", f"line {i:05d} {'r' * 90}\n")
        for i in range(start, start + count)
    ]


def _write(writer: JsonFileWriter, entries: list[LogEntry], per_flush: int = 7) -> None:
    for index, entry in enumerate(entries):
        writer.add(entry.stream, entry.log, entry.time_ns)
        if index % per_flush == per_flush - 1:
            writer.flush()
    writer.flush()


def test_rotation_keeps_max_file_files_each_near_max_size(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    entries = _entries(1000)  # ~150 KB of records
    with JsonFileWriter(str(path), max_size=10_000, max_file=3) as writer:
        _write(writer, entries)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["c.log", "c.log.1", "c.log.2"]
    for name in ("c.log.1", "c.log.2"):
        size = (tmp_path / name).stat().st_size
        assert 10_000 <= size < 10_000 + 200  # full, and at most one record past the limit
    assert path.stat().st_size <= 10_000 + 200
    kept = list(read_entries(str(path)))
    assert kept == entries[-len(kept) :]  # the newest, in order, across the three files
    assert 130 < len(kept) < 200


def test_max_file_one_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with JsonFileWriter(str(path), max_size=5_000) as writer:
        _write(writer, _entries(200))
        assert writer.rotations > 0
    assert [p.name for p in tmp_path.iterdir()] == ["c.log"]
    kept = list(read_entries(str(path)))
    assert kept and kept[-1] == _entries(200)[-1]


def test_compressed_rotation_is_gzip_and_read_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    entries = _entries(600)
    with JsonFileWriter(str(path), max_size=8_000, max_file=4, compress=True) as writer:
        _write(writer, entries)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["c.log", "c.log.1.gz", "c.log.2.gz", "c.log.3.gz"]
    with gzip.open(tmp_path / "c.log.1.gz", "rb") as packed:
        first = json.loads(packed.readline())
    assert first["stream"] == "stdout"
    kept = list(read_entries(str(path)))
    assert kept == entries[-len(kept) :] and len(kept) > 150
    assert list(read_entries(str(path), tail=120)) == entries[-120:]
    since = (entries[-100].time_ns) / 10**9
    assert list(read_entries(str(path), since=since)) == [
        e for e in entries[-110:] if e.time_ns >= entries[-100].time_ns
    ]


def test_rotated_files_are_listed_oldest_first_plain_preferred(tmp_path: Path) -> None:
    for name in ("c.log", "c.log.1", "c.log.1.gz", "c.log.2.gz", "c.log.10", "c.log.x", "d.log.1"):
        (tmp_path / name).write_bytes(b"")
    assert [Path(p).name for p in rotated_files(str(tmp_path / "c.log"))] == [
        "c.log.10",
        "c.log.2.gz",
        "c.log.1",
    ]


def test_truncated_gzip_is_read_as_far_as_it_goes(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    entries = _entries(300)
    with JsonFileWriter(str(path), max_size=8_000, max_file=3, compress=True) as writer:
        _write(writer, entries)
    damaged = tmp_path / "c.log.2.gz"
    damaged.write_bytes(damaged.read_bytes()[:500])
    kept = list(read_entries(str(path)))
    assert kept[-1] == entries[-1]  # the damaged file costs its own lines, nothing else


def test_follow_survives_rotation(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    entries = _entries(3000)
    done = threading.Event()
    writer = JsonFileWriter(str(path), max_size=20_000, max_file=50)

    def produce() -> None:
        for start in range(0, len(entries), 50):
            _write(writer, entries[start : start + 50], per_flush=50)
            done.wait(0.002)
        writer.close()
        done.set()

    thread = threading.Thread(target=produce)
    thread.start()
    seen = list(follow(str(path), stop=done.is_set, poll=0.005))
    thread.join()
    assert writer.rotations > 10
    assert seen == entries


def test_the_shim_rotates_by_its_options(tmp_path: Path) -> None:
    path = tmp_path / "c" / "c.log"
    query = {"path": str(path), "max-size": "20k", "max-file": "3", "compress": "true"}
    lines = [b"%05d %s\n" % (i, b"s" * 100) for i in range(2000)]
    with spawn_logger([SHIM, *uri_args(query)]) as proc:
        proc.wait_ready()
        data = b"".join(lines)
        view = memoryview(data)
        while view:
            view = view[os.write(proc.stdout, view) :]
        proc.close_stdout()
        proc.close_stderr()
        assert proc.wait() == 0
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["c.log", "c.log.1.gz", "c.log.2.gz", "c.log.stats.json"]
    kept = [e.log.encode() for e in read_entries(str(path))]
    assert kept == lines[-len(kept) :]
    stats = json.loads((path.parent / "c.log.stats.json").read_text())
    assert stats["written_lines"] == 2000 and stats["exited"] is True


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"max-size": "0"}, "max-size"),
        ({"max-size": "huge"}, "max-size"),
        ({"max-size": "1m", "max-file": "0"}, "max-file"),
        ({"max-size": "1m", "compress": "true"}, "compress"),
        ({"compress": "maybe"}, "compress"),
    ],
)
def test_bad_json_file_options_fail_before_ready(
    tmp_path: Path, query: dict[str, str], message: str
) -> None:
    path = tmp_path / "c.log"
    with spawn_logger([SHIM, *uri_args({"path": str(path), **query})]) as proc:
        assert proc.wait(timeout=5) == 2
        assert proc.wait_ready(timeout=1) == b""
    stats = json.loads((tmp_path / "c.log.stats.json").read_text())
    assert stats["sink_state"] == "failed" and message in stats["last_error"]
