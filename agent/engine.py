"""The task lifecycle: accept -> network -> images -> containers -> running -> stopped.

The engine is the single owner of every host resource nstask creates. Each resource is
recorded in the state store as an intent before it is created, marked created after, and
deleted from the store once it is gone; teardown walks those records in reverse, so the same
code finishes a normal stop, rolls back a failed start and cleans up after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog

from agent import images, spec
from agent.config import AgentConfig, default_shim_path
from agent.containerd import Containerd, TaskExit
from agent.errors import ImageNotFound, NotFound, NstaskError, TaskNotFound
from agent.network import TaskNetwork
from agent.store import ContainerRecord, Store, TaskRecord
from agent.taskdef import (
    ContainerDefinition,
    TaskDefinition,
    parse_task_definition,
    with_environment,
)

log = structlog.get_logger("nstask.engine")

# ECS task states (lastStatus), in lifecycle order.
PROVISIONING, PENDING, RUNNING, DEPROVISIONING, STOPPED = (
    "PROVISIONING",
    "PENDING",
    "RUNNING",
    "DEPROVISIONING",
    "STOPPED",
)
# Resource kinds, torn down in the reverse of the order they are created.
TEARDOWN_ORDER = ("task", "container", "snapshot", "lease", "taskdir", "cni", "netns")


def _containerd_id(task_id: str, index: int, name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") or "c"
    return f"{task_id}-{index}-{safe}"


class Engine:
    def __init__(
        self, config: AgentConfig, store: Store, client: Containerd, network: TaskNetwork
    ) -> None:
        self.config = config
        self.store = store
        self.client = client
        self.network = network
        self.shim_path = config.shim_path or default_shim_path()
        self._lifecycles: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._stopped: dict[str, asyncio.Event] = {}
        self._exits: dict[str, asyncio.Future[tuple[int, float]]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._events: asyncio.Task[None] | None = None

    # -- agent start / stop --------------------------------------------------------------
    async def start(self) -> None:
        await self.client.ensure_namespace()
        for d in (self.config.log_dir, self.config.task_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        subscribed = asyncio.Event()
        self._events = asyncio.create_task(self._watch_exits(subscribed))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(subscribed.wait(), 5)
        await self._recover()

    async def close(self) -> None:
        """Leave tasks running (as the ECS agent does on update); stop watching them."""
        for t in [self._events, *self._lifecycles.values(), *self._background]:
            if t is not None and not t.done():
                t.cancel()
        await asyncio.gather(
            *[t for t in [self._events, *self._lifecycles.values(), *self._background] if t],
            return_exceptions=True,
        )

    # -- queries -------------------------------------------------------------------------
    def get(self, ref: str) -> TaskRecord:
        """A task by id or unique id prefix."""
        task = self.store.get_task(ref)
        if task:
            return task
        matches = [t for t in self.store.list_tasks() if t.id.startswith(ref)] if ref else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise TaskNotFound(f"task id prefix {ref!r} is ambiguous ({len(matches)} tasks match)")
        raise TaskNotFound(f"no such task: {ref}")

    def list(self, *, all_tasks: bool = False) -> list[TaskRecord]:
        return [t for t in self.store.list_tasks() if all_tasks or t.last_status != STOPPED]

    async def wait(self, task_id: str) -> TaskRecord:
        task = self.get(task_id)
        if task.last_status != STOPPED:
            await self._stopped_event(task.id).wait()
        return self.get(task.id)

    # -- accept --------------------------------------------------------------------------
    async def submit(
        self, definition: Any, *, source: str = "", env: dict[str, str] | None = None
    ) -> TaskRecord:
        """Validate, persist and start a task; returns at once with the PROVISIONING record."""
        t0 = time.monotonic()
        td = parse_task_definition(definition, source=source)
        for w in td.warnings:
            log.warning("task_definition_warning", source=source, warning=w)
        for image in sorted({c.image for c in td.containers}):
            # No registry pulls yet: an image must have been imported. Refuse before
            # anything is created, naming the image and how to get it.
            if await self.client.get_image(image) is None:
                raise ImageNotFound(
                    f"image {image} is not present in containerd namespace "
                    f"{self.config.namespace}; import it with `nstask image import FILE`",
                    image=image,
                )
        task_id = uuid.uuid4().hex
        log_dir = self.config.log_dir / task_id
        containers = [
            ContainerRecord(
                task_id=task_id,
                name=c.name,
                position=i,
                containerd_id=_containerd_id(task_id, i, c.name),
                image=c.image,
                log_path=str(log_dir / f"{i}-{re.sub(r'[^A-Za-z0-9_-]', '_', c.name)}.log"),
                essential=c.essential,
            )
            for i, c in enumerate(td.containers)
        ]
        task = TaskRecord(
            id=task_id,
            family=td.family,
            definition=definition,
            source=source,
            overrides={"environment": env or {}},
            last_status=PROVISIONING,
            desired_status=RUNNING,
            created_at=time.time(),
            containers=containers,
        )
        task.timings["accept"] = _ms(t0)
        self.store.insert_task(task)
        self._stopped[task_id] = asyncio.Event()
        self._lifecycles[task_id] = asyncio.create_task(
            self._launch(task, with_environment(td, env or {}))
        )
        log.info("task_accepted", task=task_id, family=td.family, source=source)
        return task

    # -- start ---------------------------------------------------------------------------
    async def _launch(self, task: TaskRecord, td: TaskDefinition) -> None:
        t_start = time.monotonic()
        try:
            async with self._lock(task.id):
                configs: dict[str, images.ImageConfig] = {}
                await self._provision(task, td)
                if task.desired_status == RUNNING:
                    task.last_status = PENDING
                    self.store.update_task(task)
                    configs = await self._pull(task, td)
                for c, cdef in zip(task.containers, td.containers, strict=True):
                    if task.desired_status != RUNNING:
                        break
                    await self._start_container(task, c, cdef, configs[cdef.image], td)
                if task.desired_status == RUNNING:
                    task.last_status = RUNNING
                    task.started_at = time.time()
                    task.timings["start_total"] = _ms(t_start)
                    self.store.update_task(task)
                    log.info("task_running", task=task.id, ip=task.ip, timings=task.timings)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # every failure to start ends in a full rollback
            reason = f"failed to start: {e}"
            log.error(
                "task_start_failed",
                task=task.id,
                error=str(e),
                exc_info=not isinstance(e, NstaskError),
            )
            self._spawn(self.stop(task.id, reason=reason, timeout=0))
            return
        # An essential container may have exited while the others were starting.
        if task.desired_status == RUNNING and any(
            c.essential and c.last_status == STOPPED for c in self.get(task.id).containers
        ):
            self._spawn(self.stop(task.id, reason="Essential container in task exited"))

    async def _provision(self, task: TaskRecord, td: TaskDefinition) -> None:
        """Network first, as the ECS agent and Fargate do."""
        mode = td.network_mode
        task_dir = self.config.task_dir / task.id
        self.store.intend("taskdir", str(task_dir), task.id)
        task_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.store.created("taskdir", str(task_dir))
        if mode == "host":
            return
        name = self.config.netns_prefix + task.id
        with self._phase(task, "network.netns"):
            self.store.intend("netns", name, task.id)
            path = await self.network.create_netns(name)
            self.store.created("netns", name, path=path)
            task.netns = path
            self.store.update_task(task)
        if mode == "none":
            return
        ports = (
            [
                {
                    "hostPort": p.host_port or p.container_port,
                    "containerPort": p.container_port,
                    "protocol": p.protocol,
                }
                for c in td.containers
                for p in c.port_mappings
            ]
            if mode == "bridge"
            else []
        )
        key = f"{self.network.name}/{task.id}/eth0"
        with self._phase(task, "network.cni"):
            self.store.intend("cni", key, task.id, netns=path)
            ip = await self.network.attach(task.id, path, port_mappings=ports)
            self.store.created("cni", key, netns=path, ip=ip)
            task.ip = ip
            self.store.update_task(task)

    async def _pull(self, task: TaskRecord, td: TaskDefinition) -> dict[str, images.ImageConfig]:
        """Every image present and unpacked before any container starts."""
        out: dict[str, images.ImageConfig] = {}
        with self._phase(task, "images"):
            for cdef in td.containers:
                if cdef.image not in out:
                    out[cdef.image] = await images.ensure_unpacked(
                        self.client, cdef.image, snapshotter=self.config.snapshotter
                    )
        for c in task.containers:
            c.image_digest = out[c.image].digest
        self.store.update_task(task)
        return out

    async def _start_container(
        self,
        task: TaskRecord,
        c: ContainerRecord,
        cdef: ContainerDefinition,
        image: images.ImageConfig,
        td: TaskDefinition,
    ) -> None:
        cid = c.containerd_id
        lease = f"nstask-{task.id}"
        with self._phase(task, f"container.{c.name}.create"):
            if not any(r.kind == "lease" for r in self.store.resources(task.id)):
                self.store.intend("lease", lease, task.id)
                await self.client.create_lease(lease, labels={"nstask.task": task.id})
                self.store.created("lease", lease)
            self.store.intend("snapshot", cid, task.id)
            mounts = await self.client.prepare_snapshot(
                cid, image.chain_id, snapshotter=self.config.snapshotter, lease=lease
            )
            self.store.created("snapshot", cid)
            oci = self._spec(task, c, cdef, image, td)
            self.store.intend("container", cid, task.id)
            await self.client.create_container(
                cid,
                image=cdef.image,
                spec=oci,
                snapshotter=self.config.snapshotter,
                snapshot_key=cid,
                runtime=self.config.runtime,
                labels={"nstask.task": task.id, "nstask.container": c.name},
                lease=lease,
            )
            self.store.created("container", cid)
        with self._phase(task, f"container.{c.name}.start"):
            Path(c.log_path).parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            uri = (
                f"binary://{self.shim_path}?driver=json-file&path={quote(c.log_path)}"
                f"&task={task.id}&container={quote(c.name)}"
            )
            self.store.intend("task", cid, task.id)
            await self.client.create_task(cid, rootfs=mounts, stdout=uri, stderr=uri)
            self.store.created("task", cid)
            if not Path(c.log_path).exists():
                # containerd takes the readiness pipe's EOF as "ready": a shim that failed at
                # start is only visible as a missing log file.
                raise NstaskError(
                    f"container {c.name}: the logging shim {self.shim_path} did not start "
                    f"(no log file at {c.log_path})"
                )
            self._watch(task.id, c)  # the exit wait is registered before start
            c.pid = await self.client.start_task(cid)
            c.last_status = RUNNING
            c.started_at = time.time()
            self.store.update_task(task)
        log.info("container_started", task=task.id, container=c.name, pid=c.pid)

    def _spec(
        self,
        task: TaskRecord,
        c: ContainerRecord,
        cdef: ContainerDefinition,
        image: images.ImageConfig,
        td: TaskDefinition,
    ) -> dict[str, Any]:
        task_dir = self.config.task_dir / task.id
        hostname = cdef.hostname or task.id[:12]
        files = {}
        if td.network_mode != "host":
            (task_dir / "hosts").write_text(spec.hosts_file(hostname, task.ip))
            (task_dir / "resolv.conf").write_text(spec.resolv_conf(self.config.dns_servers))
            (task_dir / "hostname").write_text(hostname + "\n")
            files = {
                "/etc/hosts": str(task_dir / "hosts"),
                "/etc/resolv.conf": str(task_dir / "resolv.conf"),
                "/etc/hostname": str(task_dir / "hostname"),
            }
        args = spec.resolve_args(
            image_entrypoint=image.entrypoint,
            image_cmd=image.cmd,
            entry_point=cdef.entry_point,
            command=cdef.command,
        )
        if not args:
            raise NotFound(
                f"container {c.name}: no command: the image {cdef.image} has no "
                "ENTRYPOINT or CMD and the definition gives no entryPoint or command"
            )
        environment = [
            *image.env,
            f"HOSTNAME={hostname}",
            *(f"{k}={v}" for k, v in cdef.environment),
        ]
        return spec.compose(
            spec.with_process_args(args),
            spec.with_env(environment),
            spec.with_cwd(cdef.working_directory or image.workdir),
            spec.with_user(cdef.user or image.user),
            spec.with_hostname(hostname if td.network_mode != "host" else os.uname().nodename),
            spec.with_netns(task.netns),
            spec.with_readonly_rootfs(cdef.readonly_root_filesystem),
            spec.with_bind_files(files),
            spec.with_cgroup(f"/nstask/{c.containerd_id}"),
            spec.with_limits(
                memory_mib=cdef.memory or (td.memory if len(td.containers) == 1 else None),
                reservation_mib=cdef.memory_reservation,
                cpu_units=cdef.cpu,
                cpu_quota_units=td.cpu,
            ),
            spec.with_labels(dict(cdef.labels)),
        )

    # -- running: exits ------------------------------------------------------------------
    def _watch(self, task_id: str, c: ContainerRecord) -> None:
        """Register the exit wait before start, so an exit cannot be missed."""
        fut: asyncio.Future[tuple[int, float]] = asyncio.get_running_loop().create_future()
        self._exits[c.containerd_id] = fut

        async def wait_rpc() -> None:
            with contextlib.suppress(NstaskError):
                st = await self.client.wait_task(c.containerd_id)
                self._exited(c.containerd_id, st.code, st.exited_at)

        async def on_exit() -> None:
            code, at = await fut
            await self._container_exited(task_id, c.name, code, at)

        self._spawn(wait_rpc())
        self._spawn(on_exit())

    def _exited(self, containerd_id: str, code: int, at: float) -> None:
        fut = self._exits.get(containerd_id)
        if fut is not None and not fut.done():
            fut.set_result((code, at))

    async def _watch_exits(self, subscribed: asyncio.Event) -> None:
        """containerd's event stream is the main source of exits (the Wait RPC is the backup)."""
        delay = 0.5
        while True:
            try:
                stream = self.client.subscribe(
                    [f'topic=="/tasks/exit",namespace=="{self.client.namespace}"']
                )
                subscribed.set()
                async for ev in stream:
                    p = ev.payload
                    # The init process's exit (exec'd processes have ids of their own).
                    if isinstance(p, TaskExit) and p.id in ("", p.container_id):
                        self._exited(p.container_id, p.exit_status, p.exited_at)
                    delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("event_stream_lost", error=str(e), retry_in=delay)
            subscribed.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)

    async def _container_exited(self, task_id: str, name: str, code: int, at: float) -> None:
        task = self.store.get_task(task_id)
        if task is None:
            return
        for c in task.containers:
            if c.name == name and c.exit_code is None:
                c.exit_code, c.finished_at, c.last_status = code, at or time.time(), STOPPED
                self.store.update_task(task)
                log.info("container_exited", task=task_id, container=name, exit_code=code)
                if c.essential and task.desired_status == RUNNING:
                    self._spawn(self.stop(task_id, reason="Essential container in task exited"))
                elif all(x.last_status == STOPPED for x in task.containers):
                    self._spawn(self.stop(task_id, reason="All containers exited"))

    # -- stop ----------------------------------------------------------------------------
    async def stop(
        self, ref: str, *, reason: str = "Task stopped by user", timeout: float | None = None
    ) -> TaskRecord:
        """Stop signal, wait, SIGKILL, then tear down everything the task holds."""
        task = self.get(ref)
        if task.desired_status == RUNNING:
            task.desired_status = STOPPED
            task.stop_reason = reason
            self.store.update_task(task)
        async with self._lock(task.id):
            task = self.get(task.id)
            if task.last_status == STOPPED:
                return task
            t0 = time.monotonic()
            task.last_status = DEPROVISIONING
            self.store.update_task(task)
            td = parse_task_definition(task.definition, source=task.source)
            for c in reversed(task.containers):
                if c.last_status == RUNNING:
                    cdef = td.container(c.name)
                    wait = (
                        timeout
                        if timeout is not None
                        else (
                            cdef.stop_timeout
                            if cdef.stop_timeout is not None
                            else self.config.stop_timeout
                        )
                    )
                    await self._stop_container(task, c, wait)
            signal_ms = _ms(t0)
            t1 = time.monotonic()
            removed = await self._teardown(task)
            task = self.get(task.id)  # exit codes were recorded while stopping
            task.timings["stop.signal"] = signal_ms
            task.timings.update({f"stop.{kind}": ms for kind, ms in removed.items()})
            task.timings["stop.teardown"] = _ms(t1)
            task.last_status = STOPPED
            task.stopped_at = time.time()
            task.stop_reason = task.stop_reason or reason
            for c in task.containers:
                c.last_status = STOPPED
            self.store.update_task(task)
            log.info(
                "task_stopped", task=task.id, reason=task.stop_reason, exit_code=task.exit_code
            )
        self._stopped_event(task.id).set()
        return task

    async def _stop_container(self, task: TaskRecord, c: ContainerRecord, wait: float) -> None:
        fut = self._exits.get(c.containerd_id)
        try:
            await self.client.kill_task(c.containerd_id, signal.SIGTERM)
            if fut is not None and wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(fut), wait)
            if fut is None or not fut.done():
                log.info("container_sigkill", task=task.id, container=c.name, after_s=wait)
                await self.client.kill_task(c.containerd_id, signal.SIGKILL, all_processes=True)
                if fut is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(fut), 10)
        except NotFound:
            pass  # already gone
        if fut is not None and fut.done():
            # Let the exit handler record the exit code before teardown reads the record.
            await asyncio.sleep(0)
            code, at = fut.result()
            await self._container_exited(task.id, c.name, code, at)

    async def _teardown(self, task: TaskRecord) -> dict[str, float]:
        """Remove every resource recorded for the task, newest kind first; each step is
        retried on the next stop or agent start if it fails now. Returns ms per kind."""
        resources = self.store.resources(task.id)
        errors: list[str] = []
        took: dict[str, float] = {}
        for kind in TEARDOWN_ORDER:
            mine = [r for r in resources if r.kind == kind]
            if mine:
                t0 = time.monotonic()
            for r in mine:
                try:
                    await self._remove(kind, r.key, r.data)
                    self.store.removed(kind, r.key)
                except Exception as e:
                    errors.append(f"{kind} {r.key}: {e}")
                    log.error("teardown_failed", task=task.id, kind=kind, key=r.key, error=str(e))
            if mine:
                took[kind] = _ms(t0)
        if errors:
            raise NstaskError(
                f"task {task.id}: teardown left {len(errors)} resource(s): " + "; ".join(errors)
            )
        return took

    async def _remove(self, kind: str, key: str, data: dict[str, Any]) -> None:
        with contextlib.suppress(NotFound):
            if kind == "task":
                st = await self.client.get_task(key)
                if st is not None and st.status not in ("stopped", "STOPPED"):
                    await self.client.kill_task(key, signal.SIGKILL, all_processes=True)
                    fut = self._exits.get(key)
                    if fut is not None:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(asyncio.shield(fut), 10)
                await self.client.delete_task(key)
            elif kind == "container":
                await self.client.delete_container(key)
            elif kind == "snapshot":
                await self.client.remove_snapshot(key, snapshotter=self.config.snapshotter)
            elif kind == "lease":
                await self.client.delete_lease(key)
            elif kind == "taskdir":
                shutil.rmtree(key, ignore_errors=True)
            elif kind == "cni":
                _, task_id, ifname = key.rsplit("/", 2)
                await self.network.detach(task_id, data.get("netns"), ifname=ifname)
            elif kind == "netns":
                await self.network.remove_netns(key)

    async def remove(self, ref: str, *, force: bool = False) -> None:
        """Forget a stopped task and delete its logs (`nstask rm`, `run --rm`)."""
        task = self.get(ref)
        if task.last_status != STOPPED:
            if not force:
                raise NstaskError(
                    f"task {task.id} is {task.last_status}; stop it first or use --force"
                )
            await self.stop(task.id, timeout=0)
        shutil.rmtree(self.config.log_dir / task.id, ignore_errors=True)
        self.store.delete_task(task.id)
        self._stopped.pop(task.id, None)
        self._lifecycles.pop(task.id, None)
        for c in task.containers:
            self._exits.pop(c.containerd_id, None)

    # -- recovery ------------------------------------------------------------------------
    async def _recover(self) -> None:
        """Finish what a previous agent left: re-attach running tasks, stop half-started or
        half-stopped ones, and remove resources of stopped tasks."""
        for task in self.store.list_tasks():
            self._stopped.setdefault(task.id, asyncio.Event())
            if task.last_status == STOPPED:
                self._stopped[task.id].set()
                if self.store.resources(task.id):
                    await self._teardown(task)
                continue
            if task.last_status == RUNNING and task.desired_status == RUNNING:
                for c in task.containers:
                    if c.last_status != RUNNING:
                        continue
                    info = await self.client.get_task(c.containerd_id)
                    self._watch(task.id, c)
                    if info is None or info.status in ("stopped", "STOPPED"):
                        code = info.exit_status if info is not None else 255
                        self._exited(c.containerd_id, code, time.time())
                log.info("task_reattached", task=task.id)
                continue
            reason = task.stop_reason or f"agent restarted while the task was {task.last_status}"
            self._spawn(self.stop(task.id, reason=reason, timeout=0))
        for r in self.store.resources():
            if self.store.get_task(r.task_id) is None:
                await self._remove(r.kind, r.key, r.data)
                self.store.removed(r.kind, r.key)

    # -- helpers -------------------------------------------------------------------------
    def _lock(self, task_id: str) -> asyncio.Lock:
        return self._locks.setdefault(task_id, asyncio.Lock())

    def _stopped_event(self, task_id: str) -> asyncio.Event:
        return self._stopped.setdefault(task_id, asyncio.Event())

    def _spawn(self, coro: Any) -> None:
        t = asyncio.ensure_future(coro)
        self._background.add(t)
        t.add_done_callback(self._background.discard)
        t.add_done_callback(_log_failure)

    @contextlib.contextmanager
    def _phase(self, task: TaskRecord, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            task.timings[name] = _ms(t0)


def _ms(t0: float) -> float:
    return round((time.monotonic() - t0) * 1000, 2)


def _log_failure(t: asyncio.Future[Any]) -> None:
    if not t.cancelled() and t.exception() is not None:
        log.error("background_failure", error=str(t.exception()))
