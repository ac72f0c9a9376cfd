"""Step 2a, host: the task's directory (with its volumes) and its cgroup, as the ECS agent
makes them before the network. Each is recorded before it is created; teardown.remove
removes them ("taskdir", "cgroup")."""

from __future__ import annotations

import asyncio

from agent import containers
from agent.lifecycle.runtime import Context, uninterrupted
from agent.store import TaskRecord
from agent.taskdef import TaskDefinition


async def provision(ctx: Context, task: TaskRecord, td: TaskDefinition) -> None:
    task_dir = ctx.config.task_dir / task.id
    ctx.store.intend("taskdir", str(task_dir), task.id)
    task_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    ctx.store.created("taskdir", str(task_dir))
    containers.prepare_volumes(td, task_dir)
    path = ctx.cgroups.task_path(task.id)
    ctx.store.intend("cgroup", path, task.id)
    await uninterrupted(
        asyncio.to_thread(
            ctx.cgroups.create,
            task.id,
            memory_mib=td.memory,
            cpu_units=td.cpu,
            pids_limit=ctx.config.pids_limit,
        )
    )
    ctx.store.created("cgroup", path)
