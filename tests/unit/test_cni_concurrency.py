"""CNIRuntime's locking: attachments in parallel, one attachment at a time, GC alone (no root).

A fake plugin at the exec seam records how many plugin runs overlap, per attachment and in
all; the runtime's locks must let different attachments overlap (issue 10: one host-wide
lock held a host to about 7 tasks/s) and never two operations on one attachment (the spec's
rule), and GC overlaps nothing.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from cni.runtime import CNIRuntime

CONFLIST = {"cniVersion": "1.0.0", "name": "testnet", "plugins": [{"type": "slow"}]}


class OverlapExec:
    """Each run sleeps a little and records the overlap it saw."""

    def __init__(self, delay: float = 0.03) -> None:
        self.delay = delay
        self.guard = threading.Lock()
        self.running: Counter[str] = Counter()
        self.total = 0
        self.most_total = 0
        self.most_per_attachment = 0
        self.during_gc_overlap = False
        self.gc_running = False

    def run(
        self,
        path: str,
        env: dict[str, str],
        stdin: bytes,
        *,
        cancel: threading.Event | None = None,
    ) -> tuple[int, bytes, bytes]:
        key = env.get("CNI_CONTAINERID", "") + "/" + env.get("CNI_IFNAME", "")
        with self.guard:
            self.running[key] += 1
            self.total += 1
            self.most_total = max(self.most_total, self.total)
            self.most_per_attachment = max(self.most_per_attachment, self.running[key])
        time.sleep(self.delay)
        with self.guard:
            self.running[key] -= 1
            self.total -= 1
        if env["CNI_COMMAND"] == "ADD":
            conf = json.loads(stdin)
            return 0, json.dumps({"cniVersion": conf["cniVersion"], "ips": []}).encode(), b""
        return 0, b"", b""


@pytest.fixture
def runtime(tmp_path: Path) -> tuple[CNIRuntime, OverlapExec]:
    d = tmp_path / "bin"
    d.mkdir()
    (d / "slow").write_text("#!/bin/sh\n")
    (d / "slow").chmod(0o755)
    fake = OverlapExec()
    rt = CNIRuntime(
        conflist=CONFLIST,
        cache_dir=str(tmp_path / "cache"),
        cni_path=[str(d)],
        lock_path=str(tmp_path / "run" / "cni.lock"),
        exec=fake,
    )
    return rt, fake


def _in_threads(n: int, fn: object) -> None:
    assert callable(fn)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            fn(i)
        except BaseException as exc:  # collected and re-raised in the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_adds_of_different_attachments_run_in_parallel(
    runtime: tuple[CNIRuntime, OverlapExec],
) -> None:
    rt, fake = runtime
    t0 = time.monotonic()
    _in_threads(8, lambda i: rt.add(f"c{i}", "/run/netns/x"))
    took = time.monotonic() - t0
    assert fake.most_total > 1, "ADDs of different containers never overlapped"
    assert took < 8 * fake.delay, f"8 ADDs took {took:.3f} s: serialized"
    _in_threads(8, lambda i: rt.delete(f"c{i}", "/run/netns/x"))
    assert rt.cache.entries() == []


def test_operations_on_one_attachment_never_overlap(
    runtime: tuple[CNIRuntime, OverlapExec], tmp_path: Path
) -> None:
    rt, fake = runtime

    def churn(i: int) -> None:
        for _ in range(5):
            if i % 2:
                rt.add("same", "/run/netns/x")
            else:
                rt.delete("same", "/run/netns/x")

    _in_threads(4, churn)
    assert fake.most_per_attachment == 1
    # The attachment's lock file exists only while held: none piles up.
    assert os.listdir(tmp_path / "run" / "cni.lock.d") == []


def test_gc_runs_alone(runtime: tuple[CNIRuntime, OverlapExec]) -> None:
    rt, fake = runtime
    for i in range(4):
        rt.add(f"stale{i}", "/run/netns/x")
    seen: list[int] = []
    real_run = fake.run

    def watching_run(
        path: str,
        env: dict[str, str],
        stdin: bytes,
        *,
        cancel: threading.Event | None = None,
    ) -> tuple[int, bytes, bytes]:
        if env.get("CNI_CONTAINERID", "").startswith("stale"):
            with fake.guard:
                seen.append(fake.total)
        return real_run(path, env, stdin, cancel=cancel)

    fake.run = watching_run  # type: ignore[method-assign]
    stop = threading.Event()

    def adds(i: int) -> None:
        if i == 0:
            rt.gc([])
            stop.set()
            return
        n = 0
        while not stop.is_set():
            rt.add(f"live{i}-{n}", "/run/netns/x")
            n += 1

    _in_threads(4, adds)
    assert seen and all(n == 0 for n in seen), f"GC's DELs overlapped other operations: {seen}"
