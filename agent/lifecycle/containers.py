"""Step 5, containers, in dependsOn order: wait for the dependencies, then the lease,
snapshot, container and task (recorded before each is created; teardown.remove removes
each kind), the exit wait registered before start, start. agent.containers builds the
OCI spec and the logging URI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import structlog

from agent import containers, faults, health, metadata
from agent.containerd import ContainerdTimeout
from agent.errors import ContainerdError, InvalidInput, NstaskError
from agent.images import ImageConfig
from agent.lifecycle import running
from agent.lifecycle.accept import has_check
from agent.lifecycle.runtime import RUNNING, STOPPED, Context, TaskRuntime, phase, uninterrupted
from agent.store import ContainerRecord
from agent.taskdef import ContainerDefinition, TaskDefinition
from shim.stats import stats_path

log = structlog.get_logger("nstask.engine")


class DependencyError(NstaskError):
    kind = "dependency_failed"


CANNOT_START = "CannotStartContainerError"


class CannotStart(NstaskError):
    """The container's process could not be made (runc create or start refused it, or its
    user is not in the image): ECS's CannotStartContainerError (issue 12). The start loop
    stops the task for an essential container and records a non-essential one STOPPED."""

    kind = "cannot_start_container"


def _cannot_start(e: NstaskError) -> CannotStart:
    detail = e.details.get("detail") if isinstance(e, ContainerdError) else None
    return CannotStart(f"{CANNOT_START}: {detail or e.message}")


def never_started(ctx: Context, rt: TaskRuntime, c: ContainerRecord, reason: str) -> None:
    """A non-essential container that could not start, or whose dependency can never be met:
    STOPPED without an exit code, with the reason; the task runs on (issue 12). Its recorded
    resources (snapshot, container) go with the task, as in ECS."""
    c.last_status, c.reason, c.finished_at = STOPPED, reason, time.time()
    ctx.save(rt.task)  # wakes the dependents waiting on it
    log.warning("container_not_started", task=rt.task.id, container=c.name, reason=reason)


def dependency_verdict(condition: str, dep: ContainerRecord) -> bool | str | None:
    """True: satisfied; a string: can never be satisfied (why); None: not yet."""
    stopped = dep.last_status == STOPPED
    if stopped and dep.started_at is None and dep.exit_code is None:
        # It could not start (issue 12): no condition can be met any more, as the ECS
        # agent decides ("dependency will never start").
        return f"it never started ({dep.reason})" if dep.reason else "it never started"
    if condition == "START":
        return True if dep.last_status in (RUNNING, STOPPED) else None
    if condition == "COMPLETE":
        return True if stopped else None
    if condition == "SUCCESS":
        if not stopped:
            return None
        return True if dep.exit_code == 0 else f"it exited with code {dep.exit_code}"
    if condition == "HEALTHY":
        if dep.health == health.HEALTHY:
            return True
        if stopped:
            return "it stopped before it was healthy"
        if dep.health == health.UNHEALTHY:
            return "it is UNHEALTHY"
        return None
    return f"unknown condition {condition}"


async def wait_dependencies(
    ctx: Context, rt: TaskRuntime, td: TaskDefinition, cdef: ContainerDefinition
) -> None:
    """dependsOn, as the ECS agent resolves it: START (running or already stopped),
    COMPLETE (stopped), SUCCESS (stopped with 0), HEALTHY; each bounded by the
    dependency's startTimeout. A stop cancels the wait."""
    loop = asyncio.get_running_loop()
    for dep in cdef.depends_on:
        target = td.container(dep.container_name)
        timeout = (
            target.start_timeout if target.start_timeout is not None else ctx.config.start_timeout
        )
        deadline = loop.time() + timeout
        while True:
            changed = rt.changed()
            if rt.task.desired_status != RUNNING:
                return  # a stop the task decided itself (an essential exit): it goes on
            rec = next(c for c in rt.task.containers if c.name == dep.container_name)
            verdict = dependency_verdict(dep.condition, rec)
            if verdict is True:
                break
            if isinstance(verdict, str):
                raise DependencyError(
                    f"container {cdef.name}: dependency {dep.container_name} "
                    f"({dep.condition}) failed: {verdict}"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DependencyError(
                    f"container {cdef.name}: dependency {dep.container_name} did not reach "
                    f"{dep.condition} within its startTimeout ({timeout:g} s)"
                )
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            # that arrives as the event is set.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await changed.wait()


def _check_shim_started(name: str, shim: Path, stats: Path) -> None:
    """containerd takes the readiness pipe's EOF as "ready": a logging shim that failed at
    start is only visible in the stats file it writes before its readiness byte."""
    try:
        state = json.loads(stats.read_text())
    except (OSError, ValueError):
        raise NstaskError(
            f"container {name}: the logging shim {shim} did not start (no stats file at {stats})"
        ) from None
    if state.get("sink_state") == "failed":
        raise NstaskError(
            f"container {name}: logging failed to start: "
            f"{state.get('last_error') or 'unknown error'}"
        )


def lease_of(task_id: str) -> str:
    return f"nstask-{task_id}"


async def start(
    ctx: Context,
    rt: TaskRuntime,
    c: ContainerRecord,
    cdef: ContainerDefinition,
    image: ImageConfig,
    td: TaskDefinition,
    env: list[str],
    log_secrets: dict[str, str],
) -> None:
    task = rt.task
    cid = c.containerd_id
    lease = lease_of(task.id)
    client, store = ctx.client, ctx.store
    holder_init = await namespace_holder(ctx, task.id, td)
    tctx = containers.TaskContext(
        task_id=task.id,
        task_dir=ctx.config.task_dir / task.id,
        network_mode=td.network_mode,
        netns=task.netns,
        ip=task.ip,
        dns_servers=ctx.config.dns_servers,
        cgroup_parent=ctx.cgroups.task_path(task.id),
        holder_init=holder_init,
    )
    with phase(task, f"container.{c.name}.create"):
        # The metadata endpoint's variables (agent.metadata), after the definition's: ECS's win.
        env = [*env, *metadata.container_environment(ctx.config, task, c)]
        c.stop_signal = containers.stop_signal(cdef, image)
        if not any(r.kind == "lease" for r in store.resources(task.id)):
            store.intend("lease", lease, task.id)
            await uninterrupted(client.create_lease(lease, labels={"nstask.task": task.id}))
            store.created("lease", lease)
        store.intend("snapshot", cid, task.id)
        mounts = await uninterrupted(
            client.prepare_snapshot(cid, image.chain_id, snapshotter=ctx.snapshotter, lease=lease)
        )
        store.created("snapshot", cid)
        # The spec after the snapshot: a user name is resolved from the image's /etc/passwd
        # and /etc/group, read through the snapshot's mounts (issue 12). An unknown user
        # fails here; the rollback removes the recorded snapshot.
        try:
            user = await asyncio.to_thread(containers.exec_user, cdef, image, mounts)
        except InvalidInput as e:  # Docker finds an unknown user at start, too
            raise _cannot_start(e) from None
        oci = containers.build_spec(tctx, td, cdef, c.position, cid, image, env, user=user)
        store.intend("container", cid, task.id)
        await uninterrupted(
            client.create_container(
                cid,
                image=cdef.image,
                spec=oci,
                snapshotter=ctx.snapshotter,
                snapshot_key=cid,
                runtime=ctx.config.runtime,
                labels=containers.container_labels(cdef, task.id),
                lease=lease,
            )
        )
        store.created("container", cid)
        c.created_at = time.time()  # the metadata endpoint's CreatedAt (saved at start)
        faults.point("container")
    with phase(task, f"container.{c.name}.start"):
        Path(c.log_path).parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        options_file = containers.log_options_file(tctx.task_dir, c.position)
        uri, log_options = containers.log_uri(
            ctx.shim_path,
            task_id=task.id,
            family=td.family,
            task_dir=tctx.task_dir,
            cdef=cdef,
            log_path=c.log_path,
            options_file=options_file,
            secret_options=log_secrets,
            ecs_metadata=metadata.firelens_metadata(ctx.config, task, td),  # FireLens's fields
        )
        if log_options:
            containers.write_log_options(options_file, log_options)
        stats = Path(stats_path(c.log_path))
        stats.unlink(missing_ok=True)
        store.intend("task", cid, task.id)
        try:
            # pseudoTerminal: one stream, the pty's, on stdout (agent.terminal).
            tty = cdef.pseudo_terminal
            await uninterrupted(
                client.create_task(
                    cid,
                    rootfs=mounts,
                    stdout=uri or "",
                    stderr="" if tty else uri or "",
                    terminal=tty,
                )
            )
        except ContainerdError as e:
            # runc create refused the process (its command is not in the image, ...);
            # a timeout is containerd's trouble, not the container's.
            if isinstance(e, ContainerdTimeout):
                raise
            raise _cannot_start(e) from e
        finally:
            # The shim read its options before it signalled readiness, which
            # Tasks.Create waits for: the secrets need not stay on disk.
            options_file.unlink(missing_ok=True)
        store.created("task", cid)
        faults.point("task")
        if uri is not None:
            _check_shim_started(c.name, ctx.shim_path, stats)
        running.watch(ctx, rt, c)  # the exit wait is registered before start
        if cdef.restart_policy is not None:
            register_restart(ctx, rt, c, mounts, uri, options_file, log_options)

        async def start_and_record() -> None:
            # One step, so that a stop arriving meanwhile finds the container RUNNING and
            # stops it by the plan.
            c.pid = await client.start_task(cid)
            c.started_at = time.time()
            if c.exit_code is None:  # it may already have exited
                c.last_status = RUNNING
            ctx.save(task)

        await uninterrupted(start_and_record())
        faults.point("started")
    if cdef.health_check is not None and has_check(cdef):
        running.start_health(ctx, rt, c, cdef.health_check, _process(oci))
    log.info("container_started", task=task.id, container=c.name, pid=c.pid)


def _process(oci: dict[str, Any]) -> dict[str, Any]:
    return dict(oci["process"])


async def namespace_holder(ctx: Context, task_id: str, td: TaskDefinition) -> int | None:
    """pidMode/ipcMode task: the task's namespace holder (agent.nsholder), started with the
    first container that needs it and recorded first; the pid of its PID 1."""
    from agent import nsholder

    if "task" not in (td.pid_mode, td.ipc_mode):
        return None
    for r in ctx.store.resources(task_id):
        if r.kind == "nsholder" and r.state == "created" and "init" in r.data:
            return int(r.data["init"])
    key = nsholder.key_of(ctx.config.namespace, task_id)
    ctx.store.intend("nsholder", key, task_id)
    # A holder left by a start that crashed after spawning it, before recording it.
    await uninterrupted(asyncio.to_thread(nsholder.remove, key))
    init = await uninterrupted(
        asyncio.to_thread(nsholder.spawn, key, pid=td.pid_mode == "task", ipc=td.ipc_mode == "task")
    )
    ctx.store.created("nsholder", key, init=init)
    return init


def register_restart(
    ctx: Context,
    rt: TaskRuntime,
    c: ContainerRecord,
    mounts: Any,
    uri: str | None,
    options_file: Path,
    log_options: dict[str, str],
) -> None:
    """restartPolicy: how to start this container's task again in place (agent.lifecycle.
    restart): delete the exited task, create a new one on the same snapshot with the same
    logging, wait registered before start, start."""
    from agent.lifecycle import restart

    client, cid = ctx.client, c.containerd_id

    async def again() -> None:
        await uninterrupted(client.delete_task(cid))
        if log_options:
            containers.write_log_options(options_file, log_options)
        try:
            await uninterrupted(
                client.create_task(cid, rootfs=mounts, stdout=uri or "", stderr=uri or "")
            )
        finally:
            options_file.unlink(missing_ok=True)
        running.watch(ctx, rt, c)
        # Before the start: an exit at once is judged against this start (restart.wanted).
        c.started_at = time.time()
        c.pid = await uninterrupted(client.start_task(cid))

    restart.register(cid, again)
