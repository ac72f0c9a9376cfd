"""`nstask gc`: find, and remove, whatever of nstask's the host holds that the agent's state
does not account for — the leftovers the field reports of CNI runtimes are full of (netns
bind mounts, veths, host-local IP allocations, CNI cache entries, containerd containers,
snapshots and leases, task directories, cgroups, log directories of forgotten tasks).

Everything is found by nstask's own names (netns prefix, the bridge, the CNI network name,
our containerd namespace, our state directory): nothing of anyone else's is looked at.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent import cgroups, netns
from agent.config import AgentConfig
from agent.containerd import Containerd
from agent.errors import NstaskError
from agent.lifecycle import teardown
from agent.lifecycle.network import cni_key
from agent.network import TaskNetwork
from agent.store import Store, TaskRecord
from cni.builtin import host_veth_name

log = structlog.get_logger("nstask.gc")


class Engine(Protocol):
    """What gc needs of the agent (agent.engine.Engine): where to look, and the lifecycle's
    removal path, which it removes with."""

    @property
    def config(self) -> AgentConfig: ...
    @property
    def store(self) -> Store: ...
    @property
    def client(self) -> Containerd: ...
    @property
    def network(self) -> TaskNetwork: ...
    @property
    def removal(self) -> teardown.Removal: ...
    def list_tasks(self, *, all_tasks: bool = False) -> list[TaskRecord]: ...


@dataclass(frozen=True)
class Orphan:
    kind: str
    name: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "detail": self.detail}


def _live_ids(engine: Engine) -> set[str]:
    """Tasks that may hold host resources: every task not STOPPED, and any task with a
    resource record left (its teardown is still owed). Also the ids the recorded netns and
    CNI attachments are named by, where they differ from their task's: a warm pool entry
    (agent.warmpool) is made under an id of its own (`pool-<hex>`) and keeps it when a task
    takes it, so its netns, veth, IPAM file and cache entry carry the pool id."""
    ids = {t.id for t in engine.list_tasks()}
    for r in engine.store.resources():
        ids.add(r.task_id)
        if r.kind == "cni" and r.key.count("/") >= 2:
            ids.add(r.key.rsplit("/", 2)[1])
        elif r.kind == "netns" and r.key.startswith(engine.config.netns_prefix):
            ids.add(r.key.removeprefix(engine.config.netns_prefix))
    return ids


async def running_unknown(engine: Engine) -> dict[str, list[str]]:
    """Tasks that run in our containerd namespace but that the state store does not know
    (a store moved aside, another agent's tasks): task id -> its running containers."""
    return {t: ids for t, (ids, _) in (await _running_unknown(engine)).items()}


async def _running_unknown(engine: Engine) -> dict[str, tuple[list[str], set[str]]]:
    """task id -> (its running containers, the ids its netns and attachment are named by:
    its own, or a warm pool entry's it took, read from the netns path in its OCI spec)."""
    live = _live_ids(engine)
    prefix = engine.config.netns_prefix
    running: dict[str, tuple[list[str], set[str]]] = {}
    active = {
        t.container_id
        for t in await engine.client.list_tasks()
        if t.status not in ("stopped", "STOPPED", "unknown")
    }
    for c in await engine.client.list_containers():
        task_id = c.labels.get("nstask.task")
        if task_id and task_id not in live and c.id in active:
            ids, network_ids = running.setdefault(task_id, ([], {task_id}))
            ids.append(c.id)
            for ns in ((c.spec or {}).get("linux") or {}).get("namespaces") or []:
                name = Path(str(ns.get("path") or "")).name
                if ns.get("type") == "network" and name.startswith(prefix):
                    network_ids.add(name.removeprefix(prefix))
    return running


async def find(
    engine: Engine, *, cni_only: bool = False, stop_unknown: bool = False
) -> list[Orphan]:
    """What no task accounts for. Resources of a container that is still running in our
    containerd namespace are never among them (issue 9: after the store was moved aside,
    the start-up GC tore the network out of a running task): such a task is reported as
    `running-task`, kept, and only stopped with everything it holds when `stop_unknown`."""
    cfg = engine.config
    live = _live_ids(engine)
    known = {t.id for t in engine.store.list_tasks()}
    found: list[Orphan] = []
    for task_id, (ids, network_ids) in sorted((await _running_unknown(engine)).items()):
        found.append(
            Orphan(
                "running-task",
                task_id,
                f"running in containerd namespace {cfg.namespace} but not in the state "
                f"store ({len(ids)} container(s))",
            )
        )
        if not stop_unknown:
            live |= network_ids
    # CNI attachments (result cache) and IPAM allocations of the task network.
    attached: set[str] = set()
    for entry in engine.network.runtime.cache.entries(engine.network.name):
        if entry.container_id not in live:
            attached.add(entry.container_id)
            found.append(Orphan("cni", entry.container_id, f"cached attachment {entry.path}"))
    ipam_dir = cfg.ipam_data_dir / engine.network.name
    if ipam_dir.is_dir():
        for f in sorted(ipam_dir.iterdir()):
            if f.name == "lock" or f.name.startswith("last_reserved_ip"):
                continue
            owner = f.read_text().splitlines()[0].strip() if f.is_file() else ""
            if owner and owner not in live and owner not in attached:
                attached.add(owner)
                found.append(Orphan("cni", owner, f"IP allocation {f.name}"))
    # The loopback guard of a bridge that is gone (agent.hostguard).
    for chain in await asyncio.to_thread(engine.network.stale_guards):
        found.append(Orphan("guard", chain, "iptables loopback guard of a bridge that is gone"))
    # The metadata endpoint's chains of a bridge that is gone (agent.metadata.netfilter).
    metadata = getattr(engine, "metadata", None)
    if metadata is not None:
        for chain in await asyncio.to_thread(metadata.stale_chains):
            found.append(Orphan("metadata-rules", chain, "metadata endpoint rules, bridge gone"))
    if cni_only:
        return found
    for name in await asyncio.to_thread(netns.list_netns, cfg.netns_prefix):
        if name.removeprefix(cfg.netns_prefix) not in live:
            found.append(Orphan("netns", name))
    expected = {host_veth_name(t, "eth0") for t in live}
    links = netns.NetlinkLinks()
    if await asyncio.to_thread(links.link_info, None, cfg.bridge) is not None:
        for link in await asyncio.to_thread(links.list_links, "", cfg.bridge):
            if link.name not in expected:
                found.append(Orphan("veth", link.name, f"on bridge {cfg.bridge}"))
    client = engine.client
    for c in await client.list_containers():
        if c.labels.get("nstask.task") not in live:
            found.append(Orphan("container", c.id, f"task {c.labels.get('nstask.task')}"))
    containers = {c.id for c in await client.list_containers()}
    for s in await client.list_snapshots(snapshotter=cfg.snapshotter):
        # Container snapshots are keyed "<task id>-<n>-<name>"; others (unpack's) are not ours
        # to judge here.
        task_id = s.name[:32]
        if (
            s.kind == "active"
            and s.name not in containers
            and _is_task_id(task_id)
            and task_id not in live
        ):
            found.append(Orphan("snapshot", s.name, "active, no container"))
    for lease in await client.list_leases():
        task_id = lease.id.removeprefix("nstask-")
        if lease.id.startswith("nstask-") and _is_task_id(task_id) and task_id not in live:
            found.append(Orphan("lease", lease.id))
    for d in sorted(cfg.task_dir.iterdir()) if cfg.task_dir.is_dir() else []:
        if d.name not in live:
            found.append(Orphan("taskdir", str(d)))
    for d in sorted(cfg.log_dir.iterdir()) if cfg.log_dir.is_dir() else []:
        if d.name not in known and d.name not in live:
            found.append(Orphan("logs", str(d), "logs of a removed task"))
    # /sys/fs/cgroup/*/nstask is shared by every agent on the host: only tasks this agent
    # knows (or left a task directory for) are its to remove.
    ours = known | {Path(o.name).name for o in found if o.kind == "taskdir"}
    leftover = {Path(p).name for p in await asyncio.to_thread(cgroups.leftovers)}
    for task_id in sorted(leftover & ours - live):
        found.append(Orphan("cgroup", task_id))
    # pidMode/ipcMode task namespace holders (agent.nsholder) of this agent's namespace.
    from agent import nsholder

    prefix = nsholder.prefix_of(cfg.namespace)
    for key in sorted(await asyncio.to_thread(nsholder.keys, prefix)):
        task_id = key.removeprefix(prefix)  # another namespace may extend this one's name
        if _is_task_id(task_id) and task_id not in live:
            found.append(Orphan("nsholder", key, "namespace holder of a removed task"))
    return found


def _is_task_id(text: str) -> bool:
    return len(text) == 32 and all(ch in "0123456789abcdef" for ch in text)


async def collect(
    engine: Engine,
    *,
    dry_run: bool = False,
    cni_only: bool = False,
    stop_unknown: bool = False,
) -> list[dict[str, Any]]:
    """Find orphans and (unless dry_run) remove each; returns what was found and done.
    A task still running that the store does not know is kept unless `stop_unknown`."""
    report = []
    for o in await find(engine, cni_only=cni_only, stop_unknown=stop_unknown):
        if o.kind == "running-task" and not stop_unknown:
            status = "kept (still running; `nstask gc --stop-unknown` stops it)"
            log.warning("gc_unknown_running_task", task=o.name, detail=o.detail, status=status)
            report.append({**o.to_dict(), "status": status})
            continue
        status = "would remove" if dry_run else "removed"
        if not dry_run:
            try:
                await _remove(engine, o)
            except (NstaskError, OSError) as e:
                status = f"failed: {e}"
        log.info("gc", kind=o.kind, name=o.name, detail=o.detail, status=status)
        report.append({**o.to_dict(), "status": status})
    if not dry_run:
        # route_localnet of the bridge, from what the CNI cache now holds (portmap's leftover).
        with contextlib.suppress(NstaskError, OSError):
            await asyncio.to_thread(engine.network.settle_route_localnet)
    return report


async def _remove(engine: Engine, o: Orphan) -> None:
    """Kinds the lifecycle records go through its removal functions; the others (a veth,
    a guard, a log directory) exist only as leftovers."""
    r = engine.removal
    if o.kind == "running-task":
        return  # its containers, network and files are orphans of their own, removed below
    if o.kind == "cni":
        await teardown.remove(r, "cni", cni_key(engine.network.name, o.name))
    elif o.kind == "netns":
        await teardown.remove(r, "netns", o.name)
    elif o.kind == "guard":
        await asyncio.to_thread(engine.network.remove_stale_guard, o.name)
    elif o.kind == "metadata-rules":
        metadata = getattr(engine, "metadata", None)
        if metadata is not None:
            await asyncio.to_thread(metadata.remove_stale, o.name)
    elif o.kind == "veth":
        await asyncio.to_thread(netns.NetlinkLinks().delete_link, o.name)
    elif o.kind == "container":
        for kind in ("task", "container", "snapshot"):
            await teardown.remove(r, kind, o.name)
    elif o.kind in ("snapshot", "lease", "taskdir"):
        await teardown.remove(r, o.kind, o.name)
    elif o.kind == "logs":
        await asyncio.to_thread(teardown.remove_tree, Path(o.name))
    elif o.kind == "cgroup":
        await teardown.remove(r, "cgroup", cgroups.task_path(o.name))
    elif o.kind == "nsholder":
        await teardown.remove(r, "nsholder", o.name)
