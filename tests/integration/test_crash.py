"""The agent killed (SIGKILL) at every step of a task's life: the next agent finishes or
rolls back what was half done, and nothing is leaked."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import launch_agent, start_agent, stop_agent
from support import busybox_task, leaks, write_taskdef

START_POINTS = [
    "netns",
    "cni.nstask-bridge",
    "cni.portmap",
    "cni.firewall",
    "cni",
    "images",
    "container",
    "task",
    "started",
]
STOP_POINTS = ["stop", "teardown"]
SCRIPT = "trap 'exit 0' TERM; echo up; while true; do sleep 0.1; done"


@pytest.mark.parametrize("point", START_POINTS + STOP_POINTS)
def test_agent_killed_at_a_step_leaves_a_managed_or_clean_task(tmp_path: Path, point: str) -> None:
    # No warm pool: the task makes its own netns and attachment, so every network fault
    # point is on its path (a pooled attachment skips them).
    a, proc, base = start_agent(extra_env={"NSTASK_FAULT": point, "NSTASK_WARM_POOL_SIZE": "0"})
    try:
        td = write_taskdef(tmp_path, busybox_task("crashy", ["sh", "-c", SCRIPT]))
        task_id = a.cli("run", "-d", td, check=True).stdout.strip()
        if point in STOP_POINTS:
            a.wait_status(task_id, "RUNNING")
            a.cli("stop", task_id)  # the agent dies while stopping
        assert proc.wait(timeout=30) == -9, f"the agent did not reach fault point {point}"
        args, env = a.launch
        a.launch = (args, {k: v for k, v in env.items() if k != "NSTASK_FAULT"})
        proc = launch_agent(a)
        # The task ends up running and managed, or stopped and cleaned up.
        deadline = time.monotonic() + 30
        t = a.inspect(task_id)
        while t["lastStatus"] not in ("RUNNING", "STOPPED"):
            assert time.monotonic() < deadline, t
            time.sleep(0.1)
            t = a.inspect(task_id)
        if t["lastStatus"] == "RUNNING":
            assert "up" in a.cli("logs", task_id, check=True).stdout
            a.cli("stop", task_id, check=True)
            t = a.inspect(task_id)
        assert t["lastStatus"] == "STOPPED"
        if point in START_POINTS[:-1]:
            assert "agent restarted" in t["stopReason"]
        assert not leaks(a)
        a.cli("rm", task_id, check=True)
    finally:
        stop_agent(a, proc, base)
