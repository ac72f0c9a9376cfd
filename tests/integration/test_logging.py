"""The logging shim launched by real containerd (``ctr run --log-uri binary://...``).

Each test runs busybox containers in a containerd namespace of its own (nstask-test-<random>),
named nstask-log-<random>, and removes containers, tasks, image and namespace afterwards, even
when a test fails.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from support import CTR_SOCK, REPO, TEST_IMAGE

from shim.jsonfile import read_entries
from shim.receiver import ForwardReceiver

pytestmark = pytest.mark.integration

SHIM = Path(sys.executable).parent / "nstask-shim-logger"


def _ctr(namespace: str, *args: str, timeout: float = 120, check: bool = True) -> str:
    proc = subprocess.run(
        ["ctr", "--address", CTR_SOCK, "-n", namespace, *args],
        text=True,
        capture_output=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"ctr {' '.join(args)} -> {proc.returncode}: {proc.stderr}")
    return proc.stdout


class Runner:
    """Runs containers with a binary:// log URI in one namespace and cleans them up."""

    def __init__(self, namespace: str, base: Path) -> None:
        self.namespace = namespace
        self.base = base
        self.names: list[str] = []

    def uri(self, log: Path, options: dict[str, str] | None) -> str:
        return f"binary://{SHIM}?{urlencode({'path': str(log), **(options or {})})}"

    def name(self) -> str:
        name = f"nstask-log-{random.randrange(16**8):08x}"
        self.names.append(name)
        return name

    def run(
        self, script: str, log: Path, options: dict[str, str] | None = None, *, timeout: float = 120
    ) -> str:
        """Run to completion (ctr run --rm: the task is deleted, so the shim has finished)."""
        name = self.name()
        _ctr(
            self.namespace,
            "run",
            "--rm",
            "--log-uri",
            self.uri(log, options),
            TEST_IMAGE,
            name,
            "sh",
            "-c",
            script,
            timeout=timeout,
        )
        return name

    def start(self, script: str, log: Path, options: dict[str, str] | None = None) -> str:
        name = self.name()
        _ctr(
            self.namespace,
            "run",
            "-d",
            "--log-uri",
            self.uri(log, options),
            TEST_IMAGE,
            name,
            "sh",
            "-c",
            script,
        )
        return name

    def status(self, name: str) -> str:
        for line in _ctr(self.namespace, "tasks", "ls").splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == name:
                return fields[-1]
        return "GONE"

    def remove(self, name: str) -> None:
        _ctr(self.namespace, "tasks", "kill", "-s", "SIGKILL", name, check=False)
        deadline = time.monotonic() + 10
        while self.status(name) not in ("STOPPED", "GONE") and time.monotonic() < deadline:
            time.sleep(0.05)
        _ctr(self.namespace, "tasks", "rm", name, check=False)
        _ctr(self.namespace, "containers", "rm", name, check=False)


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    ns = f"nstask-test-{random.randrange(16**6):06x}"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_test_image.py"),
            *("--ref", TEST_IMAGE, "--address", CTR_SOCK, "--namespace", ns),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield ns
    finally:
        for kind in ("tasks", "containers"):
            for name in _ctr(ns, kind, "ls", "-q", check=False).split():
                _ctr(ns, kind, "rm", "-f", name, check=False)
        _ctr(ns, "images", "rm", "--sync", TEST_IMAGE, check=False)
        subprocess.run(["ctr", "--address", CTR_SOCK, "namespaces", "rm", ns], capture_output=True)


@pytest.fixture
def runner(namespace: str, tmp_path: Path) -> Iterator[Runner]:
    r = Runner(namespace, tmp_path)
    try:
        yield r
    finally:
        for name in r.names:
            r.remove(name)
        left = set(_ctr(namespace, "containers", "ls", "-q").split()) & set(r.names)
        assert not left, f"containers left behind: {left}"


def _stats(log: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(str(log) + ".stats.json").read_text())
    return data


def test_100000_lines_complete_ordered_and_streams_apart(runner: Runner, tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    runner.run("seq 1 100000; seq 1 1000 >&2", log)
    entries = list(read_entries(str(log)))
    out = [e.log for e in entries if e.stream == "stdout"]
    err = [e.log for e in entries if e.stream == "stderr"]
    assert out == [f"{i}\n" for i in range(1, 100_001)]
    assert err == [f"{i}\n" for i in range(1, 1001)]
    stats = _stats(log)
    assert (stats["lines"], stats["dropped_lines"], stats["exited"]) == (101_000, 0, True)


def test_a_1_mib_line_is_split_and_reassembled(runner: Runner, tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    runner.run("head -c 1048576 /dev/zero | tr '\\0' a; echo; echo after", log)
    records = [json.loads(line) for line in log.read_bytes().splitlines()]
    parts = [r for r in records if "partial_id" in r]
    assert len({p["partial_id"] for p in parts}) == 1
    assert [p["partial_ordinal"] for p in parts] == list(range(1, len(parts) + 1))
    assert [p["partial_last"] for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p["log"] for p in parts) == "a" * 1_048_576 + "\n"
    assert records[-1]["log"] == "after\n" and "partial_id" not in records[-1]


def test_rotation_honours_max_size_and_max_file(runner: Runner, tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    script = "i=0; while [ $i -lt 20000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done"
    runner.run(script, log, {"max-size": "100k", "max-file": "3"})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["c.log", "c.log.1", "c.log.2", "c.log.stats.json"]
    for name in ("c.log.1", "c.log.2"):
        assert 100_000 <= (tmp_path / name).stat().st_size < 100_000 + 200
    logs = [e.log for e in read_entries(str(log))]
    last = int(logs[0].split("-")[1])
    assert logs == [f"line-{i}-{'x' * 20}\n" for i in range(last, 20_000)]


def test_fluentd_receives_every_line_with_acks(runner: Runner, tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    with ForwardReceiver() as receiver:
        options = {
            "driver": "fluentd",
            "fluentd-address": receiver.address,
            "fluentd-request-ack": "true",
            "tag": "nstask.{{.Name}}",
            "container": "app",
        }
        name = runner.run("seq 1 5000; echo to-stderr >&2", log, options)
        deadline = time.monotonic() + 10
        while len(receiver.events) < 5001 and time.monotonic() < deadline:
            time.sleep(0.05)
    out = [e.record["log"] for e in receiver.events if e.record["source"] == "stdout"]
    assert out == [str(i) for i in range(1, 5001)]
    assert {e.tag for e in receiver.events} == {"nstask.app"}
    assert {e.record["container_id"] for e in receiver.events} == {name}
    assert receiver.acks_sent == 5001
    assert _stats(log)["written_lines"] == 5001


def test_non_blocking_with_fluentd_down_never_holds_the_container(
    runner: Runner, tmp_path: Path
) -> None:
    log = tmp_path / "c.log"
    options = {
        "driver": "fluentd",
        "fluentd-address": "127.0.0.1:9",  # discard port: nothing listens
        "fluentd-async": "true",
        "mode": "non-blocking",
        "max-buffer-size": "256k",
    }
    started = time.monotonic()
    runner.run("seq 1 200000", log, options, timeout=60)
    assert time.monotonic() - started < 30
    stats = _stats(log)
    assert stats["lines"] == 200_000
    assert stats["dropped_lines"] == 200_000 and stats["sink_errors"] > 0


def test_shim_killed_mid_stream_leaves_the_container_running_and_stoppable(
    runner: Runner, tmp_path: Path
) -> None:
    log = tmp_path / "c.log"
    name = runner.start("i=0; while true; do echo $i; i=$((i+1)); done", log)
    deadline = time.monotonic() + 10
    while not log.exists() or log.stat().st_size < 10_000:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = _stats(log)["pid"]
    subprocess.run(["kill", "-KILL", str(pid)], check=True)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists():  # reaped by containerd's shim
        assert time.monotonic() < deadline, "the killed shim is still there"
        time.sleep(0.05)
    # The container lives on: its output goes into the pipe the runc shim holds open.
    assert runner.status(name) == "RUNNING"
    started = time.monotonic()
    runner.remove(name)
    assert time.monotonic() - started < 10
    assert runner.status(name) == "GONE"
    assert next(iter(read_entries(str(log)))).log == "0\n"  # what was logged before is intact
