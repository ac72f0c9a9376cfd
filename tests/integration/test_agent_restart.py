"""The agent stops without stopping its tasks; a new agent re-attaches to them."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from conftest import launch_agent, start_agent, stop_agent
from support import busybox_task, leaks, write_taskdef


def test_tasks_survive_an_agent_restart_and_are_managed_again(tmp_path: Path) -> None:
    a, proc, base = start_agent()
    try:
        td = busybox_task(
            "survivor", ["sh", "-c", "trap 'exit 0' TERM; echo up; while true; do sleep 0.1; done"]
        )
        task_id = a.cli("run", "-d", write_taskdef(tmp_path, td), check=True).stdout.strip()
        before = a.wait_status(task_id, "RUNNING")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        # The container kept running while no agent was there.
        assert (
            task_id
            in subprocess.run(
                ["ctr", "-n", a.namespace, "tasks", "ls"], capture_output=True, text=True
            ).stdout
        )
        proc = launch_agent(a)
        after = a.inspect(task_id)
        assert after["lastStatus"] == "RUNNING" and after["ip"] == before["ip"]
        # The re-attached agent sees the exit and cleans up everything.
        t0 = time.monotonic()
        a.cli("stop", task_id, check=True)
        assert time.monotonic() - t0 < 5
        stopped = a.inspect(task_id)
        assert stopped["lastStatus"] == "STOPPED" and stopped["exitCode"] == 0
        assert not leaks(a)
    finally:
        stop_agent(a, proc, base)
