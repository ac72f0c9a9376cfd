"""Step 6, running: exits (containerd's event stream, with the Wait RPC as backup), OOM
events, health checks, and the decisions an exit or a health change leads to (an
essential container stopped: the task stops; a non-essential one: it runs on)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from agent import faults, health
from agent.containerd import TaskExit, TaskOOM
from agent.errors import ContainerdError, NotFound, TaskNotFound, Unavailable
from agent.lifecycle.runtime import RUNNING, STOPPED, Context, TaskRuntime, log_failure
from agent.store import ContainerRecord, TaskRecord
from agent.taskdef import HealthCheck

log = structlog.get_logger("nstask.engine")
OOM_REASON = "OutOfMemoryError: Container killed due to memory usage"
ESSENTIAL_EXITED = "Essential container in task exited"
ALL_EXITED = "All containers exited"
UNHEALTHY = "Task failed container health checks"
# containerd not answering now: the stream reconnects, the Wait is issued again.
TRANSIENT = (Unavailable, ContainerdError)


def owed_stop(task: TaskRecord) -> str | None:
    """The stop a running task is owed by what its containers' records say, if any."""
    if task.desired_status != RUNNING:
        return None
    if any(c.essential and c.last_status == STOPPED for c in task.containers):
        return ESSENTIAL_EXITED
    if any(c.essential and c.health == health.UNHEALTHY for c in task.containers):
        return UNHEALTHY
    if task.containers and all(c.last_status == STOPPED for c in task.containers):
        return ALL_EXITED
    return None


# -- exits ---------------------------------------------------------------------------------
def watch(ctx: Context, rt: TaskRuntime, c: ContainerRecord) -> None:
    """Register the exit wait before start, so an exit cannot be missed."""
    fut: asyncio.Future[tuple[int, float]] = asyncio.get_running_loop().create_future()
    rt.exits[c.containerd_id] = fut
    task_id, name = rt.task.id, c.name

    def on_exit(f: asyncio.Future[tuple[int, float]]) -> None:
        if not f.cancelled():
            code, at = f.result()
            ctx.spawn(container_exited(ctx, task_id, name, code, at))

    fut.add_done_callback(on_exit)
    wait_again(ctx, rt, c.containerd_id)


def wait_again(ctx: Context, rt: TaskRuntime, containerd_id: str) -> None:
    w = asyncio.ensure_future(_wait_rpc(ctx, containerd_id))
    rt.watchers.add(w)
    w.add_done_callback(rt.watchers.discard)


async def _wait_rpc(ctx: Context, containerd_id: str) -> None:
    """Tasks.Wait: returns at the exit, or at once for a task that already exited."""
    try:
        st = await ctx.client.wait_task(containerd_id)
    except NotFound:
        return  # deleted: its exit was seen, or teardown records it
    except TRANSIENT as e:
        # containerd went away; catch_up waits again once it answers.
        log.debug("wait_lost", container=containerd_id, error=str(e))
        return
    exited(ctx, containerd_id, st.code, st.exited_at)


def exited(ctx: Context, containerd_id: str, code: int, at: float) -> None:
    rt = ctx.runtimes.of_container(containerd_id)
    fut = rt.exits.get(containerd_id) if rt is not None else None
    if fut is not None and not fut.done():
        fut.set_result((code, at))


def _catch_up(ctx: Context) -> None:
    """After containerd came back: wait again on every container we think runs, so an
    exit that happened while containerd was away is seen (Wait answers it at once)."""
    for rt in ctx.runtimes:
        for c in rt.task.containers:
            if c.last_status == RUNNING and c.exit_code is None:
                wait_again(ctx, rt, c.containerd_id)


async def watch_events(ctx: Context, subscribed: asyncio.Event) -> None:
    """containerd's event stream is the main source of exits (the Wait RPC is the backup).
    It reconnects while containerd does not answer; any other error ends it, logged."""
    delay = 0.5
    lost = False
    ns = ctx.client.namespace
    while True:
        try:
            stream = ctx.client.subscribe(
                [
                    f'topic=="/tasks/exit",namespace=="{ns}"',
                    f'topic=="/tasks/oom",namespace=="{ns}"',
                ]
            )
            subscribed.set()
            async for ev in stream:
                if lost:
                    log.info("event_stream_restored")
                    lost = False
                    _catch_up(ctx)
                p = ev.payload
                # The init process's exit (exec'd processes have ids of their own).
                if isinstance(p, TaskExit) and p.id in ("", p.container_id):
                    exited(ctx, p.container_id, p.exit_status, p.exited_at)
                elif isinstance(p, TaskOOM):
                    rt = ctx.runtimes.of_container(p.container_id)
                    if rt is not None:
                        rt.oom.add(p.container_id)
                delay = 0.5
        except TRANSIENT as e:
            log.warning("event_stream_lost", error=str(e), retry_in=delay)
        lost = True
        subscribed.set()
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5)
        try:
            await ctx.client.version()  # containerd answers again: catch up now
        except TRANSIENT:
            continue
        log.info("containerd_reachable_again")
        lost = False
        _catch_up(ctx)


async def _oom_killed(rt: TaskRuntime | None, c: ContainerRecord) -> bool:
    """A SIGKILL exit right after an OOM event that the stream has not delivered yet."""
    await asyncio.sleep(0.05)
    return rt is not None and c.containerd_id in rt.oom


async def container_exited(ctx: Context, task_id: str, name: str, code: int, at: float) -> None:
    """Record an exit once, and decide: an essential container's exit stops the task, as
    does the last container's; a non-essential exit leaves the task running."""
    try:
        task = ctx.get(task_id)
    except TaskNotFound:
        return
    rt = ctx.runtimes.get(task_id)
    for c in task.containers:
        if c.name == name and c.exit_code is None:
            from agent.lifecycle import restart

            if await restart.maybe_restart(ctx, rt, task, c, code):  # restartPolicy
                return
            c.exit_code, c.finished_at, c.last_status = code, at or time.time(), STOPPED
            if rt is not None:
                stop_health(rt, c)
            oom = rt is not None and c.containerd_id in rt.oom
            if oom or (code == 137 and await _oom_killed(rt, c)):
                c.reason = OOM_REASON
            ctx.save(task)
            log.info(
                "container_exited", task=task_id, container=name, exit_code=code, reason=c.reason
            )
            faults.point("exited")
            if c.essential and task.desired_status == RUNNING:
                ctx.stop_soon(task_id, ESSENTIAL_EXITED)
            elif all(x.last_status == STOPPED for x in task.containers):
                ctx.stop_soon(task_id, ALL_EXITED)


# -- health --------------------------------------------------------------------------------
def start_health(
    ctx: Context,
    rt: TaskRuntime,
    c: ContainerRecord,
    check: HealthCheck,
    process: dict[str, Any],
) -> None:
    task_id = rt.task.id

    async def on_change(status: str) -> None:
        task = ctx.get(task_id)
        rec = next(x for x in task.containers if x.name == c.name)
        rec.health = status
        ctx.save(task)
        log.info("container_health", task=task_id, container=c.name, health=status)
        if status == health.UNHEALTHY and rec.essential and task.desired_status == RUNNING:
            ctx.stop_soon(task_id, UNHEALTHY)

    t = asyncio.ensure_future(
        health.monitor(ctx.client, c.containerd_id, process, check, on_change)
    )
    t.add_done_callback(log_failure)
    rt.health[c.containerd_id] = t


def stop_health(rt: TaskRuntime, c: ContainerRecord) -> None:
    t = rt.health.pop(c.containerd_id, None)
    if t is not None:
        t.cancel()
