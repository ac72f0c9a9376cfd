"""ECS's container restart policy (restartPolicy, issue 12 B): a container that exits with
a code its policy does not ignore is restarted in place (a new containerd task of the same
container, snapshot and logging) unless it ran less than restartAttemptPeriod seconds since
its last start, as ECS does. While it restarts, it is not STOPPED: an essential container
with a policy does not stop the task. Each restart is counted in its record (restartCount).

What a restart needs (the rootfs mounts, the logging URI and its options) is kept in memory
by the start that created the container; an agent restarted since cannot restart it, and
the exit is then recorded as without a policy."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from agent.lifecycle.runtime import RUNNING, Context, TaskRuntime
from agent.store import ContainerRecord, TaskRecord
from agent.taskdef import TaskDefinition

log = structlog.get_logger("nstask.engine")

Restarter = Callable[[], Awaitable[None]]
# containerd id -> how to start the container's task again; dropped at its final exit.
_RESTARTERS: dict[str, Restarter] = {}


def plan_of(td: TaskDefinition) -> dict[str, dict[str, Any]]:
    """The policies, kept with the task at submit (nothing re-parses the definition)."""
    return {
        c.name: {
            "ignoredExitCodes": list(c.restart_policy.ignored_exit_codes),
            "restartAttemptPeriod": c.restart_policy.restart_attempt_period,
        }
        for c in td.containers
        if c.restart_policy is not None
    }


def register(containerd_id: str, restarter: Restarter) -> None:
    _RESTARTERS[containerd_id] = restarter


def forget(containerd_id: str) -> None:
    _RESTARTERS.pop(containerd_id, None)


def wanted(task: TaskRecord, c: ContainerRecord, code: int, now: float) -> bool:
    """Whether the policy restarts this exit."""
    plan = (task.overrides.get("restart") or {}).get(c.name)
    if plan is None or task.desired_status != RUNNING:
        return False
    if code in plan["ignoredExitCodes"]:
        return False
    ran = now - (c.started_at or now)
    return ran >= plan["restartAttemptPeriod"] and c.containerd_id in _RESTARTERS


async def maybe_restart(
    ctx: Context, rt: TaskRuntime | None, task: TaskRecord, c: ContainerRecord, code: int
) -> bool:
    """Restart the container in place if its policy says so; False: record the exit."""
    if rt is None or not wanted(task, c, code, time.time()):
        forget(c.containerd_id)
        return False
    c.restart_count += 1
    ctx.save(task)
    log.info(
        "container_restarting",
        task=task.id,
        container=c.name,
        exit_code=code,
        restarts=c.restart_count,
    )
    try:
        await _RESTARTERS[c.containerd_id]()
    except Exception as e:
        log.error("container_restart_failed", task=task.id, container=c.name, error=str(e))
        forget(c.containerd_id)
        c.reason = f"restart failed: {e}"
        return False
    ctx.save(task)  # the new start time and pid (set by the restarter)
    return True
