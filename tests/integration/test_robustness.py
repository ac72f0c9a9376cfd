"""Robustness: gc of leftovers, concurrency, agent shutdown modes, a small churn."""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import launch_agent, start_agent, stop_agent
from support import WAIT_FOREVER, Agent, busybox_task, ctr, leaks, write_taskdef


def test_gc_finds_and_removes_leftovers_nobody_owns(tmp_path: Path) -> None:
    a, proc, base = start_agent()
    try:
        # Leftovers as a crash before any intent was recorded would leave them:
        fake = "f" * 32
        subprocess.run(["ip", "netns", "add", a.netns_prefix + fake], check=True)
        (a.state_dir / "logs" / fake).mkdir(parents=True)
        (a.state_dir / "tasks" / fake).mkdir(parents=True)
        # ...and a task that is running, which gc must not touch.
        td = write_taskdef(tmp_path, busybox_task("keeper", ["sh", "-c", WAIT_FOREVER]))
        task_id = a.cli("run", "-d", td, check=True).stdout.strip()
        a.wait_status(task_id, "RUNNING")
        dry = json.loads(a.cli("gc", "--dry-run", "--json", check=True).stdout)
        assert {(i["kind"], i["status"]) for i in dry} == {
            ("netns", "would remove"),
            ("logs", "would remove"),
            ("taskdir", "would remove"),
        }
        assert all(task_id not in i["name"] for i in dry)
        assert (
            a.netns_prefix + fake
            in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        )
        done = a.cli("gc", check=True).stdout
        assert "removed: netns" in done and "removed: logs" in done
        assert "nothing to collect" in a.cli("gc", check=True).stdout
        assert a.inspect(task_id)["lastStatus"] == "RUNNING"
        a.cli("stop", task_id, check=True)
        a.cli("rm", task_id, check=True)
    finally:
        subprocess.run(["ip", "netns", "del", a.netns_prefix + fake], capture_output=True)
        stop_agent(a, proc, base)


def test_fifty_tasks_at_once_get_distinct_addresses_and_leave_nothing(
    agent: Agent, tmp_path: Path
) -> None:
    td = write_taskdef(tmp_path, busybox_task("many", ["sh", "-c", WAIT_FOREVER]))
    with ThreadPoolExecutor(50) as pool:
        ids = list(
            pool.map(lambda _: agent.cli("run", "-d", td, check=True).stdout.strip(), range(50))
        )
    tasks = [agent.wait_status(t, "RUNNING", timeout=120) for t in ids]
    ips = [t["ip"] for t in tasks]
    assert len(set(ips)) == 50
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(agent.subnet) for ip in ips)
    with ThreadPoolExecutor(50) as pool:
        list(pool.map(lambda t: agent.cli("stop", t, check=True), ids))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda t: agent.cli("rm", t, check=True), ids))
    assert not leaks(agent)
    assert not ctr(agent.namespace, "containers", "ls", "-q").strip()


def test_stop_tasks_on_exit_stops_them_and_cleans_up(tmp_path: Path) -> None:
    a, proc, base = start_agent()
    args, env = a.launch
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    a.launch = ([*args, "--stop-tasks-on-exit"], env)
    proc = launch_agent(a)
    try:
        td = write_taskdef(tmp_path, busybox_task("stopme", ["sh", "-c", WAIT_FOREVER]))
        task_id = a.cli("run", "-d", td, check=True).stdout.strip()
        a.wait_status(task_id, "RUNNING")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not ctr(a.namespace, "tasks", "ls").splitlines()[1:]
        a.launch = (args, env)
        proc = launch_agent(a)
        t = a.inspect(task_id)
        assert t["lastStatus"] == "STOPPED"
        assert t["stopReason"] == "Agent stopped with --stop-tasks-on-exit"
        assert not leaks(a)
    finally:
        stop_agent(a, proc, base)


def test_churn_of_short_tasks_leaves_nothing(agent: Agent) -> None:
    """The CI-sized version of bench/churn.py: 100 short tasks at concurrency 8."""
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parents[2] / "bench" / "churn.py"),
            "--tasks",
            "100",
            "--concurrency",
            "8",
            "--socket",
            agent.socket,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "failed: 0" in proc.stdout
    assert not leaks(agent)
