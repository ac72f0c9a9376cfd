"""The fluentd driver: msgpack encoding, options, and the real shim talking to a receiver.

Every stream is decoded twice: by shim.receiver's own decoder (which also answers acks) and by
the msgpack package's Unpacker, so the encoder is not only checked against itself.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from shim.fluentd import parse_address, render_tag
from shim.harness import LoggerProcess, spawn_logger, uri_args
from shim.msgpack import EventTime, packb
from shim.options import OptionError, parse_duration, parse_size
from shim.receiver import Event, ForwardReceiver

SHIM = str(Path(sys.executable).parent / "nstask-shim-logger")
CID = "0123456789abcdef" * 4


def _ext_hook(code: int, data: bytes) -> Any:
    assert code == 0 and len(data) == 8
    return ("EventTime", int.from_bytes(data[:4], "big"), int.from_bytes(data[4:], "big"))


def _second_decoder(raw: bytes) -> list[Any]:
    unpacker = msgpack.Unpacker(raw=False, ext_hook=_ext_hook, strict_map_key=False)
    unpacker.feed(raw)
    return list(unpacker)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        127,
        128,
        255,
        256,
        65535,
        65536,
        2**32,
        2**64 - 1,
        -1,
        -32,
        -33,
        -129,
        -(2**15) - 1,
        -(2**31) - 1,
        -(2**63),
        "",
        "é" * 40,
        "x" * 300,
        "y" * 70_000,
        b"\x00\xff" * 200,
        list(range(20)),
        {"k" + str(i): i for i in range(20)},
        ["tag", {"nested": [1, {"a": None}]}],
    ],
)
def test_encoding_matches_the_msgpack_package(value: Any) -> None:
    assert msgpack.unpackb(packb(value), raw=False, strict_map_key=False) == value
    assert packb(value) == msgpack.packb(value, use_bin_type=True)


def test_event_time_is_ext_0_with_big_endian_seconds_and_nanoseconds() -> None:
    packed = packb(EventTime.from_ns(1_795_000_000_123_456_789))
    assert packed[:2] == b"\xd7\x00"
    ext = msgpack.unpackb(packed)
    assert ext.code == 0
    assert ext.data == (1_795_000_000).to_bytes(4, "big") + (123_456_789).to_bytes(4, "big")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "tcp://127.0.0.1:24224"),
        ("fluent", "tcp://fluent:24224"),
        ("10.0.0.5:24225", "tcp://10.0.0.5:24225"),
        ("tcp://127.0.0.1:5170", "tcp://127.0.0.1:5170"),
        ("[::1]:24230", "tcp://::1:24230"),
        ("unix:///var/run/fluent.sock", "unix:///var/run/fluent.sock"),
    ],
)
def test_fluentd_address_forms_docker_accepts(text: str, expected: str) -> None:
    assert repr(parse_address(text)) == expected


@pytest.mark.parametrize("text", ["udp://h:1", "h:notaport", "h:70000", "unix://relative", ":24"])
def test_bad_fluentd_addresses_are_refused(text: str) -> None:
    with pytest.raises(OptionError, match="fluentd-address"):
        parse_address(text)


def test_tag_templates() -> None:
    values = {"Name": "web", "ID": CID[:12], "FullID": CID, "TaskID": "t1", "TaskFamily": "shop"}
    assert render_tag("{{.ID}}", values) == "0123456789ab"
    assert render_tag("ecs.{{.TaskFamily}}.{{ .Name }}-{{.FullID}}", values) == (
        f"ecs.shop.web-{CID}"
    )
    with pytest.raises(OptionError, match="unknown field"):
        render_tag("{{.ImageName}}", values)
    with pytest.raises(OptionError, match="unclosed"):
        render_tag("a{{.Name", values)


@pytest.mark.parametrize(
    ("text", "binary", "size"),
    [
        ("10", False, 10),
        ("10k", False, 10_000),
        ("20M", False, 20_000_000),
        ("1.5g", False, 1_500_000_000),
        ("1m", True, 1_048_576),
        ("64KiB", True, 65_536),
        ("2 mb", True, 2 * 1_048_576),
    ],
)
def test_sizes_parse_as_docker(text: str, binary: bool, size: int) -> None:
    assert parse_size("x", text, binary=binary) == size


@pytest.mark.parametrize("text", ["", "m", "-1m", "ten", "1x", ".5k"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(OptionError):
        parse_size("max-size", text, binary=False)


def test_durations_parse_as_go() -> None:
    assert parse_duration("w", "1s") == 1.0
    assert parse_duration("w", "250ms") == pytest.approx(0.25)
    assert parse_duration("w", "1m30s") == 90.0
    with pytest.raises(OptionError):
        parse_duration("w", "5")


# -- the real shim -------------------------------------------------------------------------


def _start(tmp_path: Path, query: dict[str, str], name: str = "c1") -> tuple[LoggerProcess, Path]:
    log = tmp_path / name / f"{name}-json.log"
    args = {"driver": "fluentd", "path": str(log), "container": name, **query}
    proc = spawn_logger([SHIM, *uri_args(args)], container_id=CID)
    return proc, Path(str(log) + ".stats.json")


def _finish(proc: LoggerProcess) -> int:
    proc.close_stdout()
    proc.close_stderr()
    return proc.wait(timeout=20)


def _stats(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("network", ["tcp", "unix"])
def test_lines_arrive_as_docker_records_and_decode_twice(tmp_path: Path, network: str) -> None:
    receiver = ForwardReceiver(network=network, path=str(tmp_path / "fluent.sock"))
    with receiver:
        query = {
            "fluentd-address": receiver.address,
            "tag": "ecs.{{.TaskFamily}}.{{.Name}}",
            "task": "task-1",
            "family": "shop",
            "label.env": "prod",
        }
        proc, stats_file = _start(tmp_path, query)
        with proc:
            assert proc.wait_ready() == b"R"
            before = time.time_ns()
            _write_all(proc.stdout, b"hello\nbad \xff byte\n")
            _write_all(proc.stderr, b"oops\n")
            assert _finish(proc) == 0
        _wait_for(lambda: len(receiver.events) == 3)
        raw = bytes(receiver.raw)
    events = receiver.events
    by_source: dict[str, list[Event]] = {e.record["source"]: [] for e in events}
    for event in events:
        by_source[event.record["source"]].append(event)
    assert [e.record["log"] for e in by_source["stdout"]] == ["hello", "bad \ufffd byte"]
    assert by_source["stderr"][0].record == {
        "container_id": CID,
        "container_name": "c1",
        "ecs_task_id": "task-1",
        "ecs_task_definition": "shop",
        "env": "prod",
        "source": "stderr",
        "log": "oops",
    }
    assert {e.tag for e in events} == {"ecs.shop.c1"}
    assert all(abs(e.time_ns - before) < 5 * 10**9 for e in events)
    assert any(e.nanoseconds for e in events)  # sub-second precision kept
    second = _second_decoder(raw)
    assert [(m[0], m[1], m[2]) for m in second] == [
        (e.tag, ("EventTime", e.seconds, e.nanoseconds), e.record) for e in events
    ]
    stats = _stats(stats_file)
    assert (stats["lines"], stats["written_lines"], stats["dropped_lines"]) == (3, 3, 0)
    assert stats["sink_state"] == "closed" and stats["exited"] is True


def test_split_line_carries_docker_partial_fields(tmp_path: Path) -> None:
    with ForwardReceiver() as receiver:
        proc, _ = _start(tmp_path, {"fluentd-address": receiver.address})
        with proc:
            proc.wait_ready()
            line = "".join(chr(97 + i % 26) for i in range(40_000))
            _write_all(proc.stdout, line.encode() + b"\nshort\n")
            assert _finish(proc) == 0
        _wait_for(lambda: len(receiver.events) == 4)
    parts = [e.record for e in receiver.events[:3]]
    assert "".join(p["log"] for p in parts) == line
    assert [p["partial_ordinal"] for p in parts] == ["1", "2", "3"]
    assert [p["partial_last"] for p in parts] == ["false", "false", "true"]
    assert {p["partial_message"] for p in parts} == {"true"}
    assert len({p["partial_id"] for p in parts}) == 1 and len(parts[0]["partial_id"]) == 64
    assert len({e.time_ns for e in receiver.events[:3]}) == 1  # the first part's time
    assert "partial_id" not in receiver.events[3].record


def test_request_ack_waits_for_every_chunk(tmp_path: Path) -> None:
    with ForwardReceiver() as receiver:
        query = {"fluentd-address": receiver.address, "fluentd-request-ack": "true"}
        proc, stats_file = _start(tmp_path, query)
        with proc:
            proc.wait_ready()
            _write_all(proc.stdout, b"".join(b"line %d\n" % i for i in range(2000)))
            assert _finish(proc) == 0
        raw = bytes(receiver.raw)
    assert [e.record["log"] for e in receiver.events] == [f"line {i}" for i in range(2000)]
    chunks = [e.option["chunk"] for e in receiver.events if e.option]
    assert len(set(chunks)) == 2000 and receiver.acks_sent == 2000
    assert [m[3]["chunk"] for m in _second_decoder(raw)] == chunks
    assert _stats(stats_file)["written_lines"] == 2000


def test_unreachable_receiver_fails_the_start_unless_async(tmp_path: Path) -> None:
    proc, stats_file = _start(tmp_path, {"fluentd-address": f"127.0.0.1:{_free_port()}"})
    with proc:
        assert proc.wait(timeout=10) == 1
        assert proc.wait_ready(timeout=1) == b""  # never the readiness byte
    stats = _stats(stats_file)
    assert stats["sink_state"] == "failed" and "fluentd" in stats["last_error"]


def test_blocking_mode_holds_the_container_until_the_receiver_is_up(tmp_path: Path) -> None:
    port = _free_port()
    query = {
        "fluentd-address": f"127.0.0.1:{port}",
        "fluentd-async": "true",
        "fluentd-retry-wait": "50ms",
    }
    proc, stats_file = _start(tmp_path, query)
    lines = [b"%06d %s\n" % (i, b"z" * 200) for i in range(3000)]  # ~620 KB: far past a pipe
    with proc:
        assert proc.wait_ready() == b"R"
        writer = threading.Thread(target=_write_all, args=(proc.stdout, b"".join(lines)))
        writer.start()
        time.sleep(1.0)
        assert writer.is_alive(), "back-pressure must reach the writer while fluentd is down"
        _wait_for(lambda: _stats(stats_file)["sink_errors"] > 0)
        assert _stats(stats_file)["sink_state"] in ("down", "connecting")
        with ForwardReceiver(port=port) as receiver:
            writer.join(30)
            assert not writer.is_alive()
            assert _finish(proc) == 0
            _wait_for(lambda: len(receiver.events) == len(lines))
    assert [e.record["log"] for e in receiver.events] == [x[:-1].decode() for x in lines]
    stats = _stats(stats_file)
    assert (stats["written_lines"], stats["dropped_lines"]) == (3000, 0)


def test_non_blocking_mode_drops_and_counts_while_the_receiver_is_down(tmp_path: Path) -> None:
    port = _free_port()
    query = {
        "fluentd-address": f"127.0.0.1:{port}",
        "fluentd-async": "true",
        "fluentd-retry-wait": "100ms",
        "mode": "non-blocking",
        "max-buffer-size": "64k",
    }
    proc, stats_file = _start(tmp_path, query)
    lines = [b"%06d %s\n" % (i, b"q" * 500) for i in range(4000)]  # ~2 MB, 30x the buffer
    with proc:
        assert proc.wait_ready() == b"R"
        started = time.monotonic()
        _write_all(proc.stdout, b"".join(lines))
        assert time.monotonic() - started < 5, "the container must never wait for fluentd"
        with ForwardReceiver(port=port) as receiver:
            _wait_for(lambda: len(receiver.events) > 0)
            _write_all(proc.stdout, b"after recovery\n")
            _wait_for(lambda: receiver.events[-1].record["log"] == "after recovery")
            assert _finish(proc) == 0
    stats = _stats(stats_file)
    assert stats["lines"] == 4001
    assert stats["dropped_lines"] > 3000
    assert stats["written_lines"] + stats["dropped_lines"] == stats["lines"]
    assert len(receiver.events) == stats["written_lines"]
    logs = [e.record["log"] for e in receiver.events]
    assert logs == [*sorted(logs[:-1]), "after recovery"]  # what arrived is in order


def test_a_dead_receiver_never_keeps_the_shim_past_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    query = {"fluentd-address": f"127.0.0.1:{port}", "fluentd-async": "true"}
    proc, stats_file = _start(tmp_path, query)
    with proc:
        proc.wait_ready()
        _write_all(proc.stdout, b"never delivered\n")
        time.sleep(0.3)
        proc.signal()
        started = time.monotonic()
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 10  # before containerd's 12 s SIGKILL
    stats = _stats(stats_file)
    assert (stats["dropped_lines"], stats["written_lines"]) == (1, 0)


def test_receiver_restart_is_reconnected(tmp_path: Path) -> None:
    port = _free_port()
    query = {"fluentd-address": f"127.0.0.1:{port}", "fluentd-retry-wait": "50ms"}
    with ForwardReceiver(port=port) as first:
        proc, _ = _start(tmp_path, query)
        proc.wait_ready()
        _write_all(proc.stdout, b"one\n")
        _wait_for(lambda: len(first.events) == 1)
    time.sleep(0.2)
    with proc, ForwardReceiver(port=port) as second:
        _write_all(proc.stdout, b"two\n")
        _wait_for(lambda: len(second.events) == 1)
        assert _finish(proc) == 0
    assert second.events[0].record["log"] == "two"
