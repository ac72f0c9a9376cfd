"""`nstask stop` of a task that is still starting cancels the start wherever it is (a
dependsOn wait, a HEALTHY wait, an image pull, a slow CNI plugin), returns promptly, and
leaves the task STOPPED with the user's reason and nothing on the host (issue 10, item 2)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

from conftest import start_agent, stop_agent
from support import (
    TEST_IMAGE,
    WAIT_FOREVER,
    Agent,
    bridge_conflist,
    busybox_task,
    leaks,
    write_taskdef,
)

# The stop of a start in flight returns within this (the CLI itself takes ~0.3 s).
PROMPT_S = 5.0


def _container(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": TEST_IMAGE, "command": ["sh", "-c", script], **extra}


def _until(agent: Agent, task_id: str, what: str, ok: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        t = agent.inspect(task_id)
        if ok(t):
            return
        assert time.monotonic() < deadline, f"task {task_id} never reached {what}: {t}"
        time.sleep(0.05)


def _container_status(t: dict[str, Any], name: str) -> str:
    return next(str(c["lastStatus"]) for c in t["containers"] if c["name"] == name)


def _stop_promptly(agent: Agent, task_id: str) -> dict[str, Any]:
    t0 = time.monotonic()
    r = agent.cli("stop", "-t", "1", task_id, timeout=60)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert took < PROMPT_S, f"stop took {took:.1f} s"
    t = agent.inspect(task_id)
    assert t["lastStatus"] == "STOPPED"
    assert t["stopReason"] == "Task stopped by user"
    return t


def _dependent_task(family: str, dependency: dict[str, Any], condition: str) -> dict[str, Any]:
    return {
        "family": family,
        "containerDefinitions": [
            dependency,
            _container(
                "app",
                "echo app started",
                dependsOn=[{"containerName": dependency["name"], "condition": condition}],
            ),
        ],
    }


def test_stop_during_a_depends_on_wait(agent: Agent, tmp_path: Path) -> None:
    dep = _container("setup", WAIT_FOREVER, essential=False, startTimeout=120)
    td = write_taskdef(tmp_path, _dependent_task("waits-complete", dep, "COMPLETE"))
    task_id = agent.cli("run", "-d", td, check=True).stdout.strip()
    _until(agent, task_id, "setup RUNNING", lambda t: _container_status(t, "setup") == "RUNNING")
    t = _stop_promptly(agent, task_id)
    app = next(c for c in t["containers"] if c["name"] == "app")
    assert app.get("startedAt") is None  # it never started
    setup = next(c for c in t["containers"] if c["name"] == "setup")
    assert setup["exitCode"] == 0  # stopped by its stop signal, not killed
    assert not leaks(agent)
    agent.cli("rm", task_id, check=True)


def test_stop_during_a_healthy_wait(agent: Agent, tmp_path: Path) -> None:
    never_healthy = {
        "command": ["CMD-SHELL", "false"],
        "interval": 5,
        "timeout": 2,
        "retries": 10,
        "startPeriod": 100,
    }
    dep = _container(
        "db", WAIT_FOREVER, essential=False, startTimeout=120, healthCheck=never_healthy
    )
    td = write_taskdef(tmp_path, _dependent_task("waits-healthy", dep, "HEALTHY"))
    task_id = agent.cli("run", "-d", td, check=True).stdout.strip()
    _until(agent, task_id, "db RUNNING", lambda t: _container_status(t, "db") == "RUNNING")
    t = _stop_promptly(agent, task_id)
    db = next(c for c in t["containers"] if c["name"] == "db")
    assert db["health"] != "HEALTHY"
    assert not leaks(agent)
    agent.cli("rm", task_id, check=True)


def test_stop_during_an_image_pull(agent: Agent, tmp_path: Path) -> None:
    """A registry that accepts the connection and never answers: the pull waits."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.1)
    port = srv.getsockname()[1]
    held: list[socket.socket] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        d = busybox_task("pulls", ["true"])
        d["containerDefinitions"][0]["image"] = f"127.0.0.1:{port}/nstask/hangs:1"  # type: ignore[index]
        task_id = agent.cli("run", "-d", write_taskdef(tmp_path, d), check=True).stdout.strip()
        deadline = time.monotonic() + 20
        while not held:
            assert time.monotonic() < deadline, "the pull never reached the registry"
            time.sleep(0.05)
        assert agent.inspect(task_id)["lastStatus"] == "PENDING"
        _stop_promptly(agent, task_id)
        assert not leaks(agent)
        agent.cli("rm", task_id, check=True)
    finally:
        done.set()
        server.join()
        for conn in held:
            conn.close()
        srv.close()


def test_stop_while_a_slow_cni_plugin_runs(tmp_path: Path) -> None:
    plugin_dir = tmp_path / "cni-bin"
    plugin_dir.mkdir()
    marker = tmp_path / "slow-plugin-running"
    slow = plugin_dir / "nstask-test-slow"
    slow.write_text(
        "#!/bin/sh\n"
        'if [ "$CNI_COMMAND" = VERSION ]; then\n'
        '  echo \'{"cniVersion":"1.0.0","supportedVersions":["1.0.0"]}\'; exit 0\nfi\n'
        "conf=$(cat)\n"
        'if [ "$CNI_COMMAND" = ADD ]; then\n'
        f"  touch {marker}\n"
        "  sleep 30\n"
        "fi\n"
        # Pass the previous result on (a chained plugin's ADD), nothing for DEL.
        'if [ "$CNI_COMMAND" = ADD ]; then\n'
        '  echo "$conf" | sed -n \'s/.*"prevResult":\\(.*\\)}$/\\1/p\'\nfi\n'
        "exit 0\n"
    )
    slow.chmod(0o755)

    def conflist(a: Agent) -> dict[str, object]:
        return bridge_conflist(a, {"type": "nstask-test-slow"})

    a, proc, base = start_agent(conflist_for=conflist, cni_path=f"{plugin_dir}:/usr/lib/cni")
    try:
        td = write_taskdef(tmp_path, busybox_task("slow-net", ["sh", "-c", WAIT_FOREVER]))
        task_id = a.cli("run", "-d", td, check=True).stdout.strip()
        deadline = time.monotonic() + 20
        while not marker.exists():
            assert time.monotonic() < deadline, "the slow plugin never ran"
            time.sleep(0.05)
        _stop_promptly(a, task_id)
        assert not leaks(a)
    finally:
        stop_agent(a, proc, base)
