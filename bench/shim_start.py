"""How much the logging shim adds to a container start, and how fast it writes json-file.

    .venv/bin/python bench/shim_start.py [-n 30] [--lines 100000]

Start-up: the shim is spawned N times exactly as containerd spawns it (console script, fds
3/4/5, two-variable environment) and timed from posix_spawn to the readiness byte. The
baseline is the same venv interpreter running ``-c pass`` with the same fds and environment,
timed to the EOF of its readiness pipe (its exit), ``-c "os.write(5, b'R')"`` timed to
its byte, and ``python -I -S -c pass`` (no ``site``): the floor for any Python program, which
the shim's target (<= 1.5x) is measured against. Runs are interleaved so
machine noise hits all three. Also: the RSS of a running shim (/proc), and
throughput for 1 KB lines, through the real shim (pipe -> file) and for the writer alone.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from shim.harness import spawn_logger, uri_args
from shim.jsonfile import JsonFileWriter

VENV_BIN = Path(sys.executable).parent
SHIM = str(VENV_BIN / "nstask-shim-logger")
PYTHON = str(VENV_BIN / "python")


def _time_shim(
    log_dir: str, index: int, extra: dict[str, str] | None = None, *, shim: str = SHIM
) -> tuple[float, int]:
    """Seconds from spawn to readiness for one shim, and its RSS (KiB) while idle."""
    path = os.path.join(log_dir, f"c{index}", "c-json.log")
    query = {"driver": "json-file", "path": path, **(extra or {})}
    with spawn_logger([shim, *uri_args(query)]) as proc:
        if proc.wait_ready() != b"R":
            raise SystemExit(f"shim did not signal readiness: {proc.read_errors()}")
        elapsed = time.perf_counter() - proc.started
        rss = _rss_kib(proc.pid)
        proc.close_stdout()
        proc.close_stderr()
        if proc.wait() != 0:
            raise SystemExit("shim exited non-zero")
    return elapsed, rss


BASELINE_PASS = "pass"
BASELINE_READY = "import os; os.write(5, b'R')"


def _time_baseline(code: str, *, isolated: bool = False) -> float:
    """Seconds from spawn to the readiness pipe's first byte or EOF for ``python -c code``
    (``python -I -S -c code`` when isolated: no site, the floor for any Python program)."""
    flags = ["-I", "-S"] if isolated else []
    with spawn_logger([PYTHON, *flags, "-c", code]) as proc:
        proc.wait_ready()
        elapsed = time.perf_counter() - proc.started
        proc.wait()
    return elapsed


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _discard_server() -> socket.socket:
    """A loopback TCP listener whose connections are read and discarded (a fast fluentd)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)

    def drain(conn: socket.socket) -> None:
        with conn:
            while conn.recv(1 << 20):
                pass

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=drain, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server


def _shim_throughput(
    log_dir: str, lines: int, extra: dict[str, str] | None = None, *, shim: str = SHIM
) -> float:
    """MB/s of container output through a running shim, 1 KB lines, spawn excluded."""
    path = os.path.join(log_dir, "throughput", "c-json.log")
    line = (b"x" * 1023) + b"\n"
    batch = line * 64
    with spawn_logger([shim, *uri_args({"path": path, **(extra or {})})]) as proc:
        proc.wait_ready()

        def stderr_trickle() -> None:
            os.write(proc.stderr, b"a stderr line\n")
            proc.close_stderr()

        threading.Thread(target=stderr_trickle).start()
        start = time.perf_counter()
        for _ in range(lines // 64):
            view = memoryview(batch)
            while view:
                view = view[os.write(proc.stdout, view) :]
        proc.close_stdout()
        proc.wait(timeout=120)
        elapsed = time.perf_counter() - start
    return (lines // 64) * len(batch) / elapsed / 1e6


def _writer_throughput(log_dir: str, lines: int) -> float:
    """MB/s of the json-file writer alone (format + write), 1 KB lines, 64 per flush."""
    text = "x" * 1023 + "\n"
    start = time.perf_counter()
    with JsonFileWriter(os.path.join(log_dir, "writer.log")) as writer:
        for index in range(lines):
            writer.add("stdout", text, time.time_ns())
            if index % 64 == 63:
                writer.flush()
    return lines * len(text) / (time.perf_counter() - start) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=30, help="start-ups to time (default 30)")
    parser.add_argument("--lines", type=int, default=100_000, help="1 KB lines for throughput")
    parser.add_argument("--shim", default=SHIM, help=f"the shim to time (default {SHIM})")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nstask-bench-") as log_dir:
        shim = options.shim
        _time_shim(log_dir, -1, shim=shim)  # warm the page cache for both
        _time_baseline(BASELINE_PASS)
        shim_times, pass_times, ready_times, floor_times, rss = [], [], [], [], []
        for index in range(options.n):
            elapsed, kib = _time_shim(log_dir, index, shim=shim)
            shim_times.append(elapsed)
            rss.append(kib)
            pass_times.append(_time_baseline(BASELINE_PASS))
            ready_times.append(_time_baseline(BASELINE_READY))
            floor_times.append(_time_baseline(BASELINE_PASS, isolated=True))
        shim_ms = statistics.median(shim_times) * 1000
        print(f"start-up, median of {options.n} (spawn -> readiness):")
        print(f"  nstask-shim-logger           {shim_ms:7.2f} ms")
        for label, times in (
            ("python -c pass (to exit)", pass_times),
            ("python -c os.write(5) (byte)", ready_times),
            ("python -I -S -c pass (exit)", floor_times),
        ):
            base_ms = statistics.median(times) * 1000
            print(
                f"  {label:<28} {base_ms:7.2f} ms   shim/baseline {shim_ms / base_ms:5.2f}x"
                f" ({shim_ms - base_ms:+.2f} ms)"
            )
        print(f"  idle shim RSS                {statistics.median(rss) / 1024:7.1f} MiB")
        server = _discard_server()
        fluentd = {"driver": "fluentd", "fluentd-address": f"127.0.0.1:{server.getsockname()[1]}"}
        fluent_times, fluent_rss = [], []
        for index in range(options.n):
            elapsed, kib = _time_shim(log_dir, 1000 + index, fluentd, shim=shim)
            fluent_times.append(elapsed)
            fluent_rss.append(kib)
        print(
            f"  fluentd (connects first)     {statistics.median(fluent_times) * 1000:7.2f} ms"
            f"   RSS {statistics.median(fluent_rss) / 1024:5.1f} MiB"
        )
        shim_mb = _shim_throughput(log_dir, options.lines, shim=shim)
        writer_mb = _writer_throughput(log_dir, options.lines)
        fluent_mb = _shim_throughput(log_dir, options.lines, fluentd, shim=shim)
        server.close()
        print(f"throughput, {options.lines} lines of 1 KB:")
        print(f"  json-file through the shim (pipe -> file)     {shim_mb:7.1f} MB/s")
        print(f"  JsonFileWriter alone                          {writer_mb:7.1f} MB/s")
        print(f"  fluentd through the shim (pipe -> loopback)   {fluent_mb:7.1f} MB/s")


if __name__ == "__main__":
    main()
