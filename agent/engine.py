"""The agent's engine: the public face of the task lifecycle (agent.lifecycle, one module
per step). It is the single owner of every host resource nstask creates; each is recorded
in the state store before it is created and removed by the one removal path
(lifecycle.teardown) whether a task stops, fails to start, or is recovered after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agent import cgroups, execute, seccomp
from agent.config import AgentConfig, default_shim_path
from agent.containerd import Containerd
from agent.credentials import LocalCredentialStore
from agent.errors import NstaskError
from agent.lifecycle import accept, recovery, running, start, teardown
from agent.lifecycle.runtime import (
    DEPROVISIONING,
    PENDING,
    PROVISIONING,
    RUNNING,
    STOPPED,
    UNKNOWN,
    Context,
)
from agent.lifecycle.seams import CgroupSeam, Client, ImageSeam, NetworkSeam, PoolSeam
from agent.network import TaskNetwork
from agent.secrets import SecretStore
from agent.store import Store, TaskRecord
from shim.stats import stats_path

if TYPE_CHECKING:
    from agent.metadata.server import MetadataServers

__all__ = [
    "DEPROVISIONING",
    "PENDING",
    "PROVISIONING",
    "RUNNING",
    "STOPPED",
    "UNKNOWN",
    "Engine",
    "logging_stats",
]

log = structlog.get_logger("nstask.engine")
OOM_REASON = running.OOM_REASON
TEARDOWN_ORDER = teardown.TEARDOWN_ORDER


def logging_stats(log_path: str) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(stats_path(log_path)).read_text())
    except (OSError, ValueError):
        return None
    return dict(data)


class Engine:
    """submit / get / list_tasks / wait / stop / remove for the API; start / close for the
    daemon. `client` and `network` are the real ones in the agent; tests give fakes of the
    seams (`images`, `cgroups` too)."""

    def __init__(
        self,
        config: AgentConfig,
        store: Store,
        client: Containerd,
        network: TaskNetwork,
        *,
        images: ImageSeam | None = None,
        cgroups_seam: CgroupSeam | None = None,
    ) -> None:
        from agent.lifecycle.images import PullImages

        self.config = config
        self.store = store
        self.client = client
        self.network = network
        self.secrets = SecretStore(config.state_dir / "secrets")
        # Task-role credentials (`nstask credentials put`), and the metadata endpoint's
        # listeners once the daemon started them (gc asks them about stale rules).
        self.credentials = LocalCredentialStore(config.state_dir / "credentials")
        self.metadata: MetadataServers | None = None
        seam_client: Client = client
        seam_network: NetworkSeam = network
        self.ctx = Context(
            config,
            store,
            seam_client,
            seam_network,
            images=images
            or PullImages(
                client,
                policy=config.pull_policy,
                snapshotter=config.snapshotter,
                insecure=config.insecure_registries,
                docker_config=config.docker_config,
            ),
            cgroups=cgroups_seam or cgroups,
            secrets=self.secrets,
            shim_path=config.shim_path or default_shim_path(),
        )
        self._events: asyncio.Task[None] | None = None

    @property
    def warm_pool(self) -> PoolSeam | None:
        return self.ctx.pool

    @warm_pool.setter
    def warm_pool(self, pool: PoolSeam | None) -> None:
        """Tasks take their network from the pool from now on (awsvpc, no ports)."""
        self.ctx.pool = pool

    @property
    def removal(self) -> teardown.Removal:
        """What `nstask gc` removes resources with (the lifecycle's removal path)."""
        return self.ctx

    # -- agent start / stop --------------------------------------------------------------
    async def start(self, *, collect: bool = True) -> None:
        await self.client.ensure_namespace()
        try:  # read once here, off the event loop; containers then use the cached profile
            await asyncio.to_thread(seccomp.default_profile)
        except NstaskError as e:
            log.warning("seccomp_profile_unavailable", error=e.message)
        for d in (self.config.log_dir, self.config.task_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        subscribed = asyncio.Event()
        self._events = asyncio.create_task(running.watch_events(self.ctx, subscribed))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(subscribed.wait(), 5)
        await recovery.recover(self.ctx)
        # Interactive execs of a previous agent that died mid-session (agent.execute).
        await execute.sweep_orphans(
            self.client,
            self.config.task_dir,
            {t.id: [c.containerd_id for c in t.containers] for t in self.list_tasks()},
        )
        if collect:
            # Attachments in the CNI cache or IPAM that no task owns (a crash before the
            # intent was recorded, another runtime's leftovers on our network): DEL them.
            from agent import gc

            await gc.collect(self, cni_only=True)

    async def close(self) -> None:
        """Leave tasks running (as the ECS agent does on update); stop watching them."""
        pending: list[asyncio.Future[Any]] = [
            t for t in [self._events, *self.ctx.background] if t is not None
        ]
        for rt in self.ctx.runtimes:
            if rt.lifecycle is not None:
                pending.append(rt.lifecycle)
            pending += [*rt.health.values(), *rt.watchers]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # -- the API's calls -----------------------------------------------------------------
    def get(self, ref: str) -> TaskRecord:
        """A task by id or unique id prefix (the live record while it is not STOPPED)."""
        return self.ctx.get(ref)

    def list_tasks(self, *, all_tasks: bool = False) -> list[TaskRecord]:
        return self.ctx.list_tasks(all_tasks=all_tasks)

    async def wait(self, task_id: str) -> TaskRecord:
        task = self.get(task_id)
        rt = self.ctx.runtimes.get(task.id)
        if task.last_status != STOPPED and rt is not None:
            await rt.stopped.wait()
        return self.get(task.id)

    async def submit(
        self, definition: Any, *, source: str = "", env: dict[str, str] | None = None
    ) -> TaskRecord:
        """Validate, persist and start a task; returns at once with the PROVISIONING record.
        Everything that can be checked without touching the host is checked first, so a
        task that cannot run is refused before anything is created."""
        accepted = await accept.accept(self.ctx, definition, source=source, env=env)
        return start.launch(self.ctx, accepted).task

    async def stop(
        self, ref: str, *, reason: str = teardown.USER_STOP, timeout: float | None = None
    ) -> TaskRecord:
        """Cancel a start in flight, stop signal, wait, SIGKILL, remove everything."""
        return await teardown.stop(self.ctx, ref, reason=reason, timeout=timeout)

    async def remove(self, ref: str, *, force: bool = False) -> None:
        """Forget a stopped task and delete its logs (`nstask rm`, `run --rm`)."""
        task = self.get(ref)
        if task.last_status != STOPPED:
            if not force:
                raise NstaskError(
                    f"task {task.id} is {task.last_status}; stop it first or use --force"
                )
            task = await self.stop(task.id, timeout=0)
        await asyncio.to_thread(teardown.remove_tree, self.config.log_dir / task.id)
        self.store.delete_task(task.id)
        self.ctx.runtimes.drop(task.id)
