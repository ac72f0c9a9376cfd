"""Throughput of the logging shim with real containerd: json-file (and fluentd) vs file://.

    .venv/bin/python bench/logs.py [--mb 200] [--runs 3] [--fluentd-mb 100]

A busybox container writes MB megabytes of 1 KB lines (``yes <1023 chars> | head -c``) to
stdout. The same container runs with stdout going (a) to containerd's own ``file://`` log URI
(the shim copies raw bytes to a file: the baseline), (b) to nstask-shim-logger, json-file, and
(c) to nstask-shim-logger, fluentd, with a loopback receiver that reads and discards. Runs are
interleaved; each is timed from ``ctr run --rm`` to its return (the task is deleted by then, so
the logger has written everything). Prints median MB/s and the ratio to file://. Everything is
made in a namespace nstask-bench-<random> and removed at the end. Needs root.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parent.parent
SHIM = Path(sys.executable).parent / "nstask-shim-logger"
IMAGE = "nstask.local/busybox:latest"
ADDRESS = os.environ.get("NSTASK_CONTAINERD_ADDRESS", "/run/containerd/containerd.sock")


def _ctr(namespace: str, *args: str, check: bool = True) -> None:
    subprocess.run(
        ["ctr", "--address", ADDRESS, "-n", namespace, *args],
        check=check,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


class Discard:
    """A TCP server on loopback that reads and counts bytes (a fluentd that keeps up)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.received = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        with conn:
            while chunk := conn.recv(1 << 20):
                self.received += len(chunk)


def _run(namespace: str, uri: str, megabytes: int) -> float:
    """Seconds for one container writing ``megabytes`` MB of 1 KB lines through ``uri``."""
    name = f"nstask-bench-{random.randrange(16**8):08x}"
    script = f"yes \"$(head -c 1023 /dev/zero | tr '\\0' x)\" | head -c {megabytes * 1_000_000}"
    started = time.perf_counter()
    try:
        _ctr(namespace, "run", "--rm", "--log-uri", uri, IMAGE, name, "sh", "-c", script)
    finally:
        _ctr(namespace, "tasks", "rm", "-f", name, check=False)
        _ctr(namespace, "containers", "rm", name, check=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mb", type=int, default=200, help="MB per json-file/file:// run")
    parser.add_argument("--fluentd-mb", type=int, default=100, help="MB per fluentd run (0: skip)")
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    namespace = f"nstask-bench-{random.randrange(16**6):06x}"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_test_image.py"),
            *("--ref", IMAGE, "--address", ADDRESS, "--namespace", namespace),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    discard = Discard()
    results: dict[str, list[float]] = {"file://": [], "shim json-file": [], "shim fluentd": []}
    try:
        with tempfile.TemporaryDirectory(prefix="nstask-bench-") as tmp:
            for run in range(options.runs):
                plain = Path(tmp, f"plain-{run}.log")
                seconds = _run(namespace, f"file://{plain}", options.mb)
                results["file://"].append(options.mb / seconds)
                plain.unlink()
                log = Path(tmp, f"shim-{run}.log")
                query = urlencode({"driver": "json-file", "path": str(log)})
                seconds = _run(namespace, f"binary://{SHIM}?{query}", options.mb)
                results["shim json-file"].append(options.mb / seconds)
                log.unlink()
                if options.fluentd_mb:
                    query = urlencode(
                        {
                            "driver": "fluentd",
                            "path": str(Path(tmp, f"fluent-{run}.log")),
                            "fluentd-address": f"127.0.0.1:{discard.port}",
                        }
                    )
                    seconds = _run(namespace, f"binary://{SHIM}?{query}", options.fluentd_mb)
                    results["shim fluentd"].append(options.fluentd_mb / seconds)
    finally:
        discard.sock.close()
        _ctr(namespace, "images", "rm", "--sync", IMAGE, check=False)
        subprocess.run(
            ["ctr", "--address", ADDRESS, "namespaces", "rm", namespace], capture_output=True
        )
    base = statistics.median(results["file://"])
    print(f"1 KB lines, median of {options.runs} runs (MB/s of container output, ctr run --rm):")
    for label, values in results.items():
        if values:
            median = statistics.median(values)
            print(f"  {label:<16} {median:8.1f} MB/s   ratio to file:// {median / base:5.2f}x")


if __name__ == "__main__":
    main()
