"""Step 2b, network: the task's netns and its CNI attachment, through the network seam
(agent.network.TaskNetwork); the only lifecycle code that creates either. Both are recorded
before they are created; teardown.remove removes them ("cni", "netns")."""

from __future__ import annotations

from agent import faults
from agent.lifecycle.accept import ports_for
from agent.lifecycle.runtime import Context, phase, uninterrupted
from agent.store import TaskRecord
from agent.taskdef import TaskDefinition


def cni_key(network: str, task_id: str, ifname: str = "eth0") -> str:
    return f"{network}/{task_id}/{ifname}"


async def provision(ctx: Context, task: TaskRecord, td: TaskDefinition) -> None:
    mode = td.network_mode
    if mode in ("bridge", "host"):
        task.ports = ports_for(ctx, td)
        ctx.save(task)
    if mode == "host":
        return
    if mode == "awsvpc" and not task.ports and ctx.pool is not None:
        # A warm pool entry: netns and attachment made ahead of time, now recorded as this
        # task's (teardown removes them as its own: the keys carry the pool id).
        with phase(task, "network.pool"):
            taken = await ctx.pool.take(task.id)
        if taken is not None:
            task.netns, task.ip = taken.netns_path, taken.ip
            ctx.save(task)
            return
    name = ctx.config.netns_prefix + task.id
    with phase(task, "network.netns"):
        ctx.store.intend("netns", name, task.id)
        path = await uninterrupted(ctx.network.create_netns(name))
        ctx.store.created("netns", name, path=path)
        faults.point("netns")
        task.netns = path
        ctx.save(task)
    if mode == "none":
        return
    mappings = [
        {
            "hostPort": p["hostPort"],
            "containerPort": p["containerPort"],
            "protocol": p["protocol"],
        }
        for p in task.ports
    ]
    key = cni_key(ctx.network.name, task.id)
    with phase(task, "network.cni"):
        ctx.store.intend("cni", key, task.id, netns=path)
        # Not shielded: a stop cancels a slow plugin (the network seam ends the plugin's
        # process); the owed DEL is in the record.
        ip = await ctx.network.attach(task.id, path, port_mappings=mappings)
        ctx.store.created("cni", key, netns=path, ip=ip)
        faults.point("cni")
        task.ip = ip
        ctx.save(task)
