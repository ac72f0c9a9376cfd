"""The start sequence: host -> (network | secrets -> images) -> containers in dependsOn
order, the network lane beside the secrets and images lane. It runs as the task's lifecycle
asyncio task, which a stop cancels at any step; any failure ends in the stop (rollback) of
whatever was recorded."""

from __future__ import annotations

import asyncio
import time

import structlog

from agent.errors import NstaskError
from agent.lifecycle import containers, host, images, network, secrets
from agent.lifecycle.accept import Accepted
from agent.lifecycle.running import ESSENTIAL_EXITED
from agent.lifecycle.runtime import PENDING, RUNNING, STOPPED, Context, TaskRuntime, ms, phase
from agent.store import TaskRecord
from agent.taskdef import TaskDefinition, start_order

log = structlog.get_logger("nstask.engine")


async def _network(ctx: Context, task: TaskRecord, td: TaskDefinition) -> None:
    await network.provision(ctx, task, td)
    # As ECS: PROVISIONING while the network is made, PENDING after (pulls may go on).
    task.last_status = PENDING
    ctx.save(task)


def launch(ctx: Context, accepted: Accepted) -> TaskRuntime:
    """Start the task in the background; its runtime holds the lifecycle task."""
    rt = ctx.runtimes.ensure(accepted.task)
    rt.lifecycle = asyncio.create_task(_run(ctx, rt, accepted))
    return rt


async def _run(ctx: Context, rt: TaskRuntime, accepted: Accepted) -> None:
    task, td = rt.task, accepted.definition
    t_start = time.monotonic()
    # Where start_total begins on the task's timeline (runtime.offset_ms, inlined).
    task.timeline["start_total"] = round((time.time() - task.created_at) * 1000, 2)
    try:
        await host.provision(ctx, task, td)
        # The network and the images need nothing of each other: both lanes run at once
        # (with no warm pool entry, the CNI ADD and a pull or unpack overlap).
        lane = asyncio.ensure_future(_network(ctx, task, td))
        try:
            resolved = await secrets.resolve(ctx, task, td, accepted.env_files)  # may ask AWS
            configs = await images.ensure(ctx, task, td, resolved.registry_auth)
            await lane
        except BaseException:
            # A failure (or a stop) in one lane ends the other before the rollback, so
            # the rollback finds every record the network step made.
            lane.cancel()
            await asyncio.gather(lane, return_exceptions=True)
            raise
        by_name = {c.name: c for c in task.containers}
        for name in start_order(td):
            if task.desired_status != RUNNING:
                return
            cdef = td.container(name)
            try:
                with phase(task, f"container.{name}.dependencies"):
                    await containers.wait_dependencies(ctx, rt, td, cdef)
                if task.desired_status != RUNNING:
                    return
                await containers.start(
                    ctx,
                    rt,
                    by_name[name],
                    cdef,
                    configs[cdef.image],
                    td,
                    resolved.environment[name],
                    resolved.log_secrets[name],
                )
            except (containers.CannotStart, containers.DependencyError) as e:
                # Issue 12: only an essential container that cannot start (or whose
                # dependency cannot be met) fails the task; a non-essential one ends
                # STOPPED with the reason and the others start and run on.
                by_name[name].reason = str(e)
                if cdef.essential:
                    raise
                containers.never_started(ctx, rt, by_name[name], str(e))
        # Every container started (some may already have exited, and the task be on its
        # way to STOPPED: it still ran, as ECS reports it).
        task.started_at = time.time()
        task.timings["start_total"] = ms(t_start)
        if task.desired_status == RUNNING:
            task.last_status = RUNNING
        ctx.save(task)
        log.info("task_running", task=task.id, ip=task.ip, timings=task.timings)
        ctx.start_ended(task)  # metrics and traces of the start (runtime.Context)
    except asyncio.CancelledError:
        raise  # a stop (or the agent's exit) took over
    except Exception as e:  # every failure to start ends in a full rollback
        log.error(
            "task_start_failed",
            task=task.id,
            error=str(e),
            exc_info=e if not isinstance(e, NstaskError) else None,
        )
        # ECS's reason as it is for a container that cannot start (issue 12).
        reason = str(e) if isinstance(e, containers.CannotStart) else f"failed to start: {e}"
        ctx.stop_soon(task.id, reason, timeout=0)
        ctx.start_ended(task, str(e))
        return
    # An essential container may have exited while the others were starting.
    if task.desired_status == RUNNING and any(
        c.essential and c.last_status == STOPPED for c in task.containers
    ):
        ctx.stop_soon(task.id, ESSENTIAL_EXITED)
