"""Installed like a real tool (issue 14): `nstask agent status` / `agent stop`, the agent's name
in ps, `nstask version`, and `nstask info --check` on this host and against a dead containerd."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

from conftest import start_agent, stop_agent
from support import NSTASK, WAIT_FOREVER, Agent, busybox_task, write_taskdef
from test_daemon import _Detached


def _title(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode().split()


def _gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_agent_status_and_stop_leave_tasks_or_stop_them(tmp_path: Path) -> None:
    a, proc, base = start_agent()
    running: object = proc
    try:
        st = a.cli("agent", "status", "--json", check=True)
        status = json.loads(st.stdout)
        assert status["pid"] == proc.pid
        assert status["socket"] == a.socket
        assert status["stateDir"] == str(a.state_dir)
        assert status["namespace"] == a.namespace
        assert status["containerd"]["reachable"] is True
        assert status["containerd"]["version"]
        assert status["uptime"] >= 0
        human = a.cli("agent", "status", check=True).stdout
        assert f"pid {proc.pid}" in human and "reachable" in human
        # The agent shows as `nstask ... agent ...` in ps, not as python -c.
        title = _title(proc.pid)
        assert title[0] == "nstask" and "agent" in title, title

        td = write_taskdef(tmp_path, busybox_task("adminstop", ["sh", "-c", WAIT_FOREVER]))
        task_id = a.cli("run", "-d", td, check=True).stdout.strip()
        a.wait_status(task_id, "RUNNING")
        assert json.loads(a.cli("agent", "status", "--json", check=True).stdout)["tasks"] == {
            "RUNNING": 1
        }

        facts = json.loads(a.cli("info", "--json", check=True).stdout)
        assert facts["agent"]["pid"] == proc.pid and facts["agent"]["tasks"] == {"RUNNING": 1}
        assert facts["agent"]["images"] >= 1  # the test image
        assert facts["containerd"]["namespace"] == a.namespace
        assert facts["bridge"] == a.bridge and facts["subnet"] == a.subnet

        out = a.cli("agent", "stop", check=True)
        assert f"pid {proc.pid}" in out.stdout and "1 task(s) left running" in out.stdout
        assert proc.wait(timeout=5) == 0  # agent stop returned only once the agent had exited
        gone = a.cli("agent", "status")
        assert gone.returncode == 1 and "not running" in gone.stderr

        # Started again detached, as a user does: re-attaches, shows as nstask in ps, and
        # `agent stop --stop-tasks` stops the task before the agent.
        # Its log (state dir's agent.log) rotated by size: small here, so it rotates at once.
        args, env = a.launch
        env = {**env, "NSTASK_LOG_MAX_BYTES": "700", "NSTASK_LOG_MAX_FILES": "2"}
        out = subprocess.run(
            [*args, "--detach"], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        pid = int(out.stdout.strip())
        running = _Detached(pid)
        title = _title(pid)
        assert title[0] == "nstask" and "agent" in title and "--detach" not in title, title
        assert a.inspect(task_id)["lastStatus"] == "RUNNING"
        out = a.cli("agent", "stop", "--stop-tasks", check=True)
        assert f"stopped task {task_id}" in out.stdout
        assert _gone(pid, timeout=1)
        assert a.cli("agent", "status").returncode == 1
        logs = sorted(p.name for p in a.state_dir.glob("agent.log*"))
        assert logs == ["agent.log", "agent.log.1", "agent.log.2"], logs
        for name in logs:
            p = a.state_dir / name
            assert p.stat().st_size <= 700 + 2000 and (p.stat().st_mode & 0o777) == 0o600
        text = "".join((a.state_dir / n).read_text() for n in logs)
        assert "agent_stopping" in text  # the last lines went to the current file
    finally:
        stop_agent(a, running, base)  # type: ignore[arg-type]


def _nstask(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NSTASK, *args],
        env={**os.environ, "NSTASK_SOCKET": "/nonexistent/nstask.sock", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version_json_names_every_component() -> None:
    out = _nstask("version", "--json")
    assert out.returncode == 0, out.stderr
    v = json.loads(out.stdout)
    assert v["nstask"] == "0.1.0"
    ctr = subprocess.run(["ctr", "version"], capture_output=True, text=True, check=True).stdout
    assert f"Version:  {v['containerd']}" in ctr.split("Server:")[1]
    assert v["runc"] and v["runc"] in subprocess.check_output(["runc", "--version"], text=True)
    assert v["cniPlugins"] and v["cniPlugins"][0].isdigit()
    assert v["python"].startswith("3.")


def test_info_check_healthy_then_with_a_dead_containerd(tmp_path: Path) -> None:
    ok = _nstask("info", "--check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    facts = json.loads(_nstask("info", "--json").stdout)
    assert facts["cgroup"]["controllers"] and "memory" in facts["cgroup"]["controllers"]
    assert {"host-local", "portmap", "firewall"} <= set(facts["cni"]["plugins"])
    assert facts["iptables"]["backend"] in ("nf_tables", "legacy")
    assert facts["containerd"]["version"]

    # A socket that exists but nothing listens on (containerd died).
    dead = tmp_path / "containerd.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(dead))
    s.close()
    bad = _nstask("info", "--check", NSTASK_CONTAINERD_ADDRESS=str(dead))
    assert bad.returncode == 1
    assert f"containerd does not answer on {dead}" in bad.stdout
    assert "fix: start it: `systemctl start containerd`" in bad.stdout
    js = json.loads(
        _nstask("info", "--check", "--json", NSTASK_CONTAINERD_ADDRESS=str(dead)).stdout
    )
    assert [p["problem"].split(" (")[0] for p in js["problems"]] == [
        f"containerd does not answer on {dead}"
    ]


def _complete(a: Agent, words: str) -> list[str]:
    """What bash completion offers for the last word of `words` (click's bash_complete)."""
    parts = words.split(" ")
    out = subprocess.run(
        [NSTASK],
        env={
            **a.env(),
            "_NSTASK_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(parts) - 1),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return [line.partition(",")[2] for line in out.stdout.splitlines()]


def test_completion_offers_task_ids_and_container_names(agent: Agent, tmp_path: Path) -> None:
    td = write_taskdef(tmp_path, busybox_task("completeme", ["sh", "-c", WAIT_FOREVER]))
    task_id = agent.cli("run", "-d", td, check=True).stdout.strip()
    try:
        agent.wait_status(task_id, "RUNNING")
        assert task_id in _complete(agent, "nstask logs ")
        assert _complete(agent, f"nstask stop {task_id[:6]}") == [task_id]
        assert _complete(agent, f"nstask logs {task_id} ") == ["completeme"]
        assert _complete(agent, f"nstask inspect {task_id[:8]}") == [task_id]
        assert "agent" in _complete(agent, "nstask ag")
        assert {"status", "stop"} <= set(_complete(agent, "nstask agent st"))
    finally:
        agent.cli("stop", "-t", "0", task_id, check=True)
