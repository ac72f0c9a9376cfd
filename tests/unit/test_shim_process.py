"""The real nstask-shim-logger, started the way containerd starts it (no root needed).

Each test spawns the console script with fds 3/4/5 wired to pipes, an environment of only
CONTAINER_ID and CONTAINER_NAMESPACE and the URI's pairs shuffled, then checks the log file.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shim.harness import LoggerProcess, spawn_logger, uri_args
from shim.main import MAX_LINE

SHIM = str(Path(sys.executable).parent / "nstask-shim-logger")


def _args(query: dict[str, str]) -> list[str]:
    """URI pairs in a random order, as Go's map iteration gives them to containerd."""
    pairs = list(query.items())
    random.shuffle(pairs)
    return uri_args(dict(pairs))


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def _logs(records: list[dict[str, object]], stream: str) -> list[str]:
    return [str(r["log"]) for r in records if r["stream"] == stream]


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "lib" / "nstask" / "c1" / "c1-json.log"


@pytest.fixture
def shim(log_path: Path) -> Iterator[LoggerProcess]:
    query = {"driver": "json-file", "path": str(log_path), "x-unknown": "kept-out"}
    with spawn_logger([SHIM, *_args(query)], container_id="c1", namespace="nstask-t") as proc:
        yield proc


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def test_ready_only_after_log_file_exists(shim: LoggerProcess, log_path: Path) -> None:
    assert shim.wait_ready() == b"R"
    assert log_path.exists()  # checked at the moment containerd would start the container
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o640
    shim.close_stdout()
    shim.close_stderr()
    assert shim.wait() == 0


def test_many_lines_on_both_streams_arrive_complete_and_in_order(
    shim: LoggerProcess, log_path: Path
) -> None:
    shim.wait_ready()
    out_lines = [f"out {i} {'x' * (i % 200)}\n" for i in range(10_000)]
    err_lines = [f"err {i}\n" for i in range(500)]

    def writer(fd: int, lines: list[str], close: object) -> None:
        for start in range(0, len(lines), 37):  # uneven batches cut lines across reads
            _write_all(fd, "".join(lines[start : start + 37]).encode())
        assert callable(close)
        close()

    threads = [
        threading.Thread(target=writer, args=(shim.stdout, out_lines, shim.close_stdout)),
        threading.Thread(target=writer, args=(shim.stderr, err_lines, shim.close_stderr)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert shim.wait() == 0
    records = _records(log_path)
    assert _logs(records, "stdout") == out_lines
    assert _logs(records, "stderr") == err_lines
    assert {r["stream"] for r in records} == {"stdout", "stderr"}


def test_line_is_visible_before_the_stream_ends(shim: LoggerProcess, log_path: Path) -> None:
    """`nstask logs -f` needs each batch written out, not held until exit."""
    shim.wait_ready()
    os.write(shim.stdout, b"first line\n")
    deadline = time.monotonic() + 2
    while b"first line" not in log_path.read_bytes():
        assert time.monotonic() < deadline, "line not flushed while the container runs"
        time.sleep(0.01)
    assert shim.returncode is None


def test_long_line_is_split_and_every_byte_kept(shim: LoggerProcess, log_path: Path) -> None:
    shim.wait_ready()
    ascii_line = "".join(chr(ord("a") + i % 26) for i in range(100 * 1024)) + "\n"
    # 3-byte characters with an odd lead-in so 16 KiB cuts fall inside characters
    wide_line = "z" + "日本語" * 12_000 + "\n"
    for line in (ascii_line, wide_line):
        _write_all(shim.stdout, line.encode())
    shim.close_stdout()
    shim.close_stderr()
    assert shim.wait() == 0
    groups: dict[str, list[dict[str, object]]] = {}
    for record in _records(log_path):
        groups.setdefault(str(record.get("partial_id")), []).append(record)
    assert len(groups) == 2  # every record belongs to one of the two split lines
    for line, parts in zip((ascii_line, wide_line), groups.values(), strict=True):
        assert len(parts) == 7
        assert "".join(str(p["log"]) for p in parts) == line
        assert all(len(str(p["log"]).encode()) <= MAX_LINE + 1 for p in parts)
        assert [p["partial_ordinal"] for p in parts] == list(range(1, 8))
        assert [p["partial_last"] for p in parts] == [False] * 6 + [True]
        assert not any(str(p["log"]).endswith("\n") for p in parts[:-1])


def test_invalid_utf8_and_carriage_returns_do_not_crash(
    shim: LoggerProcess, log_path: Path
) -> None:
    shim.wait_ready()
    _write_all(shim.stdout, b"bad \xff\xfe\xc3 bytes\r\n")
    _write_all(shim.stderr, b"progress 10%\rprogress 100%\r\n\x00\x1b[31mred\n")
    _write_all(shim.stdout, b"still alive\n")
    shim.close_stdout()
    shim.close_stderr()
    assert shim.wait() == 0
    records = _records(log_path)
    assert _logs(records, "stdout") == ["bad \ufffd\ufffd\ufffd bytes\r\n", "still alive\n"]
    assert _logs(records, "stderr") == ["progress 10%\rprogress 100%\r\n", "\x00\x1b[31mred\n"]


def test_sigterm_drains_unread_data_and_exits_zero(shim: LoggerProcess, log_path: Path) -> None:
    shim.wait_ready()
    os.kill(shim.pid, signal.SIGSTOP)  # the data below is certainly unread when SIGTERM lands
    try:
        _write_all(shim.stdout, b"".join(b"line %d\n" % i for i in range(2000)) + b"no newline")
        _write_all(shim.stderr, b"last words\n")
        shim.signal(signal.SIGTERM)
    finally:
        os.kill(shim.pid, signal.SIGCONT)
    # the write ends stay open: the shim must stop on the signal, not on EOF
    assert shim.wait(timeout=5) == 0
    records = _records(log_path)
    out = _logs(records, "stdout")
    assert out[:2000] == [f"line {i}\n" for i in range(2000)]
    assert out[2000:] == ["no newline"]
    assert _logs(records, "stderr") == ["last words\n"]


def test_exits_zero_only_when_both_streams_end(shim: LoggerProcess, log_path: Path) -> None:
    shim.wait_ready()
    os.write(shim.stdout, b"partial at eof")
    shim.close_stdout()
    with pytest.raises(TimeoutError):
        shim.wait(timeout=0.3)  # stderr still open: keep running
    os.write(shim.stderr, b"err\n")
    shim.close_stderr()
    assert shim.wait(timeout=5) == 0
    assert _logs(_records(log_path), "stdout") == ["partial at eof"]
    assert _logs(_records(log_path), "stderr") == ["err\n"]


def test_appends_to_an_existing_log(log_path: Path) -> None:
    """A restarted container keeps the log of its earlier run."""
    for text in (b"run 1\n", b"run 2\n"):
        with spawn_logger([SHIM, *_args({"path": str(log_path)})]) as proc:
            proc.wait_ready()
            os.write(proc.stdout, text)
            proc.close_stdout()
            proc.close_stderr()
            assert proc.wait() == 0
    assert _logs(_records(log_path), "stdout") == ["run 1\n", "run 2\n"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"driver": "json-file"}, "missing path"),
        ({"driver": "json-file", "path": "relative/c1.log"}, "absolute"),
        ({"driver": "syslog", "path": "/tmp/nstask-never/c1.log"}, "unknown driver"),
    ],
)
def test_bad_uri_exits_non_zero_promptly_without_ready(query: dict[str, str], message: str) -> None:
    with spawn_logger([SHIM, *_args(query)]) as proc:
        assert proc.wait(timeout=5) == 2
        assert time.perf_counter() - proc.started < 5
        assert proc.wait_ready(timeout=1) == b""  # EOF, never the readiness byte
        assert message in proc.read_errors()
    assert not Path("/tmp/nstask-never").exists()


def test_unwritable_log_path_exits_one(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with spawn_logger([SHIM, *_args({"path": str(blocker / "c1.log")})]) as proc:
        assert proc.wait(timeout=5) == 1
        assert proc.wait_ready(timeout=1) == b""
        assert "cannot open log file" in proc.read_errors()


def test_non_blocking_json_file_keeps_everything_when_the_disk_keeps_up(log_path: Path) -> None:
    query = {"path": str(log_path), "mode": "non-blocking", "max-buffer-size": "4m"}
    lines = [f"nb {i}\n" for i in range(20_000)]
    with spawn_logger([SHIM, *_args(query)]) as proc:
        proc.wait_ready()
        _write_all(proc.stdout, "".join(lines).encode())
        proc.close_stdout()
        proc.close_stderr()
        assert proc.wait() == 0
    assert _logs(_records(log_path), "stdout") == lines
    stats = json.loads(Path(str(log_path) + ".stats.json").read_text())
    assert stats["mode"] == "non-blocking"
    assert (stats["lines"], stats["written_lines"], stats["dropped_lines"]) == (20_000, 20_000, 0)


def test_stats_file_is_current_while_running(shim: LoggerProcess, log_path: Path) -> None:
    shim.wait_ready()
    stats_path = Path(str(log_path) + ".stats.json")
    assert json.loads(stats_path.read_text())["sink_state"] == "ok"  # written before readiness
    _write_all(shim.stdout, b"a\nb\n")
    deadline = time.monotonic() + 3
    while json.loads(stats_path.read_text())["written_lines"] != 2:
        assert time.monotonic() < deadline, "stats not refreshed within about a second"
        time.sleep(0.05)
    stats = json.loads(stats_path.read_text())
    assert stats["pid"] == shim.pid and stats["exited"] is False
