"""Step 7, stop and teardown: cancel a start in flight, the stop signal to each container by
the plan stored at submit (stop order, stopTimeout), SIGKILL after it, then the removal of
every recorded resource, newest kind first.

`remove(kind, key)` is the one removal function per resource kind: a normal stop, the
rollback of a failed start, recovery and `nstask gc` all use it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent import faults
from agent.errors import Busy, ContainerdError, NetworkError, NotFound, NstaskError, Unavailable
from agent.lifecycle import running
from agent.lifecycle.runtime import (
    DEPROVISIONING,
    RUNNING,
    STOPPED,
    Context,
    TaskRuntime,
    ms,
)
from agent.lifecycle.seams import CgroupSeam, NetworkSeam, RemovalClient
from agent.store import ContainerRecord, TaskRecord
from agent.taskdef import parse_task_definition, stop_order
from cni.errors import CNIError

log = structlog.get_logger("nstask.engine")

# Resource kinds, torn down in the reverse of the order they are created.
# nsholder (pidMode/ipcMode task, agent.nsholder): once the containers' processes are gone.
TEARDOWN_ORDER = (
    "task", "nsholder", "container", "snapshot", "lease", "cgroup", "taskdir", "cni", "netns",
)  # fmt: skip
USER_STOP = "Task stopped by user"
# Errors worth trying again: what is away now (containerd, a plugin) or busy now.
RETRYABLE = (Unavailable, ContainerdError, NetworkError, CNIError, Busy)
RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0, 30.0)


class Removal(Protocol):
    """What removing a resource needs (the lifecycle Context; the agent for gc)."""

    @property
    def client(self) -> RemovalClient: ...
    @property
    def network(self) -> NetworkSeam: ...
    @property
    def cgroups(self) -> CgroupSeam: ...
    @property
    def snapshotter(self) -> str: ...


class TeardownFailed(NstaskError):
    """Some recorded resources could not be removed; their records stay."""

    kind = "teardown_failed"

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


# -- one removal function per kind ---------------------------------------------------------
async def _remove_task(r: Removal, key: str, data: dict[str, Any]) -> None:
    st = await r.client.get_task(key)
    if st is not None and st.status not in ("stopped", "STOPPED"):
        await r.client.kill_task(key, signal.SIGKILL, all_processes=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(r.client.wait_task(key), 10)
    await r.client.delete_task(key)


async def _remove_container(r: Removal, key: str, data: dict[str, Any]) -> None:
    await r.client.delete_container(key)


async def _remove_snapshot(r: Removal, key: str, data: dict[str, Any]) -> None:
    await r.client.remove_snapshot(key, snapshotter=r.snapshotter)


async def _remove_lease(r: Removal, key: str, data: dict[str, Any]) -> None:
    await r.client.delete_lease(key)


async def _remove_cgroup(r: Removal, key: str, data: dict[str, Any]) -> None:
    await asyncio.to_thread(r.cgroups.remove, key.rsplit("/", 1)[-1])


async def _remove_taskdir(r: Removal, key: str, data: dict[str, Any]) -> None:
    from agent import hostfields

    await asyncio.to_thread(hostfields.unmount_under, Path(key))  # tmpfs volumes (issue 12 B)
    await asyncio.to_thread(remove_tree, Path(key))


async def _remove_cni(r: Removal, key: str, data: dict[str, Any]) -> None:
    """CNI DEL with the cached result, also when the netns is already gone."""
    _, task_id, ifname = key.rsplit("/", 2)
    await r.network.detach(task_id, data.get("netns"), ifname=ifname)


async def _remove_netns(r: Removal, key: str, data: dict[str, Any]) -> None:
    await r.network.remove_netns(key)


async def _remove_nsholder(r: Removal, key: str, data: dict[str, Any]) -> None:
    from agent import nsholder

    await asyncio.to_thread(nsholder.remove, key)


REMOVERS: dict[str, Callable[[Removal, str, dict[str, Any]], Awaitable[None]]] = {
    "task": _remove_task,
    "nsholder": _remove_nsholder,
    "container": _remove_container,
    "snapshot": _remove_snapshot,
    "lease": _remove_lease,
    "cgroup": _remove_cgroup,
    "taskdir": _remove_taskdir,
    "cni": _remove_cni,
    "netns": _remove_netns,
}
assert set(REMOVERS) == set(TEARDOWN_ORDER)


async def remove(r: Removal, kind: str, key: str, data: dict[str, Any] | None = None) -> None:
    """Remove one resource; one that is already gone is removed."""
    with contextlib.suppress(NotFound):
        await REMOVERS[kind](r, key, data or {})


def remove_tree(path: Path) -> None:
    """Remove a directory tree; it is gone when this returns, or Busy says what is left
    (a resource is marked removed only once it is really gone)."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise Busy(
            f"cannot remove {path}: {e.strerror or e}"
            + (f" ({e.filename})" if e.filename and str(e.filename) != str(path) else "")
        ) from None
    if path.exists():
        raise Busy(f"cannot remove {path}: it is still there")


# Removed after the containerd objects, or beside them once no process of the task is left.
NETWORK_KINDS = ("cni", "netns")


async def teardown(ctx: Context, task: TaskRecord) -> dict[str, float]:
    """Remove every resource recorded for the task, newest kind first; what fails now keeps
    its record and is tried again on the next stop or agent start. Returns ms per kind.

    When every container's process is known to be gone (its exit recorded, or it never
    started), nothing uses the netns any more: the network (CNI DEL, ~50 ms of iptables)
    is then removed while containerd deletes the task (which waits for the logging shim to
    drain), instead of after it."""
    resources = ctx.store.resources(task.id)
    errors: list[str] = []
    failed = {"retryable": True}
    took: dict[str, float] = {}

    async def lane(kinds: tuple[str, ...]) -> None:
        for kind in kinds:
            if kind == "cni":
                faults.point("teardown")
            mine = [r for r in resources if r.kind == kind]
            if not mine:
                continue
            t0 = time.monotonic()
            for r in mine:
                try:
                    await remove(ctx, kind, r.key, r.data)
                except NstaskError as e:
                    errors.append(f"{kind} {r.key}: {e}")
                    failed["retryable"] = failed["retryable"] and isinstance(e, RETRYABLE)
                    log.error("teardown_failed", task=task.id, kind=kind, key=r.key, error=str(e))
                    continue
                except Exception as e:  # a bug, not the host: logged with its cause, not retried
                    errors.append(f"{kind} {r.key}: {type(e).__name__}: {e}")
                    failed["retryable"] = False
                    log.error("teardown_failed", task=task.id, kind=kind, key=r.key, exc_info=e)
                    continue
                ctx.store.removed(kind, r.key)
            took[kind] = ms(t0)

    containerd_kinds = tuple(k for k in TEARDOWN_ORDER if k not in NETWORK_KINDS)
    no_process_left = all(c.exit_code is not None or c.pid is None for c in task.containers)
    if no_process_left:
        await asyncio.gather(lane(containerd_kinds), lane(NETWORK_KINDS))
    else:
        await lane(containerd_kinds)
        await lane(NETWORK_KINDS)
    if errors:
        raise TeardownFailed(
            f"task {task.id}: teardown left {len(errors)} resource(s): " + "; ".join(errors),
            retryable=failed["retryable"],
        )
    return took


# -- stop ----------------------------------------------------------------------------------
async def end_start(rt: TaskRuntime, *, cancel: bool = True) -> None:
    """Cancel the start sequence wherever it is (a dependsOn wait, a CNI plugin, a pull),
    or let it end by itself, and wait until it has let go; what it recorded is then torn
    down by the stop."""
    lc = rt.lifecycle
    if lc is None or lc.done() or lc is asyncio.current_task():
        return
    if cancel:
        lc.cancel()
    await asyncio.wait([lc])


async def stop(
    ctx: Context,
    ref: str,
    *,
    reason: str = USER_STOP,
    timeout: float | None = None,
    cancel_start: bool = True,
) -> TaskRecord:
    """Cancel a start in flight, stop signal, wait, SIGKILL, then tear down everything the
    task holds. Ends STOPPED, or raises with the records of what is left (retried)."""
    task = ctx.get(ref)
    if task.last_status == STOPPED:
        return task
    rt = ctx.runtimes.ensure(task)
    task = rt.task
    if task.desired_status == RUNNING:
        task.desired_status = STOPPED
        task.stop_reason = reason
        ctx.save(task)
    await end_start(rt, cancel=cancel_start)
    async with rt.lock:
        if task.last_status == STOPPED:
            return task
        task.last_status = DEPROVISIONING
        ctx.save(task)
        try:
            signal_ms = await _stop_containers(ctx, rt, timeout)
            faults.point("stop")
            t1 = time.monotonic()
            removed = await teardown(ctx, task)
        except NstaskError as e:
            # Something could not be stopped or removed now (containerd restarting, say):
            # the records stay, and the stop is tried again, a bounded number of times.
            worth = e.retryable if isinstance(e, TeardownFailed) else isinstance(e, RETRYABLE)
            if worth and not rt.retrying:
                rt.retrying = True
                ctx.spawn(_retry_stop(ctx, rt, reason))
            raise
        task.timings["stop.signal"] = signal_ms
        task.timings.update({f"stop.{kind}": v for kind, v in removed.items()})
        task.timings["stop.teardown"] = ms(t1)
        task.last_status = STOPPED
        task.stopped_at = time.time()
        task.stop_reason = task.stop_reason or reason
        for c in task.containers:
            c.last_status = STOPPED
        ctx.save(task)
        log.info("task_stopped", task=task.id, reason=task.stop_reason, exit_code=task.exit_code)
    rt.stopped.set()
    ctx.runtimes.drop(task.id)
    return task


async def _stop_containers(ctx: Context, rt: TaskRuntime, timeout: float | None) -> float:
    """Stop signal, wait, SIGKILL for each running container in the stored stop order.
    Returns the time it took (ms)."""
    t0 = time.monotonic()
    task = rt.task
    order, timeouts = stop_plan(task)
    by_name = {c.name: c for c in task.containers}
    for c in [by_name[n] for n in order]:
        running.stop_health(rt, c)
        if c.last_status != RUNNING:
            continue
        if timeout is not None:
            wait = timeout
        elif timeouts.get(c.name) is not None:
            wait = float(timeouts[c.name])  # type: ignore[arg-type]
        else:
            wait = ctx.config.stop_timeout
        await _stop_container(ctx, rt, c, wait)
    return ms(t0)


def stop_plan(task: TaskRecord) -> tuple[list[str], dict[str, float | None]]:
    """Stop order and per-container stopTimeout, as stored at submit. Tasks stored by an
    older agent have no plan: it is derived from their definition, or, when today's
    parser refuses that definition, the containers stop in reverse definition order
    with the agent's default timeout, so such a task can still always be stopped."""
    names = [c.name for c in sorted(task.containers, key=lambda c: c.position)]
    plan = task.overrides.get("stop")
    if isinstance(plan, dict) and sorted(plan.get("order", [])) == sorted(names):
        return list(plan["order"]), dict(plan.get("timeouts", {}))
    try:
        td = parse_task_definition(task.definition, source=task.source)
    except NstaskError as e:
        log.warning("stop_plan_fallback", task=task.id, error=str(e))
        return names[::-1], {}
    return stop_order(td), {c.name: c.stop_timeout for c in td.containers}


async def _stop_container(ctx: Context, rt: TaskRuntime, c: ContainerRecord, wait: float) -> None:
    fut = rt.exits.get(c.containerd_id)
    try:
        await ctx.client.kill_task(c.containerd_id, c.stop_signal or signal.SIGTERM)
        if fut is not None and wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(fut), wait)
        if fut is None or not fut.done():
            log.info("container_sigkill", task=rt.task.id, container=c.name, after_s=wait)
            await ctx.client.kill_task(c.containerd_id, signal.SIGKILL, all_processes=True)
            if fut is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(fut), 10)
    except NotFound:
        pass  # already gone
    if fut is not None and fut.done() and not fut.cancelled():
        code, at = fut.result()  # recorded before teardown reads the record
        await running.container_exited(ctx, rt.task.id, c.name, code, at)


async def _retry_stop(ctx: Context, rt: TaskRuntime, reason: str) -> None:
    """One retry loop per task, with backoff, until its teardown succeeds or the attempts
    run out (the records stay; the next agent start tries again)."""
    task_id = rt.task.id
    try:
        for delay in RETRY_DELAYS:
            await asyncio.sleep(delay)
            try:
                await stop(ctx, task_id, reason=reason, timeout=0)
                return
            except NotFound:
                return
            except NstaskError as e:
                log.warning("stop_retry_failed", task=task_id, error=str(e), retried_in=delay)
                if isinstance(e, TeardownFailed) and not e.retryable:
                    return
        log.error("stop_retry_gave_up", task=task_id, attempts=len(RETRY_DELAYS))
    finally:
        rt.retrying = False
