"""containerd restarted while tasks run: the agent reconnects, catches the exit it missed,
keeps managing the task that still runs, and hands out no duplicate address."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import start_agent, stop_agent
from support import CTR_SOCK, WAIT_FOREVER, busybox_task, leaks, write_taskdef


def _containerd_pid() -> int:
    out = subprocess.run(["pidof", "containerd"], capture_output=True, text=True).stdout.split()
    assert len(out) == 1, f"expected one containerd, found {out}"
    return int(out[0])


def _answers() -> bool:
    return (
        subprocess.run(
            ["ctr", "--address", CTR_SOCK, "version"], capture_output=True, timeout=5
        ).returncode
        == 0
    )


def test_agent_survives_a_containerd_restart(tmp_path: Path) -> None:
    a, proc, base = start_agent()
    try:
        short = write_taskdef(
            tmp_path, busybox_task("short", ["sh", "-c", "sleep 3; exit 5"]), "short.json"
        )
        long = write_taskdef(
            tmp_path, busybox_task("long", ["sh", "-c", WAIT_FOREVER]), "long.json"
        )
        t_short = a.cli("run", "-d", short, check=True).stdout.strip()
        t_long = a.cli("run", "-d", long, check=True).stdout.strip()
        a.wait_status(t_short, "RUNNING")
        long_ip = a.wait_status(t_long, "RUNNING")["ip"]
        pid = _containerd_pid()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        os.kill(pid, signal.SIGTERM)  # the shims, and so the containers, keep running
        deadline = time.monotonic() + 20
        while Path(f"/proc/{pid}").exists():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(4)  # the short task exits while containerd is away
        with open("/var/log/nstask-containerd.log", "ab") as log:
            # setsid -f: containerd outlives this test, as the bootstrap started it.
            subprocess.run(
                ["setsid", "-f", *(x.decode() for x in argv)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                check=True,
            )
        deadline = time.monotonic() + 20
        while not _answers():
            assert time.monotonic() < deadline, "containerd did not come back"
            time.sleep(0.1)
        t = a.wait_status(t_short, "STOPPED", timeout=30)
        assert t["exitCode"] == 5
        assert a.inspect(t_long)["lastStatus"] == "RUNNING"
        # New tasks work, and get an address of their own.
        t_new = a.cli("run", "-d", long, check=True).stdout.strip()
        assert a.wait_status(t_new, "RUNNING")["ip"] != long_ip
        for t_id in (t_long, t_new):
            a.cli("stop", t_id, check=True)
            assert a.inspect(t_id)["exitCode"] == 0
        for t_id in (t_short, t_long, t_new):
            a.cli("rm", t_id, check=True)
        assert not leaks(a)
    finally:
        if not _answers():  # never leave the host without its containerd
            subprocess.run(
                ["bash", str(Path(__file__).parents[2] / "scripts/bootstrap.sh")],
                capture_output=True,
            )
        stop_agent(a, proc, base)


def test_a_stop_while_containerd_is_down_finishes_when_it_is_back(tmp_path: Path) -> None:
    a, proc, base = start_agent()
    try:
        waits = busybox_task("waits", ["sh", "-c", WAIT_FOREVER])
        task_id = a.cli("run", "-d", write_taskdef(tmp_path, waits), check=True).stdout.strip()
        a.wait_status(task_id, "RUNNING")
        pid = _containerd_pid()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while Path(f"/proc/{pid}").exists():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        failed = a.cli("stop", "-t", "1", task_id)
        assert failed.returncode == 1  # containerd is away: the teardown cannot finish now
        with open("/var/log/nstask-containerd.log", "ab") as log:
            subprocess.run(
                ["setsid", "-f", *(x.decode() for x in argv)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                check=True,
            )
        deadline = time.monotonic() + 20
        while not _answers():
            assert time.monotonic() < deadline, "containerd did not come back"
            time.sleep(0.1)
        # No further request: the agent retries the stop by itself.
        try:
            t = a.wait_status(task_id, "STOPPED", timeout=60)
        except AssertionError:
            print(a.log_tail(30))
            raise
        assert t["lastStatus"] == "STOPPED"
        a.cli("rm", task_id, check=True)
        assert not leaks(a)
    finally:
        if not _answers():
            subprocess.run(
                ["bash", str(Path(__file__).parents[2] / "scripts/bootstrap.sh")],
                capture_output=True,
            )
        stop_agent(a, proc, base)
