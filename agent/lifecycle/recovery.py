"""Recovery at agent start: finish what a previous agent left. A task that runs is
re-attached (exit waits, health checks) and gets the stop it was owed; a half-started or
half-stopped task is stopped; resources of stopped or forgotten tasks are removed. Each
task is bounded in time, and one whose record cannot be processed is stopped with the
reason: it never keeps the agent from starting (issue 9)."""

from __future__ import annotations

import asyncio
import time

import structlog

from agent.errors import InvalidInput, NstaskError
from agent.lifecycle import running, teardown
from agent.lifecycle.accept import has_check
from agent.lifecycle.runtime import RUNNING, STOPPED, Context
from agent.store import TaskRecord
from agent.taskdef import MAX_CONTAINERS, HealthCheck, parse_task_definition
from agent.warmpool import is_pool_id

log = structlog.get_logger("nstask.engine")
RECOVER_TASK_TIMEOUT = 30.0


async def recover(ctx: Context, *, task_timeout: float = RECOVER_TASK_TIMEOUT) -> None:
    for stored in ctx.store.list_tasks():
        try:
            await asyncio.wait_for(recover_task(ctx, stored.id), task_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # one task's record, whatever is wrong with it
            why = str(e) or type(e).__name__
            if isinstance(e, TimeoutError):
                why = f"recovery took longer than {task_timeout:g} s"
            reason = f"the agent could not recover the task: {why}"
            log.error(
                "task_recovery_failed",
                task=stored.id,
                error=why,
                exc_info=e if not isinstance(e, NstaskError | TimeoutError) else None,
            )
            task = ctx.get(stored.id)
            if task.last_status != STOPPED:
                task.desired_status = STOPPED
                task.stop_reason = task.stop_reason or reason
                ctx.save(task)
                ctx.stop_soon(task.id, reason, timeout=0)
    for r in ctx.store.resources():
        # Warm pool entries have no task: the pool adopts or removes them when it starts.
        if ctx.store.get_task(r.task_id) is None and not is_pool_id(r.task_id):
            try:
                await teardown.remove(ctx, r.kind, r.key, r.data)
                ctx.store.removed(r.kind, r.key)
            except NstaskError as e:
                log.error("orphan_removal_failed", kind=r.kind, key=r.key, error=str(e))


def health_plan(task: TaskRecord) -> dict[str, HealthCheck]:
    """The health checks stored at submit. A task stored by an older agent has none stored:
    they come from its definition, and if today's parser refuses that, the task is
    re-attached without health checks (logged) rather than not at all."""
    plan = task.overrides.get("health")
    if isinstance(plan, dict):
        return {
            name: HealthCheck(
                command=tuple(h["command"]),
                interval=int(h["interval"]),
                timeout=int(h["timeout"]),
                retries=int(h["retries"]),
                start_period=int(h["startPeriod"]),
            )
            for name, h in plan.items()
        }
    try:
        td = parse_task_definition(task.definition, source=task.source)
    except NstaskError as e:
        log.warning("health_plan_fallback", task=task.id, error=str(e))
        return {}
    return {
        c.name: c.health_check for c in td.containers if c.health_check is not None and has_check(c)
    }


async def recover_task(ctx: Context, task_id: str) -> None:
    task = ctx.get(task_id)
    if task.last_status == STOPPED:
        if ctx.store.resources(task.id):
            await teardown.teardown(ctx, task)
        return
    if len(task.containers) > MAX_CONTAINERS:
        # Stored by an older agent without today's limits: not re-attached one container
        # at a time (2,000 of them held the agent's start for minutes, issue 9); stopped.
        raise InvalidInput(
            f"it has {len(task.containers)} containers; a task has at most {MAX_CONTAINERS}"
        )
    rt = ctx.runtimes.ensure(task)
    if task.last_status == RUNNING and task.desired_status == RUNNING:
        checks = health_plan(task)
        for c in task.containers:
            if c.last_status != RUNNING:
                continue
            info = await ctx.client.get_task(c.containerd_id)
            running.watch(ctx, rt, c)
            if info is None or info.status in ("stopped", "STOPPED"):
                code = info.exit_status if info is not None else 255
                running.exited(ctx, c.containerd_id, code, time.time())
                continue
            check = checks.get(c.name)
            ctr = await ctx.client.get_container(c.containerd_id) if check else None
            if check is not None and ctr is not None and ctr.spec:
                running.start_health(ctx, rt, c, check, dict(ctr.spec["process"]))
        log.info("task_reattached", task=task.id)
        # Decisions the previous agent had taken, or owed, when it died (issue 9: an
        # essential exit recorded just before a crash left the task RUNNING for good).
        reason = running.owed_stop(task)
        if reason is not None:
            ctx.stop_soon(task.id, reason)
        return
    reason = task.stop_reason or f"agent restarted while the task was {task.last_status}"
    ctx.stop_soon(task.id, reason, timeout=0)
