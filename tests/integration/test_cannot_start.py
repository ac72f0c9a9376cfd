"""A container that cannot start (its command is not in the image: runc refuses it), on the
real stack (issue 12): a non-essential one ends STOPPED with ECS's CannotStartContainerError
reason while the essential containers run on; its dependents can never start (as the ECS
agent decides: "dependency will never start"); an essential one stops the task with that
reason."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from support import TEST_IMAGE, Agent, leaks, write_taskdef

LOOP = "trap 'exit 0' TERM; while true; do sleep 0.1; done"


def _c(name: str, command: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": TEST_IMAGE, "essential": True, "command": command, **extra}


def _by_name(t: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in t["containers"]}


def test_a_non_essential_container_that_cannot_start_does_not_fail_the_task(
    agent: Agent, tmp_path: Path
) -> None:
    td: dict[str, object] = {
        "family": "cannot-start",
        "containerDefinitions": [
            _c("broken", ["/no/such/binary"], essential=False),
            _c(
                "after-start",
                ["sh", "-c", "echo after-start-ran"],
                essential=False,
                dependsOn=[{"containerName": "broken", "condition": "START"}],
            ),
            _c(
                "after-complete",
                ["sh", "-c", "echo after-complete-ran"],
                essential=False,
                dependsOn=[{"containerName": "broken", "condition": "COMPLETE"}],
            ),
            _c(
                "after-success",
                ["sh", "-c", "echo after-success-ran"],
                essential=False,
                dependsOn=[{"containerName": "broken", "condition": "SUCCESS"}],
            ),
            _c("app", ["sh", "-c", LOOP]),
        ],
    }
    task_id = agent.cli("run", "-d", write_taskdef(tmp_path, td), check=True).stdout.strip()
    try:
        t = agent.wait_status(task_id, "RUNNING")
        deadline = time.monotonic() + 20
        while any(c["lastStatus"] != "STOPPED" for n, c in _by_name(t).items() if n != "app"):
            assert time.monotonic() < deadline, t
            time.sleep(0.1)
            t = agent.inspect(task_id)
        cs = _by_name(t)
        assert cs["broken"]["reason"].startswith("CannotStartContainerError: "), cs["broken"]
        assert "/no/such/binary" in cs["broken"]["reason"]
        assert cs["broken"]["exitCode"] is None and cs["broken"]["startedAt"] is None
        # No condition can be met by a container that will never start (the ECS agent's
        # rule): its non-essential dependents end STOPPED without starting, with the why.
        for name in ("after-start", "after-complete", "after-success"):
            assert cs[name]["startedAt"] is None and cs[name]["exitCode"] is None, cs[name]
            assert "broken" in cs[name]["reason"] and "never started" in cs[name]["reason"]
        assert "-ran" not in agent.cli("logs", task_id, check=True).stdout
        # The essential container runs on, and so does the task.
        time.sleep(0.5)
        t = agent.inspect(task_id)
        assert t["lastStatus"] == "RUNNING" and _by_name(t)["app"]["lastStatus"] == "RUNNING"
    finally:
        agent.cli("stop", task_id)
        agent.wait_status(task_id, "STOPPED")
        agent.cli("rm", task_id)
    assert not leaks(agent)


def test_an_essential_container_that_cannot_start_stops_the_task_with_the_reason(
    agent: Agent, tmp_path: Path
) -> None:
    td: dict[str, object] = {
        "family": "cannot-start-essential",
        "containerDefinitions": [
            _c("side", ["sh", "-c", LOOP], essential=False),
            _c("app", ["/no/such/binary"]),
        ],
    }
    task_id = agent.cli("run", "-d", write_taskdef(tmp_path, td), check=True).stdout.strip()
    try:
        t = agent.wait_status(task_id, "STOPPED")
        assert t["stopReason"].startswith("CannotStartContainerError: "), t["stopReason"]
        assert "/no/such/binary" in t["stopReason"]
        cs = _by_name(t)
        assert cs["app"]["reason"].startswith("CannotStartContainerError: ")
        assert cs["side"]["lastStatus"] == "STOPPED"
    finally:
        agent.cli("rm", task_id)
    assert not leaks(agent)
