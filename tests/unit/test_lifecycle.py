"""The task lifecycle against fakes of its seams (containerd, the network, cgroups, images):
start order, exit decisions, a stop that cancels a start, rollback, recovery, and memory
that stays flat over many tasks."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlparse

import pytest

from agent.config import AgentConfig
from agent.containerd import (
    Container,
    Containerd,
    ContainerdTimeout,
    Descriptor,
    Event,
    ExitStatus,
    Image,
    Lease,
    Mount,
    TaskExit,
    TaskInfo,
    Version,
)
from agent.engine import Engine
from agent.errors import ContainerdError, ImageNotFound, NotFound
from agent.images import ImageConfig
from agent.lifecycle.teardown import TEARDOWN_ORDER
from agent.network import TaskNetwork
from agent.registry import Credentials
from agent.store import Store, TaskRecord
from shim.stats import stats_path

IMAGE = "registry.example/app:1"


class FakeContainerd:
    """The containerd calls the lifecycle makes, kept in memory. A container's init exits 0
    at its stop signal (SIGTERM) and 137 at SIGKILL; `exit()` ends one by itself."""

    namespace = "nstask-unit"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.leases: set[str] = set()
        self.snapshots: set[str] = set()
        self.containers: dict[str, Mapping[str, Any]] = {}
        self.tasks: dict[str, str] = {}  # id -> created | running | stopped
        self.codes: dict[str, int] = {}
        self.exit_waits: dict[str, asyncio.Future[ExitStatus]] = {}
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.fail: dict[tuple[str, str], Exception] = {}
        self.ignore_sigterm: set[str] = set()
        self.healthy: dict[str, bool] = {}

    def _call(self, method: str, key: str) -> None:
        self.calls.append((method, key))
        e = self.fail.get((method, key))
        if e is not None:
            raise e

    def _waiter(self, cid: str) -> asyncio.Future[ExitStatus]:
        if cid not in self.exit_waits:
            self.exit_waits[cid] = asyncio.get_running_loop().create_future()
        return self.exit_waits[cid]

    def exit(self, cid: str, code: int) -> None:
        if self.tasks.get(cid) != "running":
            return
        self.tasks[cid] = "stopped"
        self.codes[cid] = code
        w = self._waiter(cid)
        if not w.done():
            w.set_result(ExitStatus(code, 1.0))
        self.events.put_nowait(
            Event("/tasks/exit", self.namespace, 1.0, "", TaskExit(cid, cid, 1, code, 1.0))
        )

    async def ensure_namespace(self) -> None:
        pass

    async def version(self) -> Version:
        return Version("fake", "0")

    def subscribe(self, filters: Iterable[str] = ()) -> AsyncIterator[Event]:
        async def stream() -> AsyncIterator[Event]:
            while True:
                yield await self.events.get()

        return stream()

    async def get_image(self, name: str) -> Image | None:
        return Image(name, Descriptor("", "sha256:0", 0), {}, None, None)

    async def create_lease(
        self, lease_id: str | None = None, *, labels: Mapping[str, str] | None = None
    ) -> Lease:
        self._call("create_lease", lease_id or "")
        self.leases.add(lease_id or "")
        return Lease(lease_id or "", {}, None)

    async def delete_lease(self, lease_id: str, *, sync: bool = True) -> None:
        self._call("delete_lease", lease_id)
        if lease_id not in self.leases:
            raise NotFound(lease_id)
        self.leases.discard(lease_id)

    async def prepare_snapshot(
        self,
        key: str,
        parent: str = "",
        *,
        labels: Mapping[str, str] | None = None,
        snapshotter: str | None = None,
        lease: str | None = None,
    ) -> list[Mount]:
        self._call("prepare_snapshot", key)
        self.snapshots.add(key)
        return [Mount("overlay", "overlay")]

    async def remove_snapshot(self, key: str, *, snapshotter: str | None = None) -> None:
        self._call("remove_snapshot", key)
        if key not in self.snapshots:
            raise NotFound(key)
        self.snapshots.discard(key)

    async def create_container(
        self,
        container_id: str,
        *,
        image: str,
        spec: Mapping[str, Any],
        snapshot_key: str,
        snapshotter: str | None = None,
        runtime: str | None = None,
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> Container:
        self._call("create_container", container_id)
        self.containers[container_id] = spec
        return self._container(container_id)

    def _container(self, cid: str) -> Container:
        return Container(cid, IMAGE, "", "", cid, {}, self.containers[cid], None, None)

    async def get_container(self, container_id: str) -> Container | None:
        return self._container(container_id) if container_id in self.containers else None

    async def delete_container(self, container_id: str) -> None:
        self._call("delete_container", container_id)
        if self.containers.pop(container_id, None) is None:
            raise NotFound(container_id)

    async def create_task(
        self,
        container_id: str,
        *,
        rootfs: Iterable[Mount],
        stdout: str = "",
        stderr: str = "",
        stdin: str = "",
        terminal: bool = False,
    ) -> int:
        self._call("create_task", container_id)
        if stdout:  # the logging shim writes its stats file before it is ready
            log_path = parse_qs(urlparse(stdout).query)["path"][0]
            Path(stats_path(log_path)).write_text(json.dumps({"sink_state": "ok"}))
        self.tasks[container_id] = "created"
        return 1

    async def start_task(self, container_id: str, *, exec_id: str = "") -> int:
        if exec_id:  # a health check
            return 2
        self._call("start_task", container_id)
        self.tasks[container_id] = "running"
        return 1

    async def wait_task(self, container_id: str, *, exec_id: str = "") -> ExitStatus:
        if exec_id:
            return ExitStatus(0 if self.healthy.get(container_id) else 1, 1.0)
        if container_id not in self.tasks:
            raise NotFound(container_id)
        if self.tasks[container_id] == "stopped":
            return ExitStatus(self.codes[container_id], 1.0)
        return await asyncio.shield(self._waiter(container_id))

    async def kill_task(
        self,
        container_id: str,
        signal: int = signal.SIGTERM,
        *,
        all_processes: bool = False,
        exec_id: str = "",
    ) -> None:
        if exec_id:
            return
        self._call("kill_task", container_id)
        if container_id not in self.tasks:
            raise NotFound(container_id)
        if signal == 9:
            self.exit(container_id, 137)
        elif container_id not in self.ignore_sigterm:
            self.exit(container_id, 0)

    async def get_task(self, container_id: str, *, exec_id: str = "") -> TaskInfo | None:
        st = self.tasks.get(container_id)
        if st is None:
            return None
        return TaskInfo(container_id, container_id, 1, st, self.codes.get(container_id, 0), 1.0)

    async def delete_task(self, container_id: str) -> ExitStatus:
        self._call("delete_task", container_id)
        if self.tasks.pop(container_id, None) is None:
            raise NotFound(container_id)
        self.exit_waits.pop(container_id, None)
        return ExitStatus(self.codes.pop(container_id, 0), 1.0)

    async def exec_process(
        self, container_id: str, exec_id: str, *, process_spec: Mapping[str, Any]
    ) -> None:
        pass

    async def delete_process(self, container_id: str, exec_id: str) -> ExitStatus:
        return ExitStatus(0, 1.0)

    def held(self) -> list[str]:
        return [
            *(f"lease {x}" for x in self.leases),
            *(f"snapshot {x}" for x in self.snapshots),
            *(f"container {x}" for x in self.containers),
            *(f"task {x}" for x in self.tasks),
        ]


class FakeNetwork:
    name = "fake-net"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.netns: set[str] = set()
        self.attached: set[str] = set()
        self.attach_gate: asyncio.Event | None = None  # attach waits for it when set
        self.attaching = asyncio.Event()

    async def create_netns(self, name: str) -> str:
        self.calls.append(("create_netns", name))
        self.netns.add(name)
        return f"/run/netns/{name}"

    async def remove_netns(self, name: str) -> None:
        self.calls.append(("remove_netns", name))
        self.netns.discard(name)

    async def attach(
        self, task_id: str, netns_path: str, *, port_mappings: Sequence[dict[str, Any]] = ()
    ) -> str | None:
        self.calls.append(("attach", task_id))
        self.attached.add(task_id)  # as a plugin that has begun its ADD
        self.attaching.set()
        if self.attach_gate is not None:
            await self.attach_gate.wait()
        return "10.0.0.2"

    async def detach(self, task_id: str, netns_path: str | None, *, ifname: str = "eth0") -> None:
        self.calls.append(("detach", task_id))
        self.attached.discard(task_id)


class FakeCgroups:
    def __init__(self) -> None:
        self.live: set[str] = set()

    def create(
        self,
        task_id: str,
        *,
        memory_mib: int | None,
        cpu_units: int | None,
        pids_limit: int | None = None,
    ) -> None:
        self.live.add(task_id)

    def remove(self, task_id: str) -> None:
        self.live.discard(task_id)

    def task_path(self, task_id: str) -> str:
        return f"/nstask/{task_id}"


class FakeImages:
    def __init__(self) -> None:
        self.asked: list[str] = []
        self.auth: dict[str, Credentials | None] = {}
        self.fail: Exception | None = None
        self.fail_after: asyncio.Event | None = None  # fail once this is set

    async def ensure(self, image: str, *, auth: Credentials | None = None) -> ImageConfig:
        self.asked.append(image)
        self.auth[image] = auth
        if self.fail is not None:
            if self.fail_after is not None:
                await self.fail_after.wait()
            raise self.fail
        return ImageConfig(image, (), ("sh",), (), "/", "", "", {}, "sha256:chain", "sha256:d", 1)


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.config = AgentConfig(
            state_dir=tmp / "state", run_dir=tmp / "run", socket=tmp / "run" / "sock"
        )
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.client = FakeContainerd()
        self.network = FakeNetwork()
        self.cgroups = FakeCgroups()
        self.images = FakeImages()
        self.store = Store(self.config.db_path)
        self.engine = self.new_engine()

    def new_engine(self) -> Engine:
        return Engine(
            self.config,
            self.store,
            cast(Containerd, self.client),
            cast(TaskNetwork, self.network),
            images=self.images,
            cgroups_seam=self.cgroups,
        )

    def held(self) -> list[str]:
        return [
            *self.client.held(),
            *(f"netns {x}" for x in self.network.netns),
            *(f"cni {x}" for x in self.network.attached),
            *(f"cgroup {x}" for x in self.cgroups.live),
            *(f"taskdir {p}" for p in self.config.task_dir.glob("*")),
            *(f"record {r.kind} {r.key}" for r in self.store.resources()),
        ]


def container(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": IMAGE, "command": ["sh"], "essential": True, **extra}


def definition(*containers: dict[str, Any]) -> dict[str, Any]:
    return {"family": "unit", "containerDefinitions": list(containers)}


async def until(what: str, ok: Callable[[], bool], timeout: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not ok():
        assert asyncio.get_running_loop().time() < deadline, f"never: {what}"
        await asyncio.sleep(0.005)


def run(tmp_path: Path, scenario: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        w = World(tmp_path)
        await w.engine.start(collect=False)
        try:
            await scenario(w)
        finally:
            await w.engine.close()
            w.store.close()

    asyncio.run(main())


def status(w: World, task: TaskRecord) -> str:
    return w.engine.get(task.id).last_status


def cid(task: TaskRecord, name: str) -> str:
    return next(c.containerd_id for c in task.containers if c.name == name)


# -- order ---------------------------------------------------------------------------------
def test_containers_start_in_depends_on_order_with_the_firelens_router_first(
    tmp_path: Path,
) -> None:
    async def scenario(w: World) -> None:
        firelens = {"logDriver": "awsfirelens", "options": {"Name": "stdout"}}
        td = definition(
            container("app", logConfiguration=firelens),
            container("db", essential=False),
            container(
                "web",
                dependsOn=[{"containerName": "db", "condition": "START"}],
                logConfiguration=firelens,
            ),
            container("router", firelensConfiguration={"type": "fluentbit"}),
        )
        task = await w.engine.submit(td)
        await until("RUNNING", lambda: status(w, task) == "RUNNING")
        started = [k for m, k in w.client.calls if m == "start_task"]
        names = [k.split("-", 2)[2] for k in started]
        # The router before every container that logs through it; dependsOn honoured.
        assert names.index("router") < names.index("app")
        assert names.index("router") < names.index("web")
        assert names.index("db") < names.index("web")
        await w.engine.stop(task.id)

    run(tmp_path, scenario)


# -- running: exit decisions ---------------------------------------------------------------
def test_an_essential_exit_stops_the_task(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        task = await w.engine.submit(definition(container("main"), container("side")))
        await until("RUNNING", lambda: status(w, task) == "RUNNING")
        w.client.exit(cid(task, "main"), 3)
        await until("STOPPED", lambda: status(w, task) == "STOPPED")
        t = w.engine.get(task.id)
        assert t.stop_reason == "Essential container in task exited"
        assert t.exit_code == 3
        assert not w.held()

    run(tmp_path, scenario)


def test_a_non_essential_exit_keeps_the_task_running(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        task = await w.engine.submit(
            definition(container("main"), container("helper", essential=False))
        )
        await until("RUNNING", lambda: status(w, task) == "RUNNING")
        w.client.exit(cid(task, "helper"), 1)
        helper = next(c for c in w.engine.get(task.id).containers if c.name == "helper")
        await until("helper recorded", lambda: helper.exit_code == 1)
        await asyncio.sleep(0.05)
        assert status(w, task) == "RUNNING"
        await w.engine.stop(task.id)
        assert not w.held()

    run(tmp_path, scenario)


# -- stop cancels a start ------------------------------------------------------------------
def test_stop_cancels_a_start_inside_the_network_step(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        w.network.attach_gate = asyncio.Event()  # a CNI plugin that never returns
        task = await w.engine.submit(definition(container("main")))
        await asyncio.wait_for(w.network.attaching.wait(), 5)
        t = await asyncio.wait_for(w.engine.stop(task.id), 2)
        assert t.last_status == "STOPPED" and t.stop_reason == "Task stopped by user"
        assert ("detach", task.id) in w.network.calls  # the DEL owed after an ADD began
        assert not w.held()
        assert len(w.engine.ctx.runtimes) == 0

    run(tmp_path, scenario)


def test_images_are_made_ready_while_the_network_is_attached(tmp_path: Path) -> None:
    """The two lanes of the start overlap; a failure in the images lane ends the network
    lane (its plugin cancelled) and the rollback removes what it had made."""

    async def scenario(w: World) -> None:
        w.network.attach_gate = asyncio.Event()  # the CNI ADD is still running...
        task = await w.engine.submit(definition(container("main")))
        await asyncio.wait_for(w.network.attaching.wait(), 5)
        await until("images asked", lambda: w.images.asked == [IMAGE])  # ...and images go on
        assert status(w, task) == "PROVISIONING"
        w.network.attach_gate.set()
        await until("RUNNING", lambda: status(w, task) == "RUNNING")
        await w.engine.stop(task.id)

        w.network.attach_gate = asyncio.Event()
        w.network.attaching.clear()
        w.images.fail = ImageNotFound("no such image")
        w.images.fail_after = w.network.attaching  # while the ADD hangs
        failed = await w.engine.submit(definition(container("main")))
        await until("STOPPED", lambda: status(w, failed) == "STOPPED")
        assert "no such image" in str(w.engine.get(failed.id).stop_reason)
        assert ("detach", failed.id) in w.network.calls
        assert not w.held()

    run(tmp_path, scenario)


def test_stop_cancels_a_start_waiting_on_a_dependency(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        task = await w.engine.submit(
            definition(
                container("setup", essential=False, startTimeout=120),
                container("app", dependsOn=[{"containerName": "setup", "condition": "SUCCESS"}]),
            )
        )
        setup = cid(task, "setup")
        await until("setup started", lambda: w.client.tasks.get(setup) == "running")
        t = await asyncio.wait_for(w.engine.stop(task.id, reason="changed my mind"), 2)
        assert t.last_status == "STOPPED" and t.stop_reason == "changed my mind"
        assert ("start_task", cid(task, "app")) not in w.client.calls
        assert next(c for c in t.containers if c.name == "setup").exit_code == 0  # SIGTERM
        assert not w.held()

    run(tmp_path, scenario)


# -- rollback ------------------------------------------------------------------------------
def test_a_failed_step_rolls_back_every_resource_in_reverse(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        td = definition(container("first"), container("second"))
        orig = w.client.create_container

        async def failing(container_id: str, **kw: Any) -> Container:
            if container_id.endswith("-second"):
                raise ContainerdError("injected: create failed")
            return await orig(container_id, **kw)

        w.client.create_container = failing  # type: ignore[method-assign]
        task = await w.engine.submit(td)
        await until("STOPPED", lambda: status(w, task) == "STOPPED")
        t = w.engine.get(task.id)
        assert t.stop_reason is not None and "injected: create failed" in t.stop_reason
        first = cid(task, "first")
        kind_of = {
            "delete_task": "task",
            "delete_container": "container",
            "remove_snapshot": "snapshot",
            "delete_lease": "lease",
            "detach": "cni",
            "remove_netns": "netns",
        }
        removals = [(kind_of[m], k) for m, k in [*w.client.calls, *w.network.calls] if m in kind_of]
        # Every recorded resource (the second container's intent too), newest kind first;
        # the cgroup and task directory go between lease and cni (held() checks them).
        assert [k for k, _ in removals] == [
            "task",
            "container",
            "container",
            "snapshot",
            "snapshot",
            "lease",
            "cni",
            "netns",
        ]
        assert [k for k in TEARDOWN_ORDER if k in dict(removals)] == list(
            dict.fromkeys(k for k, _ in removals)
        )
        assert ("task", first) in removals
        assert not w.held()

    run(tmp_path, scenario)


# -- memory --------------------------------------------------------------------------------
def test_many_tasks_leave_no_runtime_state_behind(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        tasks = [await w.engine.submit(definition(container("main"))) for _ in range(40)]
        await until("all RUNNING", lambda: all(status(w, t) == "RUNNING" for t in tasks))
        for i, t in enumerate(tasks):
            if i % 2:
                w.client.exit(cid(t, "main"), 0)  # exits by itself
            else:
                await w.engine.stop(t.id)
        await until("all STOPPED", lambda: all(status(w, t) == "STOPPED" for t in tasks))
        ctx = w.engine.ctx
        await until("background work done", lambda: not ctx.background)
        assert len(ctx.runtimes) == 0
        assert not w.held()
        assert not w.client.exit_waits

    run(tmp_path, scenario)


# -- recovery ------------------------------------------------------------------------------
def test_recovery_reattaches_stops_what_is_owed_and_half_started_and_unprocessable(
    tmp_path: Path,
) -> None:
    async def scenario(w: World) -> None:
        keeps = await w.engine.submit(definition(container("main")))
        owed = await w.engine.submit(definition(container("main")))
        refused = await w.engine.submit(definition(container("main")))
        damaged = await w.engine.submit(definition(container("main")))
        for t in (keeps, owed, refused, damaged):
            await until("RUNNING", lambda t=t: status(w, t) == "RUNNING")  # type: ignore[misc]
        w.network.attach_gate = asyncio.Event()
        half = await w.engine.submit(definition(container("main")))
        await asyncio.wait_for(w.network.attaching.wait(), 5)
        await w.engine.close()  # the agent goes away; its tasks stay

        # While it is away: owed's essential container exit was recorded (the agent died
        # before it stopped the task); refused's definition is one today's parser refuses
        # (recovery does not parse it: what it needs was stored at submit); damaged's
        # stored health plan is not one any agent wrote.
        c = owed.containers[0]
        c.last_status, c.exit_code = "STOPPED", 2
        w.client.tasks[c.containerd_id] = "stopped"
        w.client.codes[c.containerd_id] = 2
        w.store.update_container(c)
        db = sqlite3.connect(str(w.config.db_path))
        with db:
            db.execute(
                "UPDATE tasks SET definition=? WHERE id=?",
                (json.dumps({"containerDefinitions": "nope"}), refused.id),
            )
            overrides = {**damaged.overrides, "health": {"main": {"command": 5}}}
            db.execute(
                "UPDATE tasks SET overrides=? WHERE id=?", (json.dumps(overrides), damaged.id)
            )
        db.close()
        w.network.attach_gate.set()

        w.engine = w.new_engine()
        await w.engine.start(collect=False)
        await until(
            "decisions taken",
            lambda: all(status(w, t) == "STOPPED" for t in (owed, damaged, half)),
        )
        assert status(w, keeps) == "RUNNING" and status(w, refused) == "RUNNING"
        assert w.engine.get(owed.id).stop_reason == "Essential container in task exited"
        assert "agent restarted while the task was" in str(w.engine.get(half.id).stop_reason)
        why = str(w.engine.get(damaged.id).stop_reason)
        assert why.startswith("the agent could not recover the task:"), why
        # The re-attached tasks are managed again: an exit stops one, a stop the other.
        w.client.exit(cid(keeps, "main"), 0)
        await until("keeps STOPPED", lambda: status(w, keeps) == "STOPPED")
        await w.engine.stop(refused.id)
        assert status(w, refused) == "STOPPED"
        assert not w.held()
        assert len(w.engine.ctx.runtimes) == 0

    run(tmp_path, scenario)


def test_a_restarted_agent_resumes_health_checks_from_the_stored_plan(tmp_path: Path) -> None:
    """The check stored at submit is run again after a restart, although the stored
    definition is one today's parser refuses: an unhealthy essential container then
    stops the task as before the restart."""
    check = {"command": ["CMD", "true"], "interval": 5, "retries": 1}

    async def scenario(w: World) -> None:
        task = await w.engine.submit(definition(container("main", healthCheck=check)))
        main = cid(task, "main")
        w.client.healthy[main] = True
        await until("HEALTHY", lambda: w.engine.get(task.id).containers[0].health == "HEALTHY")
        await w.engine.close()
        db = sqlite3.connect(str(w.config.db_path))
        with db:
            db.execute(
                "UPDATE tasks SET definition=? WHERE id=?",
                (json.dumps({"containerDefinitions": "nope"}), task.id),
            )
        db.close()
        w.client.healthy[main] = False
        w.engine = w.new_engine()
        await w.engine.start(collect=False)
        await until("stopped as unhealthy", lambda: status(w, task) == "STOPPED", timeout=15)
        stopped = w.engine.get(task.id)
        assert stopped.containers[0].health == "UNHEALTHY"
        assert "health" in str(stopped.stop_reason).lower(), stopped.stop_reason
        assert not w.held()

    run(tmp_path, scenario)


def test_a_stop_owed_to_an_unreachable_containerd_is_retried_a_bounded_number_of_times(
    tmp_path: Path,
) -> None:
    from agent.lifecycle import teardown

    async def scenario(w: World) -> None:
        task = await w.engine.submit(definition(container("main")))
        await until("RUNNING", lambda: status(w, task) == "RUNNING")
        main = cid(task, "main")
        w.client.fail[("delete_container", main)] = ContainerdError("containerd is restarting")
        with pytest.raises(teardown.TeardownFailed):
            await w.engine.stop(task.id, timeout=0)
        assert status(w, task) == "DEPROVISIONING"
        del w.client.fail[("delete_container", main)]
        await until("retried to STOPPED", lambda: status(w, task) == "STOPPED", timeout=5)
        assert not w.held()

    orig = teardown.RETRY_DELAYS
    teardown.RETRY_DELAYS = (0.05, 0.05, 0.05)
    try:
        run(tmp_path, scenario)
    finally:
        teardown.RETRY_DELAYS = orig


def test_an_unexpected_teardown_error_is_logged_with_its_cause_and_not_retried(
    tmp_path: Path,
) -> None:
    from structlog.testing import capture_logs

    from agent.lifecycle import teardown

    async def scenario(w: World) -> None:
        task = await w.engine.submit(definition(container("main")))
        await until("RUNNING", lambda: status(w, task) == "RUNNING")
        w.client.fail[("delete_container", cid(task, "main"))] = RuntimeError("a bug")
        with capture_logs() as logs, pytest.raises(teardown.TeardownFailed) as e:
            await w.engine.stop(task.id, timeout=0)
        assert not e.value.retryable and "RuntimeError: a bug" in e.value.message
        failed = [x for x in logs if x["event"] == "teardown_failed"]
        assert failed and isinstance(failed[0]["exc_info"], RuntimeError)
        rt = w.engine.ctx.runtimes.get(task.id)
        assert rt is not None and not rt.retrying  # a bug is not retried
        # Every other resource went; the container's record stays for the next attempt.
        assert [r.kind for r in w.store.resources(task.id)] == ["container"]

    run(tmp_path, scenario)


# -- images: repositoryCredentials -----------------------------------------------------------
def test_repository_credentials_from_the_secret_store_reach_the_pull(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:reg/creds-AbCdEf"
        w.engine.secrets.put("reg/creds", json.dumps({"username": "ann", "password": "pw1"}))
        td = definition(container("app", repositoryCredentials={"credentialsParameter": arn}))
        task = await w.engine.submit(td)
        await until("RUNNING", lambda: status(w, task) == "RUNNING")
        assert w.images.auth[IMAGE] == Credentials("ann", "pw1")
        await w.engine.stop(task.id)

    run(tmp_path, scenario)


def test_repository_credentials_that_are_no_json_fail_the_start_without_the_value(
    tmp_path: Path,
) -> None:
    async def scenario(w: World) -> None:
        w.engine.secrets.put("reg/plain", "hunter2-not-json")
        td = definition(
            container("app", repositoryCredentials={"credentialsParameter": "reg/plain"})
        )
        task = await w.engine.submit(td)
        await until("STOPPED", lambda: status(w, task) == "STOPPED")
        reason = w.engine.get(task.id).stop_reason or ""
        assert "repositoryCredentials reg/plain" in reason and "username" in reason
        assert "hunter2" not in reason
        assert not w.images.asked  # nothing pulled


# -- a container that cannot start (issue 12) ----------------------------------------------
RUNC_REFUSAL = 'failed to create shim task: OCI runtime create failed: exec: "/nope": not found'


def _refuse_create(w: World, name: str, error: Exception | None = None) -> None:
    """runc create refusing one container's process, as containerd reports it."""
    orig = w.client.create_task

    async def refusing(container_id: str, **kw: Any) -> int:
        if container_id.endswith(f"-{name}"):
            raise error or ContainerdError(
                f"containerd Tasks.Create on task {container_id!r} failed: UNKNOWN: x",
                detail=RUNC_REFUSAL,
            )
        return await orig(container_id, **kw)

    w.client.create_task = refusing  # type: ignore[method-assign]


def test_a_non_essential_container_that_cannot_start_leaves_the_task_running(
    tmp_path: Path,
) -> None:
    async def scenario(w: World) -> None:
        _refuse_create(w, "broken")
        td = definition(
            container("broken", essential=False),
            container(
                "on-start",
                essential=False,
                dependsOn=[{"containerName": "broken", "condition": "START"}],
            ),
            container(
                "on-success",
                essential=False,
                dependsOn=[{"containerName": "broken", "condition": "SUCCESS"}],
            ),
            container("main"),
        )
        task = await w.engine.submit(td)
        await until("RUNNING", lambda: status(w, task) == "RUNNING")
        cs = {c.name: c for c in w.engine.get(task.id).containers}
        assert cs["broken"].last_status == "STOPPED"
        assert cs["broken"].reason == f"CannotStartContainerError: {RUNC_REFUSAL}"
        assert cs["broken"].exit_code is None and cs["broken"].started_at is None
        started = {k.rsplit("-", 1)[-1] for m, k in w.client.calls if m == "start_task"}
        assert started == {"main"}
        # No condition is met by a container that will never start (the ECS agent's rule):
        # a non-essential dependent ends STOPPED, not started, and the task runs on.
        for name in ("on-start", "on-success"):
            assert cs[name].last_status == "STOPPED" and cs[name].started_at is None
            assert "never started" in (cs[name].reason or "")
        await asyncio.sleep(0.05)
        assert status(w, task) == "RUNNING"
        await w.engine.stop(task.id)
        assert not w.held()

    run(tmp_path, scenario)


def test_an_essential_container_that_cannot_start_stops_the_task_with_the_reason(
    tmp_path: Path,
) -> None:
    async def scenario(w: World) -> None:
        _refuse_create(w, "main")
        task = await w.engine.submit(
            definition(container("side", essential=False), container("main"))
        )
        await until("STOPPED", lambda: status(w, task) == "STOPPED")
        t = w.engine.get(task.id)
        assert t.stop_reason == f"CannotStartContainerError: {RUNC_REFUSAL}"
        assert next(c for c in t.containers if c.name == "main").reason == t.stop_reason
        assert not w.held()

    run(tmp_path, scenario)


def test_containerd_timing_out_is_not_a_container_that_cannot_start(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        _refuse_create(w, "helper", ContainerdTimeout("containerd Tasks.Create timed out"))
        task = await w.engine.submit(
            definition(container("helper", essential=False), container("main"))
        )
        await until("STOPPED", lambda: status(w, task) == "STOPPED")
        t = w.engine.get(task.id)
        assert t.stop_reason is not None and t.stop_reason.startswith("failed to start: ")
        assert not w.held()

    run(tmp_path, scenario)
