"""What the agent keeps about a live task (TaskRuntime, one per task, dropped when the task
is STOPPED and done), and the context every lifecycle step is given (Context)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from agent import health
from agent.config import AgentConfig
from agent.errors import TaskNotFound
from agent.lifecycle.seams import CgroupSeam, Client, ImageSeam, NetworkSeam, PoolSeam
from agent.secret_sources import SecretSources
from agent.secrets import SecretStore
from agent.stats import History
from agent.store import Store, TaskRecord

log = structlog.get_logger("nstask.engine")
T = TypeVar("T")

# ECS task states (lastStatus), in lifecycle order.
PROVISIONING, PENDING, RUNNING, DEPROVISIONING, STOPPED = (
    "PROVISIONING",
    "PENDING",
    "RUNNING",
    "DEPROVISIONING",
    "STOPPED",
)
UNKNOWN = health.UNKNOWN


@dataclass(eq=False)
class TaskRuntime:
    """The agent's in-memory state of one task that is not STOPPED. `task` is the one live
    record object (start, exits, health and stop all change it, written through to the
    store), so no stale copy can overwrite another's change."""

    task: TaskRecord
    lifecycle: asyncio.Task[None] | None = None  # the start sequence, while it runs
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one stop at a time
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    exits: dict[str, asyncio.Future[tuple[int, float]]] = field(default_factory=dict)
    watchers: set[asyncio.Task[None]] = field(default_factory=set)  # Wait RPCs
    health: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    oom: set[str] = field(default_factory=set)  # containerd ids with an OOM event
    retrying: bool = False
    # agent.stats: each container's latest samples (precpu_stats/preread come from them).
    stats: dict[str, History] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def changed(self) -> asyncio.Event:
        """Set at the next change of the record; take it before reading what to wait for."""
        return self._changed

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def release(self) -> None:
        """Cancel what still runs for the task (its record is final)."""
        for t in [*self.health.values(), *self.watchers]:
            t.cancel()
        for fut in self.exits.values():
            fut.cancel()
        self.health.clear()
        self.watchers.clear()
        self.exits.clear()


class Runtimes:
    """The TaskRuntime of every task that is not STOPPED, keyed by task id."""

    def __init__(self) -> None:
        self._by_id: dict[str, TaskRuntime] = {}

    def get(self, task_id: str) -> TaskRuntime | None:
        return self._by_id.get(task_id)

    def ensure(self, task: TaskRecord) -> TaskRuntime:
        rt = self._by_id.get(task.id)
        if rt is None:
            rt = self._by_id[task.id] = TaskRuntime(task)
        return rt

    def of_container(self, containerd_id: str) -> TaskRuntime | None:
        """Container ids are "<task id>-<n>-<name>" (accept.containerd_id)."""
        return self._by_id.get(containerd_id.split("-", 1)[0])

    def drop(self, task_id: str) -> None:
        rt = self._by_id.pop(task_id, None)
        if rt is not None:
            rt.release()

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[TaskRuntime]:
        return iter(list(self._by_id.values()))


StopFn = Callable[..., Awaitable[TaskRecord]]


class Context:
    """What every step is given: the agent's settings, the state store, the seams, and the
    runtimes of live tasks."""

    def __init__(
        self,
        config: AgentConfig,
        store: Store,
        client: Client,
        network: NetworkSeam,
        *,
        images: ImageSeam,
        cgroups: CgroupSeam,
        secrets: SecretStore,
        shim_path: Path,
    ) -> None:
        self.config = config
        self.store = store
        self.client = client
        self.network = network
        self.images = images
        self.cgroups = cgroups
        self.secrets = secrets
        # Where secrets come from (local store, AWS), in the configured order (issue 11).
        self.secret_sources = SecretSources(config, secrets)
        self.shim_path = shim_path
        self.runtimes = Runtimes()
        self.background: set[asyncio.Task[Any]] = set()
        # Set by the daemon once the warm pool runs (None: no pool, every task attaches).
        self.pool: PoolSeam | None = None
        # Called when a task's start sequence ends, with None when every container started
        # or the error: the Prometheus histograms (agent.metrics), the OTLP export
        # (agent.tracing). Set by the daemon when those are configured.
        self.start_observers: list[Callable[[TaskRecord, str | None], None]] = []

    def start_ended(self, task: TaskRecord, error: str | None = None) -> None:
        for observe in self.start_observers:
            try:
                observe(task, error)
            except Exception as e:  # an observer's failure never touches the task
                log.error("start_observer_failed", task=task.id, error=str(e), exc_info=e)

    @property
    def snapshotter(self) -> str:
        return self.config.snapshotter

    # -- records -------------------------------------------------------------------------
    def get(self, ref: str) -> TaskRecord:
        """A task by id or unique id prefix; the live record while it is not STOPPED."""
        rt = self.runtimes.get(ref)
        if rt is not None:
            return rt.task
        task = self.store.get_task(ref)
        if task is None:
            matches = [t for t in self.store.list_tasks() if t.id.startswith(ref)] if ref else []
            if len(matches) > 1:
                raise TaskNotFound(
                    f"task id prefix {ref!r} is ambiguous ({len(matches)} tasks match)"
                )
            if not matches:
                raise TaskNotFound(f"no such task: {ref}")
            task = matches[0]
        rt = self.runtimes.get(task.id)
        if rt is not None:
            return rt.task
        if task.last_status != STOPPED:
            return self.runtimes.ensure(task).task
        return task

    def list_tasks(self, *, all_tasks: bool = False) -> list[TaskRecord]:
        out = []
        for t in self.store.list_tasks():
            rt = self.runtimes.get(t.id)
            if rt is not None:
                t = rt.task
            if all_tasks or t.last_status != STOPPED:
                out.append(t)
        return out

    def save(self, task: TaskRecord) -> None:
        """Persist and wake whoever waits on this task's containers (dependsOn)."""
        self.store.update_task(task)
        for c in task.containers:
            self.store.update_container(c)
        rt = self.runtimes.get(task.id)
        if rt is not None:
            rt.notify()

    # -- background work -----------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        t = asyncio.ensure_future(coro)
        self.background.add(t)
        t.add_done_callback(self.background.discard)
        t.add_done_callback(log_failure)

    def stop_soon(self, task_id: str, reason: str, *, timeout: float | None = None) -> None:
        """A stop decided by the lifecycle itself (an essential exit, a failed start): a
        start in flight finishes the container it is at, then ends (a user's stop cancels
        it instead)."""
        from agent.lifecycle import teardown

        self.spawn(teardown.stop(self, task_id, reason=reason, timeout=timeout, cancel_start=False))


async def uninterrupted(aw: Awaitable[T]) -> T:
    """Run a short host operation to its end even when the start is cancelled meanwhile,
    then let the cancellation through: a resource created after teardown looked for it
    would be left behind."""
    t = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(t)
    except asyncio.CancelledError:
        await asyncio.wait([t])
        if not t.cancelled():
            t.exception()  # retrieved: the cancellation is what the caller sees
        raise


def ms(t0: float) -> float:
    return round((time.monotonic() - t0) * 1000, 2)


def offset_ms(task: TaskRecord) -> float:
    """Now, in ms after the task's creation: where a phase starts on its timeline."""
    return round((time.time() - task.created_at) * 1000, 2)


@contextlib.contextmanager
def phase(task: TaskRecord, name: str) -> Iterator[None]:
    t0 = time.monotonic()
    task.timeline[name] = offset_ms(task)  # when it began (inspect --timeline, OTLP spans)
    try:
        yield
    finally:
        task.timings[name] = ms(t0)


def log_failure(t: asyncio.Future[Any]) -> None:
    if not t.cancelled() and t.exception() is not None:
        e = t.exception()
        log.error("background_failure", error=str(e), exc_info=e)
