"""The task lifecycle: accept -> network -> images -> containers -> running -> stopped.

The engine is the single owner of every host resource nstask creates. Each resource is
recorded in the state store as an intent before it is created, marked created after, and
deleted from the store once it is gone; teardown walks those records in reverse, so the same
code finishes a normal stop, rolls back a failed start and cleans up after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from agent import cgroups, containers, faults, health, images, network, pull, seccomp, spec
from agent.config import AgentConfig, default_shim_path
from agent.containerd import Containerd, TaskExit, TaskOOM
from agent.errors import (
    AlreadyExists,
    ImageNotFound,
    InvalidInput,
    NotFound,
    NstaskError,
    TaskNotFound,
)
from agent.network import TaskNetwork
from agent.secrets import SecretNotFound, SecretStore
from agent.store import ContainerRecord, Store, TaskRecord
from agent.taskdef import (
    ContainerDefinition,
    TaskDefinition,
    parse_task_definition,
    start_order,
    stop_order,
    with_environment,
)
from shim.stats import stats_path

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
TEARDOWN_ORDER = ("task", "container", "snapshot", "lease", "cgroup", "taskdir", "cni", "netns")
UNKNOWN = health.UNKNOWN
OOM_REASON = "OutOfMemoryError: Container killed due to memory usage"
# Recovery of one task at agent start is bounded, so no single task can wedge the agent.
RECOVER_TASK_TIMEOUT = 30.0


class DependencyError(NstaskError):
    kind = "dependency_failed"


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


def logging_stats(log_path: str) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(stats_path(log_path)).read_text())
    except (OSError, ValueError):
        return None
    return dict(data)


def _has_check(cdef: ContainerDefinition) -> bool:
    return cdef.health_check is not None and cdef.health_check.command[:1] != ("NONE",)


def _dependency_verdict(condition: str, dep: ContainerRecord) -> bool | str | None:
    """True: satisfied; a string: can never be satisfied (why); None: not yet."""
    stopped = dep.last_status == STOPPED
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


def _remove_tree(path: Path) -> None:
    """Remove a directory tree; it is gone when this returns, or an error says what is left
    (a resource is marked removed only once it is really gone)."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise NstaskError(
            f"cannot remove {path}: {e.strerror or e}"
            + (f" ({e.filename})" if e.filename and str(e.filename) != str(path) else "")
        ) from None
    if path.exists():
        raise NstaskError(f"cannot remove {path}: it is still there")


def _host_memory_mib() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return None


def _stop_plan_of(td: TaskDefinition) -> dict[str, Any]:
    """What a stop needs from the definition, kept with the task at submit."""
    return {
        "order": stop_order(td),
        "timeouts": {c.name: c.stop_timeout for c in td.containers},
    }


def _owed_stop(task: TaskRecord) -> str | None:
    """The stop a running task is owed by what its containers' records say, if any."""
    if task.desired_status != RUNNING:
        return None
    if any(c.essential and c.last_status == STOPPED for c in task.containers):
        return "Essential container in task exited"
    if any(c.essential and c.health == health.UNHEALTHY for c in task.containers):
        return "Task failed container health checks"
    if task.containers and all(c.last_status == STOPPED for c in task.containers):
        return "All containers exited"
    return None


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
        self._health: dict[str, asyncio.Future[None]] = {}
        self._conditions: dict[str, asyncio.Condition] = {}
        self.secrets = SecretStore(config.state_dir / "secrets")
        self._oom: set[str] = set()
        self._live: dict[str, TaskRecord] = {}
        self._retrying: set[str] = set()

    # -- agent start / stop --------------------------------------------------------------
    async def start(self) -> None:
        await self.client.ensure_namespace()
        try:  # read once here, off the event loop; containers then use the cached profile
            await asyncio.to_thread(seccomp.default_profile)
        except NstaskError as e:
            log.warning("seccomp_profile_unavailable", error=e.message)
        for d in (self.config.log_dir, self.config.task_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        subscribed = asyncio.Event()
        self._events = asyncio.create_task(self._watch_exits(subscribed))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(subscribed.wait(), 5)
        await self._recover()
        # Attachments in the CNI cache or IPAM that no task owns (a crash before the intent
        # was recorded, another runtime's leftovers on our network): DEL them.
        from agent import gc

        await gc.collect(self, cni_only=True)

    async def close(self) -> None:
        """Leave tasks running (as the ECS agent does on update); stop watching them."""
        for t in [
            self._events,
            *self._lifecycles.values(),
            *self._background,
            *self._health.values(),
        ]:
            if t is not None and not t.done():
                t.cancel()
        await asyncio.gather(
            *[
                t
                for t in [
                    self._events,
                    *self._lifecycles.values(),
                    *self._background,
                    *self._health.values(),
                ]
                if t
            ],
            return_exceptions=True,
        )

    # -- queries -------------------------------------------------------------------------
    def get(self, ref: str) -> TaskRecord:
        """A task by id or unique id prefix. A task that is not stopped has exactly one
        record object in the agent (start, exits, health and stop all change that one,
        written through to the store), so no stale copy can overwrite another's change."""
        live = self._live.get(ref)
        if live is not None:
            return live
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
        if task.id in self._live:
            return self._live[task.id]
        if task.last_status != STOPPED:
            self._live[task.id] = task
        return task

    def list_tasks(self, *, all_tasks: bool = False) -> list[TaskRecord]:
        return [
            self._live.get(t.id, t)
            for t in self.store.list_tasks()
            if all_tasks or t.last_status != STOPPED
        ]

    async def wait(self, task_id: str) -> TaskRecord:
        task = self.get(task_id)
        if task.last_status != STOPPED:
            await self._stopped_event(task.id).wait()
        return self.get(task.id)

    # -- accept --------------------------------------------------------------------------
    async def submit(
        self, definition: Any, *, source: str = "", env: dict[str, str] | None = None
    ) -> TaskRecord:
        """Validate, persist and start a task; returns at once with the PROVISIONING record.

        Everything that can be checked without touching the host is checked here, so a task
        that cannot run is refused before anything is created."""
        t0 = time.monotonic()
        td = with_environment(parse_task_definition(definition, source=source), env or {})
        for w in td.warnings:
            log.warning("task_definition_warning", source=source, warning=w)
        env_files = await self._precheck(td)
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
                health=UNKNOWN if _has_check(c) else None,
            )
            for i, c in enumerate(td.containers)
        ]
        task = TaskRecord(
            id=task_id,
            family=td.family,
            definition=definition,
            source=source,
            overrides={"environment": env or {}, "stop": _stop_plan_of(td)},
            last_status=PROVISIONING,
            desired_status=RUNNING,
            created_at=time.time(),
            containers=containers,
        )
        task.timings["accept"] = _ms(t0)
        self.store.insert_task(task)
        self._live[task_id] = task
        self._stopped[task_id] = asyncio.Event()
        self._lifecycles[task_id] = asyncio.create_task(self._launch(task, td, env_files))
        log.info("task_accepted", task=task_id, family=td.family, source=source)
        return task

    async def _precheck(self, td: TaskDefinition) -> dict[str, list[tuple[str, str]]]:
        """Returns the environment files' contents, read here once, off the event loop."""
        for image in sorted({c.image for c in td.containers}):
            # A local (.local) image is never pulled: it must have been imported.
            if pull.is_local(image) and await self.client.get_image(image) is None:
                raise ImageNotFound(
                    f"image {image} is not present in containerd namespace "
                    f"{self.config.namespace}; import it with `nstask image import FILE`",
                    image=image,
                )
        missing = containers.missing_secrets(td, self.secrets)
        if missing:
            raise SecretNotFound(
                "secret(s) not in the local secret store: "
                + ", ".join(missing)
                + "; add each with `nstask secret put NAME`",
                secrets=missing,
            )
        env_files = await asyncio.to_thread(containers.read_environment_files, td)
        self._check_host_volumes(td)
        self._check_host_limits(td)
        for i, c in enumerate(td.containers):
            if c.user:
                try:
                    spec.parse_user(c.user)
                except InvalidInput as e:
                    raise InvalidInput(f"containerDefinitions[{i}].user: {e.message}") from None
        if td.network_mode in ("bridge", "host"):
            self._ports_for(td, check_only=True)
        return env_files

    def _protected_paths(self) -> list[tuple[Path, str]]:
        cfg = self.config
        return [
            (cfg.state_dir, "the agent's state directory"),
            (cfg.run_dir, "the agent's runtime directory"),
            (cfg.socket.parent, "the directory of the agent's API socket"),
            (Path(cfg.containerd_address).parent, "containerd's socket directory"),
        ]

    def _check_host_volumes(self, td: TaskDefinition) -> None:
        """Host volumes are allowed, as ECS allows them, but never onto what runs the host's
        tasks: a task with the agent's state or containerd's socket can drive both (issue
        9). Symlinks are resolved first. --allow-host-path lets an operator say otherwise."""
        allowed = [Path(os.path.realpath(p)) for p in self.config.allow_host_paths]
        protected = [(Path(os.path.realpath(p)), what) for p, what in self._protected_paths()]
        for i, v in enumerate(td.volumes):
            if v.host_path is None:
                continue
            at = f"volumes[{i}].host.sourcePath"
            if not Path(v.host_path).exists():
                raise InvalidInput(f"{at}: host path {v.host_path} does not exist")
            real = Path(os.path.realpath(v.host_path))
            if any(real == a or a in real.parents for a in allowed):
                continue
            for p, what in protected:
                if real == p or p in real.parents:
                    shown = v.host_path if str(real) == v.host_path else f"{v.host_path} ({real})"
                    raise InvalidInput(
                        f"{at}: {shown} is {what} or inside it ({p}); a task with it could "
                        "drive the agent or containerd. Start the agent with "
                        f"--allow-host-path {real} to allow it"
                    )

    def _check_host_limits(self, td: TaskDefinition) -> None:
        """Limits within ECS's ranges (validation checks those) but beyond this host: set as
        asked, since a Fargate size must run unchanged, with a warning saying so."""
        host_mib = _host_memory_mib()
        host_units = (os.cpu_count() or 1) * 1024
        asks = [("memory", td.memory)] + [
            (f"containerDefinitions[{i}].memory", c.memory) for i, c in enumerate(td.containers)
        ]
        for where, mib in asks:
            if mib is not None and host_mib is not None and mib > host_mib:
                log.warning(
                    "limit_above_host",
                    field=where,
                    warning=f"{where}: {mib} MiB is more than this host has ({host_mib} MiB); "
                    "the limit is set but cannot be reached",
                )
        if td.cpu is not None and td.cpu > host_units:
            log.warning(
                "limit_above_host",
                field="cpu",
                warning=f"cpu: {td.cpu} units is more than this host has ({host_units} "
                "units); the task gets at most the host's CPUs",
            )

    def _ports_for(self, td: TaskDefinition, *, check_only: bool = False) -> list[dict[str, Any]]:
        """Host ports of the task (bridge: published through portmap; host: the container's
        own). A port in use on the host or by another task is refused; 0 or none in bridge
        mode gets a free port."""
        taken = {(p["hostPort"], p["protocol"]) for t in self.list_tasks() for p in t.ports}
        out = []
        for c in td.containers:
            for pm in c.port_mappings:
                host_port = pm.host_port or (pm.container_port if td.network_mode == "host" else 0)
                if host_port == 0:
                    host_port = 0 if check_only else network.free_host_port(pm.protocol)
                elif (host_port, pm.protocol) in taken or not network.host_port_free(
                    host_port, pm.protocol
                ):
                    raise AlreadyExists(
                        f"containerDefinitions {c.name}: host port {host_port}/{pm.protocol} "
                        "is already in use on this host",
                        port=host_port,
                    )
                out.append(
                    {
                        "containerName": c.name,
                        "containerPort": pm.container_port,
                        "hostPort": host_port,
                        "protocol": pm.protocol,
                    }
                )
                taken.add((host_port, pm.protocol))
        return out

    # -- start ---------------------------------------------------------------------------
    async def _launch(
        self, task: TaskRecord, td: TaskDefinition, env_files: dict[str, list[tuple[str, str]]]
    ) -> None:
        t_start = time.monotonic()
        try:
            async with self._lock(task.id):
                await self._provision(task, td)
                with self._phase(task, "secrets"):
                    envs = {
                        c.name: containers.resolve_environment(c, self.secrets, env_files)
                        for c in td.containers
                    }
                    log_secrets = {
                        c.name: containers.resolve_log_secrets(c, self.secrets)
                        for c in td.containers
                    }
                task.last_status = PENDING
                self._save(task)
                configs = await self._pull(task, td)
                by_name = {c.name: c for c in task.containers}
                started = 0
                for name in start_order(td):
                    if task.desired_status != RUNNING:
                        break
                    cdef = td.container(name)
                    with self._phase(task, f"container.{name}.dependencies"):
                        await self._wait_dependencies(task, td, cdef)
                    if task.desired_status != RUNNING:
                        break
                    await self._start_container(
                        task,
                        by_name[name],
                        cdef,
                        configs[cdef.image],
                        td,
                        envs[name],
                        log_secrets[name],
                    )
                    started += 1
                if started == len(td.containers):
                    # Every container started (some may already have exited, and the task be
                    # on its way to STOPPED: it still ran, as ECS reports it).
                    task.started_at = time.time()
                    task.timings["start_total"] = _ms(t_start)
                    if task.desired_status == RUNNING:
                        task.last_status = RUNNING
                    self._save(task)
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
        """Task directory, volumes and cgroup, then the network, as the ECS agent does."""
        task_dir = self.config.task_dir / task.id
        self.store.intend("taskdir", str(task_dir), task.id)
        task_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.store.created("taskdir", str(task_dir))
        containers.prepare_volumes(td, task_dir)
        self.store.intend("cgroup", cgroups.task_path(task.id), task.id)
        await asyncio.to_thread(
            cgroups.create,
            task.id,
            memory_mib=td.memory,
            cpu_units=td.cpu,
            pids_limit=self.config.pids_limit,
        )
        self.store.created("cgroup", cgroups.task_path(task.id))
        mode = td.network_mode
        if mode in ("bridge", "host"):
            task.ports = self._ports_for(td)
            self._save(task)
        if mode == "host":
            return
        name = self.config.netns_prefix + task.id
        with self._phase(task, "network.netns"):
            self.store.intend("netns", name, task.id)
            path = await self.network.create_netns(name)
            self.store.created("netns", name, path=path)
            faults.point("netns")
            task.netns = path
            self._save(task)
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
        key = f"{self.network.name}/{task.id}/eth0"
        with self._phase(task, "network.cni"):
            self.store.intend("cni", key, task.id, netns=path)
            ip = await self.network.attach(task.id, path, port_mappings=mappings)
            self.store.created("cni", key, netns=path, ip=ip)
            faults.point("cni")
            task.ip = ip
            self._save(task)

    async def _pull(self, task: TaskRecord, td: TaskDefinition) -> dict[str, images.ImageConfig]:
        """Every image present and unpacked before any container starts."""
        out: dict[str, images.ImageConfig] = {}
        with self._phase(task, "images"):
            for cdef in td.containers:
                if cdef.image not in out:
                    out[cdef.image] = await pull.ensure_image(
                        self.client,
                        cdef.image,
                        policy=self.config.pull_policy,
                        snapshotter=self.config.snapshotter,
                        insecure=self.config.insecure_registries,
                    )
        for c in task.containers:
            c.image_digest = out[c.image].digest
        self._save(task)
        faults.point("images")
        return out

    async def _wait_dependencies(
        self, task: TaskRecord, td: TaskDefinition, cdef: ContainerDefinition
    ) -> None:
        """dependsOn, as the ECS agent resolves it: START (running or already stopped),
        COMPLETE (stopped), SUCCESS (stopped with 0), HEALTHY; each bounded by the
        dependency's startTimeout."""
        for dep in cdef.depends_on:
            target = td.container(dep.container_name)
            timeout = (
                target.start_timeout
                if target.start_timeout is not None
                else self.config.start_timeout
            )
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                if task.desired_status != RUNNING:
                    return
                rec = next(c for c in self.get(task.id).containers if c.name == dep.container_name)
                verdict = _dependency_verdict(dep.condition, rec)
                if verdict is True:
                    break
                if isinstance(verdict, str):
                    raise DependencyError(
                        f"container {cdef.name}: dependency {dep.container_name} "
                        f"({dep.condition}) failed: {verdict}"
                    )
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    raise DependencyError(
                        f"container {cdef.name}: dependency {dep.container_name} did not reach "
                        f"{dep.condition} within its startTimeout ({timeout:g} s)"
                    )
                await self._changed(task.id, min(remaining, 1.0))

    async def _start_container(
        self,
        task: TaskRecord,
        c: ContainerRecord,
        cdef: ContainerDefinition,
        image: images.ImageConfig,
        td: TaskDefinition,
        env: list[str],
        log_secrets: dict[str, str],
    ) -> None:
        cid = c.containerd_id
        lease = f"nstask-{task.id}"
        ctx = containers.TaskContext(
            task_id=task.id,
            task_dir=self.config.task_dir / task.id,
            network_mode=td.network_mode,
            netns=task.netns,
            ip=task.ip,
            dns_servers=self.config.dns_servers,
            cgroup_parent=cgroups.task_path(task.id),
        )
        with self._phase(task, f"container.{c.name}.create"):
            oci = containers.build_spec(ctx, td, cdef, c.position, cid, image, env)
            c.stop_signal = containers.stop_signal(cdef, image)
            if not any(r.kind == "lease" for r in self.store.resources(task.id)):
                self.store.intend("lease", lease, task.id)
                await self.client.create_lease(lease, labels={"nstask.task": task.id})
                self.store.created("lease", lease)
            self.store.intend("snapshot", cid, task.id)
            mounts = await self.client.prepare_snapshot(
                cid, image.chain_id, snapshotter=self.config.snapshotter, lease=lease
            )
            self.store.created("snapshot", cid)
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
            faults.point("container")
        with self._phase(task, f"container.{c.name}.start"):
            Path(c.log_path).parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            options_file = containers.log_options_file(ctx.task_dir, c.position)
            uri, log_options = containers.log_uri(
                self.shim_path,
                task_id=task.id,
                family=td.family,
                task_dir=ctx.task_dir,
                cdef=cdef,
                log_path=c.log_path,
                options_file=options_file,
                secret_options=log_secrets,
            )
            if log_options:
                containers.write_log_options(options_file, log_options)
            stats = Path(stats_path(c.log_path))
            stats.unlink(missing_ok=True)
            self.store.intend("task", cid, task.id)
            try:
                await self.client.create_task(
                    cid, rootfs=mounts, stdout=uri or "", stderr=uri or ""
                )
            finally:
                # The shim read its options before it signalled readiness, which
                # Tasks.Create waits for: the secrets need not stay on disk.
                options_file.unlink(missing_ok=True)
            self.store.created("task", cid)
            faults.point("task")
            if uri is not None:
                _check_shim_started(c.name, self.shim_path, stats)
            self._watch(task.id, c)  # the exit wait is registered before start
            c.pid = await self.client.start_task(cid)
            c.started_at = time.time()
            if c.exit_code is None:  # it may already have exited
                c.last_status = RUNNING
            self._save(task)
            faults.point("started")
        if cdef.health_check is not None and _has_check(cdef):
            self._start_health(task.id, c, cdef, oci["process"])
        log.info("container_started", task=task.id, container=c.name, pid=c.pid)

    # -- running: health ----------------------------------------------------------------
    def _start_health(
        self, task_id: str, c: ContainerRecord, cdef: ContainerDefinition, process: dict[str, Any]
    ) -> None:
        check = cdef.health_check
        assert check is not None

        async def on_change(status: str) -> None:
            task = self.get(task_id)
            rec = next(x for x in task.containers if x.name == c.name)
            rec.health = status
            self._save(task)
            log.info("container_health", task=task_id, container=c.name, health=status)
            if status == health.UNHEALTHY and rec.essential and task.desired_status == RUNNING:
                self._spawn(self.stop(task_id, reason="Task failed container health checks"))

        t = asyncio.ensure_future(
            health.monitor(self.client, c.containerd_id, process, check, on_change)
        )
        self._health[c.containerd_id] = t
        t.add_done_callback(_log_failure)

    def _stop_health(self, c: ContainerRecord) -> None:
        t = self._health.pop(c.containerd_id, None)
        if t is not None:
            t.cancel()

    # -- running: exits ------------------------------------------------------------------
    def _watch(self, task_id: str, c: ContainerRecord) -> None:
        """Register the exit wait before start, so an exit cannot be missed."""
        fut: asyncio.Future[tuple[int, float]] = asyncio.get_running_loop().create_future()
        self._exits[c.containerd_id] = fut

        async def on_exit() -> None:
            code, at = await fut
            await self._container_exited(task_id, c.name, code, at)

        self._spawn(self._wait_rpc(c.containerd_id))
        self._spawn(on_exit())

    async def _wait_rpc(self, containerd_id: str) -> None:
        """Tasks.Wait: returns at the exit, or at once for a task that already exited."""
        with contextlib.suppress(NstaskError):
            st = await self.client.wait_task(containerd_id)
            self._exited(containerd_id, st.code, st.exited_at)

    def _catch_up(self) -> None:
        """After containerd came back: wait again on every container we think runs, so an
        exit that happened while containerd was away is seen (Wait answers it at once)."""
        for task in self.list_tasks():
            for c in task.containers:
                if c.last_status == RUNNING and c.exit_code is None:
                    self._spawn(self._wait_rpc(c.containerd_id))

    def _exited(self, containerd_id: str, code: int, at: float) -> None:
        fut = self._exits.get(containerd_id)
        if fut is not None and not fut.done():
            fut.set_result((code, at))

    async def _watch_exits(self, subscribed: asyncio.Event) -> None:
        """containerd's event stream is the main source of exits (the Wait RPC is the backup)."""
        delay = 0.5
        lost = False
        while True:
            try:
                stream = self.client.subscribe(
                    [
                        f'topic=="/tasks/exit",namespace=="{self.client.namespace}"',
                        f'topic=="/tasks/oom",namespace=="{self.client.namespace}"',
                    ]
                )
                subscribed.set()
                async for ev in stream:
                    if lost:
                        log.info("event_stream_restored")
                        lost = False
                        self._catch_up()
                    p = ev.payload
                    # The init process's exit (exec'd processes have ids of their own).
                    if isinstance(p, TaskExit) and p.id in ("", p.container_id):
                        self._exited(p.container_id, p.exit_status, p.exited_at)
                    elif isinstance(p, TaskOOM):
                        self._oom.add(p.container_id)
                    delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("event_stream_lost", error=str(e), retry_in=delay)
            lost = True
            subscribed.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)
            with contextlib.suppress(NstaskError):
                await self.client.version()  # containerd answers again: catch up now
                if lost:
                    log.info("containerd_reachable_again")
                    lost = False
                    self._catch_up()

    async def _container_exited(self, task_id: str, name: str, code: int, at: float) -> None:
        try:
            task = self.get(task_id)
        except TaskNotFound:
            return
        for c in task.containers:
            if c.name == name and c.exit_code is None:
                c.exit_code, c.finished_at, c.last_status = code, at or time.time(), STOPPED
                self._stop_health(c)
                if c.containerd_id in self._oom or (code == 137 and await self._oom_killed(c)):
                    c.reason = OOM_REASON
                self._save(task)
                log.info(
                    "container_exited",
                    task=task_id,
                    container=name,
                    exit_code=code,
                    reason=c.reason,
                )
                faults.point("exited")
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
            self._save(task)
        async with self._lock(task.id):
            task = self.get(task.id)
            if task.last_status == STOPPED:
                return task
            t0 = time.monotonic()
            task.last_status = DEPROVISIONING
            self._save(task)
            try:
                signal_ms, removed, teardown_ms = await self._stop_and_teardown(task, timeout, t0)
            except NstaskError:
                # Something could not be stopped or removed now (containerd restarting,
                # say): the records stay, and the stop is tried again until it succeeds.
                if task.id not in self._retrying:
                    self._retrying.add(task.id)
                    self._spawn(self._retry_stop(task.id, reason))
                raise
            task = self.get(task.id)  # exit codes were recorded while stopping
            task.timings["stop.signal"] = signal_ms
            task.timings.update({f"stop.{kind}": ms for kind, ms in removed.items()})
            task.timings["stop.teardown"] = teardown_ms
            task.last_status = STOPPED
            task.stopped_at = time.time()
            task.stop_reason = task.stop_reason or reason
            for c in task.containers:
                c.last_status = STOPPED
            self._save(task)
            log.info(
                "task_stopped", task=task.id, reason=task.stop_reason, exit_code=task.exit_code
            )
        self._stopped_event(task.id).set()
        return task

    async def _stop_and_teardown(
        self, task: TaskRecord, timeout: float | None, t0: float
    ) -> tuple[float, dict[str, float], float]:
        """Stop signal, wait, SIGKILL for each container in stop order, then remove every
        recorded resource. Returns the signalling time and the per-kind teardown times."""
        order, timeouts = self._stop_plan(task)
        by_name = {c.name: c for c in task.containers}
        for c in [by_name[n] for n in order]:
            self._stop_health(c)
            if c.last_status == RUNNING:
                if timeout is not None:
                    wait = timeout
                elif timeouts.get(c.name) is not None:
                    wait = float(timeouts[c.name])  # type: ignore[arg-type]
                else:
                    wait = self.config.stop_timeout
                await self._stop_container(task, c, wait)
        signal_ms = _ms(t0)
        faults.point("stop")
        t1 = time.monotonic()
        removed = await self._teardown(task)
        return signal_ms, removed, _ms(t1)

    def _stop_plan(self, task: TaskRecord) -> tuple[list[str], dict[str, float | None]]:
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
        p = _stop_plan_of(td)
        return list(p["order"]), dict(p["timeouts"])

    async def _retry_stop(self, task_id: str, reason: str) -> None:
        """One retry loop per task, with backoff, until its teardown succeeds."""
        delay = 1.0
        try:
            while True:
                await asyncio.sleep(delay)
                try:
                    await self.stop(task_id, reason=reason, timeout=0)
                    return
                except TaskNotFound:
                    return
                except NstaskError as e:
                    log.warning("stop_retry_failed", task=task_id, error=str(e), retry_in=delay)
                    delay = min(delay * 2, 30)
        finally:
            self._retrying.discard(task_id)

    async def _stop_container(self, task: TaskRecord, c: ContainerRecord, wait: float) -> None:
        fut = self._exits.get(c.containerd_id)
        try:
            await self.client.kill_task(c.containerd_id, c.stop_signal or signal.SIGTERM)
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
            if kind == "cni":
                faults.point("teardown")
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
            elif kind == "cgroup":
                await asyncio.to_thread(cgroups.remove, key.rsplit("/", 1)[-1])
            elif kind == "taskdir":
                await asyncio.to_thread(_remove_tree, Path(key))
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
        await asyncio.to_thread(_remove_tree, self.config.log_dir / task.id)
        self.store.delete_task(task.id)
        self._live.pop(task.id, None)
        self._stopped.pop(task.id, None)
        self._lifecycles.pop(task.id, None)
        for c in task.containers:
            self._exits.pop(c.containerd_id, None)

    # -- recovery ------------------------------------------------------------------------
    async def _recover(self) -> None:
        """Finish what a previous agent left: re-attach running tasks, stop half-started or
        half-stopped ones, and remove resources of stopped tasks. One task whose record
        cannot be processed is stopped with the reason; it never keeps the agent from
        starting (issue 9: a stored 2,000-container task wedged every restart)."""
        for stored in self.store.list_tasks():
            try:
                await asyncio.wait_for(self._recover_task(stored.id), RECOVER_TASK_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                why = str(e) or type(e).__name__
                if isinstance(e, TimeoutError):
                    why = f"recovery took longer than {RECOVER_TASK_TIMEOUT:g} s"
                reason = f"the agent could not recover the task: {why}"
                log.error(
                    "task_recovery_failed",
                    task=stored.id,
                    error=why,
                    exc_info=not isinstance(e, NstaskError | TimeoutError),
                )
                task = self.get(stored.id)
                if task.last_status != STOPPED:
                    task.desired_status = STOPPED
                    task.stop_reason = task.stop_reason or reason
                    self._save(task)
                    self._spawn(self.stop(task.id, reason=reason, timeout=0))
        for r in self.store.resources():
            if self.store.get_task(r.task_id) is None:
                try:
                    await self._remove(r.kind, r.key, r.data)
                    self.store.removed(r.kind, r.key)
                except NstaskError as e:
                    log.error("orphan_removal_failed", kind=r.kind, key=r.key, error=str(e))

    async def _recover_task(self, task_id: str) -> None:
        task = self.get(task_id)
        self._stopped.setdefault(task.id, asyncio.Event())
        if task.last_status == STOPPED:
            self._stopped[task.id].set()
            if self.store.resources(task.id):
                await self._teardown(task)
            return
        if task.last_status == RUNNING and task.desired_status == RUNNING:
            td = parse_task_definition(task.definition, source=task.source)
            for c in task.containers:
                if c.last_status != RUNNING:
                    continue
                info = await self.client.get_task(c.containerd_id)
                self._watch(task.id, c)
                if info is None or info.status in ("stopped", "STOPPED"):
                    code = info.exit_status if info is not None else 255
                    self._exited(c.containerd_id, code, time.time())
                    continue
                cdef = td.container(c.name)
                ctr = await self.client.get_container(c.containerd_id)
                if _has_check(cdef) and ctr is not None and ctr.spec:
                    self._start_health(task.id, c, cdef, dict(ctr.spec["process"]))
            log.info("task_reattached", task=task.id)
            # Decisions the previous agent had taken, or owed, when it died (issue 9: an
            # essential exit recorded just before a crash left the task RUNNING for good).
            reason = _owed_stop(task)
            if reason is not None:
                self._spawn(self.stop(task.id, reason=reason))
            return
        reason = task.stop_reason or f"agent restarted while the task was {task.last_status}"
        self._spawn(self.stop(task.id, reason=reason, timeout=0))

    # -- helpers -------------------------------------------------------------------------
    def _save(self, task: TaskRecord) -> None:
        """Persist and wake whoever waits on this task's containers (dependsOn)."""
        self.store.update_task(task)
        for c in task.containers:
            self.store.update_container(c)
        if task.last_status == STOPPED:
            self._live.pop(task.id, None)
        cond = self._conditions.get(task.id)
        if cond is not None:
            self._spawn(_notify(cond))

    async def _changed(self, task_id: str, timeout: float) -> None:
        cond = self._conditions.setdefault(task_id, asyncio.Condition())
        async with cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cond.wait(), timeout)

    async def _oom_killed(self, c: ContainerRecord) -> bool:
        """A SIGKILL exit right after an OOM event that the stream has not delivered yet."""
        await asyncio.sleep(0.05)
        return c.containerd_id in self._oom

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


async def _notify(cond: asyncio.Condition) -> None:
    async with cond:
        cond.notify_all()


def _ms(t0: float) -> float:
    return round((time.monotonic() - t0) * 1000, 2)


def _log_failure(t: asyncio.Future[Any]) -> None:
    if not t.cancelled() and t.exception() is not None:
        log.error("background_failure", error=str(t.exception()))
