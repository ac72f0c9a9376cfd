"""The listeners: the task metadata endpoint (what tasks see at 169.254.170.2:80) and the
introspection API (127.0.0.1:<introspection port>).

    /v4/{id}, /v4/{id}/task, /v4/{id}/taskWithTags    this container, its task (+ tags)
    /v3/{id}, /v3/{id}/task, /v3/{id}/taskWithTags    the same documents
    /v2/metadata                                      the caller's task, by its address
    /v2/credentials/{id}                              the task role's credentials
    (the /stats paths are not served here: agent.stats, wired by the daemon)

Who may read what: `{id}` is unguessable (128 random bits) and known only to the container
it was given to; on top, the caller's address must be the task's own (awsvpc and bridge
tasks; host-mode tasks come from the host itself, through the loopback). An id that is
nobody's is 404; another task's id from the wrong address is 404 too (a prober learns
nothing) and logged as `metadata_refused`, naming the task and the caller, never the id or
an answer. Credentials are read from the sources when asked and go only into the answer.

The metadata listener is bound to the bridge's gateway address (IP_FREEBIND: before the
bridge exists), so it is this agent's alone; agent.metadata.netfilter points
169.254.170.2:80 of this bridge at it and drops anything else that tries it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiohttp import web

from agent import stats
from agent.config import AgentConfig
from agent.credentials import CredentialSource
from agent.errors import NetworkError, NstaskError, TaskNotFound
from agent.lifecycle.runtime import Context
from agent.metadata import documents, netfilter
from agent.metadata.documents import Platform
from agent.metadata.env import enabled
from agent.store import ContainerRecord, TaskRecord

log = structlog.get_logger("nstask.metadata")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
RECORD = "metadata-chains.json"

__all__ = ["MetadataServers"]


class Tasks(Protocol):
    """What the servers read of the agent (agent.engine.Engine)."""

    def list_tasks(self, *, all_tasks: bool = False) -> list[TaskRecord]: ...
    def get(self, ref: str) -> TaskRecord: ...

    @property
    def ctx(self) -> Context: ...  # what agent.stats reads a task's stats with


def _has_container(task: TaskRecord, docker_id: str) -> bool:
    """A full container id, or a prefix of at least 12 characters (Docker's short id)."""
    return any(
        c.containerd_id == docker_id
        or (len(docker_id) >= 12 and c.containerd_id.startswith(docker_id))
        for c in task.containers
    )


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


def _not_found() -> web.Response:
    return _error(404, "NotFound", "no such resource")


class _Refused(Exception):
    pass


class MetadataServers:
    """Both listeners of one agent, and the iptables rules that route tasks to the first."""

    def __init__(
        self,
        tasks: Tasks,
        config: AgentConfig,
        credentials: CredentialSource,
        *,
        agent_version: str = "0.1.0",
    ) -> None:
        self.tasks = tasks
        self.config = config
        self.credentials = credentials
        self.platform = Platform.from_config(config, agent_version=agent_version)
        self.subnet = ipaddress.ip_network(config.subnet, strict=False)
        self.instance_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"nstask:{config.state_dir}"))
        self._runners: list[web.AppRunner] = []
        self._macs: dict[str, str] = {}
        self._index: dict[str, str] = {}  # metadata or credentials id -> task id

    # -- lookups -----------------------------------------------------------------------
    def _all(self) -> list[TaskRecord]:
        return self.tasks.list_tasks(all_tasks=True)

    def _reindex(self) -> None:
        """id -> task id, for every task the store holds (an unknown id rebuilds it: a task
        submitted since, or an agent restarted with tasks of before)."""
        self._index = {}
        for t in self._all():
            for c in t.containers:
                if c.metadata_id:
                    self._index[c.metadata_id] = t.id
            if t.credentials_id:
                self._index[t.credentials_id] = t.id

    def _task_of(self, some_id: str) -> TaskRecord | None:
        if some_id not in self._index:
            self._reindex()
        task_id = self._index.get(some_id)
        if task_id is None:
            return None
        try:
            return self.tasks.get(task_id)  # the live record while the task runs
        except TaskNotFound:
            self._index.pop(some_id, None)  # removed since (`nstask rm`)
            return None

    def _by_metadata_id(self, mid: str) -> tuple[TaskRecord, ContainerRecord] | None:
        task = self._task_of(mid)
        if task is None:
            return None
        return next(((task, c) for c in task.containers if c.metadata_id == mid), None)

    def _check_caller(self, request: web.Request, task: TaskRecord, what: str) -> None:
        """The caller's address must be the task's own; host and none mode tasks (no
        address of their own) are read from the host only."""
        remote = request.remote or ""
        if task.ip is not None and remote == task.ip:
            return
        if task.ip is None and not self._in_subnet(remote):
            return
        log.warning("metadata_refused", what=what, task=task.id, caller=remote)
        raise _Refused

    def _in_subnet(self, address: str) -> bool:
        try:
            return ipaddress.ip_address(address) in self.subnet
        except ValueError:
            return False

    async def _mac(self, task: TaskRecord) -> str | None:
        """The task's eth0 MAC, read once per task through agent.netns."""
        if task.netns is None:
            return None
        if task.id not in self._macs:
            from agent.netns import NetlinkLinks

            try:
                info = await asyncio.to_thread(NetlinkLinks().link_info, task.netns, "eth0")
            except NstaskError:
                info = None
            if info is None:
                return None
            self._macs[task.id] = info.mac
        return self._macs.get(task.id)

    def _task_dir(self, task: TaskRecord) -> str:
        return str(self.config.task_dir / task.id)

    # -- the metadata endpoint ---------------------------------------------------------
    def metadata_app(self) -> web.Application:
        app = web.Application(middlewares=[self._refusals])
        routes = web.RouteTableDef()

        for version in ("v3", "v4"):

            @routes.get(f"/{version}/{{id}}")
            async def container(request: web.Request) -> web.Response:
                task, c = self._container_of(request)
                mac = await self._mac(task)
                doc = documents.container_document(
                    self.platform, task, c, mac=mac, task_dir=self._task_dir(task)
                )
                return web.json_response(doc)

            @routes.get(f"/{version}/{{id}}/task")
            async def task(request: web.Request) -> web.Response:
                return await self._task_answer(request, with_tags=False)

            @routes.get(f"/{version}/{{id}}/taskWithTags")
            async def task_with_tags(request: web.Request) -> web.Response:
                return await self._task_answer(request, with_tags=True)

            @routes.get(f"/{version}/{{id}}/stats")
            async def container_stats(request: web.Request) -> web.Response:
                task, c = self._container_of(request)
                found = await stats.container_stats(self.tasks.ctx, task, c)
                return web.json_response(found if found is not None else {})

            @routes.get(f"/{version}/{{id}}/task/stats")
            async def task_stats(request: web.Request) -> web.Response:
                task, _ = self._container_of(request)
                return web.json_response(await stats.task_stats(self.tasks.ctx, task))

        @routes.get("/v2/metadata")
        async def v2_metadata(request: web.Request) -> web.Response:
            task = self._task_by_address(request.remote or "")
            if task is None:
                return _not_found()
            return await self._task_json(task, with_tags=False)

        @routes.get("/v2/stats")
        async def v2_stats(request: web.Request) -> web.Response:
            task = self._task_by_address(request.remote or "")
            if task is None:
                return _not_found()
            return web.json_response(await stats.task_stats(self.tasks.ctx, task))

        @routes.get("/v2/stats/{docker_id}")
        async def v2_container_stats(request: web.Request) -> web.Response:
            task = self._task_by_address(request.remote or "")
            wanted = request.match_info["docker_id"]
            c = (
                next((c for c in task.containers if c.containerd_id == wanted), None)
                if task
                else None
            )
            if task is None or c is None:
                return _not_found()
            found = await stats.container_stats(self.tasks.ctx, task, c)
            return web.json_response(found if found is not None else {})

        @routes.get("/v2/credentials/{id}")
        async def credentials(request: web.Request) -> web.Response:
            cid = request.match_info["id"]
            task = self._task_of(cid)
            if task is not None and task.credentials_id != cid:
                task = None
            role = documents.task_role_arn(task.definition) if task is not None else None
            if task is None or role is None:
                return _not_found()
            self._check_caller(request, task, "credentials")
            try:
                found = await self.credentials.fetch(role)
            except NstaskError as e:
                log.warning("credentials_failed", task=task.id, role=role, error=e.message)
                return _error(502, "CredentialsUnavailable", f"credentials of {role}: {e.message}")
            if found is None:
                log.warning("credentials_unknown_role", task=task.id, role=role)
                return _error(
                    404,
                    "NoCredentials",
                    f"no credentials for role {role}; add them on the host with "
                    f"`nstask credentials put {role}`",
                )
            return web.json_response(found.to_endpoint())

        app.add_routes(routes)
        return app

    @web.middleware
    async def _refusals(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Refused:
            return _not_found()

    def _container_of(self, request: web.Request) -> tuple[TaskRecord, ContainerRecord]:
        found = self._by_metadata_id(request.match_info["id"])
        if found is None:
            raise web.HTTPNotFound(
                text=json.dumps({"code": "NotFound", "message": "no such resource"}),
                content_type="application/json",
            )
        self._check_caller(request, found[0], "metadata")
        return found

    async def _task_answer(self, request: web.Request, *, with_tags: bool) -> web.Response:
        task, _ = self._container_of(request)
        return await self._task_json(task, with_tags=with_tags)

    async def _task_json(self, task: TaskRecord, *, with_tags: bool) -> web.Response:
        doc = documents.task_document(
            self.platform,
            task,
            mac=await self._mac(task),
            task_dir=self._task_dir(task),
            with_tags=with_tags,
            clock=await asyncio.to_thread(clock_drift),
        )
        return web.json_response(doc)

    def _task_by_address(self, address: str) -> TaskRecord | None:
        """The caller's task (v2): the task not stopped that has the address."""
        live = [t for t in self._all() if t.ip == address and t.last_status != "STOPPED"]
        return live[-1] if live else None

    # -- the introspection API ---------------------------------------------------------
    def introspection_app(self) -> web.Application:
        app = web.Application()
        routes = web.RouteTableDef()

        @routes.get("/v1/metadata")
        async def metadata(_: web.Request) -> web.Response:
            return web.json_response(
                documents.introspection_metadata(self.platform, self.instance_id)
            )

        @routes.get("/v1/tasks")
        async def tasks(request: web.Request) -> web.Response:
            docker_id = request.query.get("dockerid")
            task_arn = request.query.get("taskarn")
            every = self.tasks.list_tasks(all_tasks=True)
            if docker_id is not None or task_arn is not None:
                found = [
                    t
                    for t in every
                    if (docker_id is not None and _has_container(t, docker_id))
                    or (task_arn is not None and self.platform.task_arn(t.id) == task_arn)
                ]
                if len(found) != 1:
                    return _error(404, "NotFound", "no single task with that dockerid or taskarn")
                return web.json_response(documents.introspection_task(self.platform, found[0]))
            return web.json_response(
                {"Tasks": [documents.introspection_task(self.platform, t) for t in every]}
            )

        app.add_routes(routes)
        return app

    # -- start / stop ------------------------------------------------------------------
    async def start(self) -> None:
        """Install the routing and bind both listeners (the metadata one is required: a
        port taken on the gateway address fails the start; the introspection port is shared
        by every agent of the host by default, so a taken one is only a warning)."""
        if enabled(self.config):
            await asyncio.to_thread(self._install_rules)
            await self._serve(
                self.metadata_app(), self.platform.gateway, self.config.metadata_port, freebind=True
            )
            log.info(
                "metadata_endpoint_ready",
                endpoint=f"{netfilter.ENDPOINT}:{netfilter.ENDPOINT_PORT}",
                listener=f"{self.platform.gateway}:{self.config.metadata_port}",
                host_mode=self.config.metadata_host_mode,
            )
        else:
            log.info("metadata_endpoint_off", note="metadata_port 0 or a user conflist")
        if self.config.introspection_port:
            try:
                await self._serve(
                    self.introspection_app(), "127.0.0.1", self.config.introspection_port
                )
            except NetworkError as e:
                log.warning("introspection_unavailable", error=e.message)

    async def _serve(
        self, app: web.Application, host: str, port: int, *, freebind: bool = False
    ) -> None:
        runner = web.AppRunner(app, access_log=None)  # paths hold the ids: never logged
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if freebind:
                sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            sock.bind((host, port))
        except OSError as e:
            sock.close()
            await runner.cleanup()
            raise NetworkError(
                f"cannot listen on {host}:{port}: {e.strerror}; give this agent another port"
                " (--metadata-port / --introspection-port, NSTASK_METADATA_PORT,"
                " NSTASK_INTROSPECTION_PORT)"
            ) from None
        site = web.SockSite(runner, sock)
        await site.start()
        self._runners.append(runner)

    async def close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    # -- the iptables rules, recorded ----------------------------------------------------
    def _record_path(self) -> Path:
        return self.config.state_dir / RECORD

    def _recorded(self) -> set[str]:
        try:
            return set(json.loads(self._record_path().read_text()))
        except (OSError, ValueError, TypeError):
            return set()

    def _write_record(self, bridges: set[str]) -> None:
        path = self._record_path()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(sorted(bridges)).encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def _install_rules(self) -> None:
        bridge = self.config.bridge
        self._write_record(self._recorded() | {bridge})  # recorded before it is created
        netfilter.install(
            bridge,
            self.platform.gateway,
            self.config.metadata_port,
            host_mode=self.config.metadata_host_mode,
        )
        for chain in self.stale_chains():  # a bridge an earlier run had, gone since
            self.remove_stale(chain)

    def stale_chains(self) -> list[str]:
        """Metadata chains of a bridge an earlier run recorded whose bridge is gone. Never
        ours while we serve: the first ADD makes our bridge (again, after a removal), and
        the rules match it by name; at exit, remove_stale_of_ours takes them if it is gone.
        (Counting ours removed the chains just installed whenever the agent started before
        its bridge existed: tasks then could not reach 169.254.170.2.)"""
        from agent.netns import NetlinkLinks

        links = NetlinkLinks()
        out: list[str] = []
        ours = {self.config.bridge} if enabled(self.config) else set()
        for bridge in sorted(self._recorded() - ours):
            if links.link_info(None, bridge) is None:
                out += netfilter.present(bridge)
        return out

    def remove_stale_of_ours(self) -> bool:
        """At agent exit: our bridge's rules, if the bridge is gone."""
        from agent.netns import NetlinkLinks

        if not enabled(self.config):
            return False
        if NetlinkLinks().link_info(None, self.config.bridge) is not None:
            return False
        return self.remove_rules(self.config.bridge)

    def remove_stale(self, chain: str) -> bool:
        from agent.netns import NetlinkLinks

        bridge = netfilter.bridge_of(chain)
        if bridge is None or (enabled(self.config) and bridge == self.config.bridge):
            return False
        if NetlinkLinks().link_info(None, bridge) is not None:
            return False
        return self.remove_rules(bridge)

    def remove_rules(self, bridge: str | None = None) -> bool:
        """Remove the chains of `bridge` (ours by default) and drop it from the record."""
        bridge = bridge or self.config.bridge
        removed = netfilter.remove(bridge)
        self._write_record(self._recorded() - {bridge})
        if removed:
            log.info("metadata_rules_removed", bridge=bridge, chains=removed)
        return bool(removed)


# -- ClockDrift ---------------------------------------------------------------------------


def clock_drift() -> dict[str, Any] | None:
    """ClockDrift as ECS reports it from chrony, here from the kernel's adjtimex(2): the
    maximum error bound (ms), now, and whether the clock is synchronised. None if unknown."""
    import ctypes
    import ctypes.util
    import time

    class Timex(ctypes.Structure):
        _fields_ = [
            ("modes", ctypes.c_uint),
            ("offset", ctypes.c_long),
            ("freq", ctypes.c_long),
            ("maxerror", ctypes.c_long),
            ("esterror", ctypes.c_long),
            ("status", ctypes.c_int),
            ("constant", ctypes.c_long),
            ("precision", ctypes.c_long),
            ("tolerance", ctypes.c_long),
            ("time_sec", ctypes.c_long),
            ("time_usec", ctypes.c_long),
            ("tick", ctypes.c_long),
            ("ppsfreq", ctypes.c_long),
            ("jitter", ctypes.c_long),
            ("shift", ctypes.c_int),
            ("stabil", ctypes.c_long),
            ("jitcnt", ctypes.c_long),
            ("calcnt", ctypes.c_long),
            ("errcnt", ctypes.c_long),
            ("stbcnt", ctypes.c_long),
            ("tai", ctypes.c_int),
            ("pad", ctypes.c_int * 11),
        ]

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    time_error = 5  # TIME_ERROR: the clock is not synchronised
    return {
        "ClockErrorBound": tx.maxerror / 1000,
        "ReferenceTimestamp": documents.rfc3339(float(int(time.time()))),
        "ClockSynchronizationStatus": "UNSYNCHRONIZED" if state == time_error else "SYNCHRONIZED",
    }
