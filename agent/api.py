"""The agent's local API: HTTP+JSON on a root-only unix socket (mode 0600).

    GET    /v1/version
    GET    /v1/agent                    -> pid, uptime, settings, containerd reachable, task counts
    POST   /v1/tasks                    {definition, source?, environment?} -> 201 task
    GET    /v1/tasks?all=1              -> [task]
    GET    /v1/tasks/{id}               -> task (id or unique prefix)
    GET    /v1/tasks/{id}/wait          -> task, once STOPPED
    GET    /v1/tasks/{id}/stats         -> {DockerId: Docker stats JSON | null} (agent.stats)
    POST   /v1/tasks/{id}/stop          {timeout?} -> task (STOPPED)
    DELETE /v1/tasks/{id}?force=1       -> 204
    POST   /v1/tasks/{id}/exec          {command, container?, environment?} -> NDJSON
                                         {stream, data} chunks, then {exitCode}
    GET    /v1/tasks/{id}/exec?request={command, container?, environment?, tty?, stdin?,
                                  user?, workdir?, columns?, rows?}  WebSocket upgrade:
                                         the interactive exec (agent.exec_stream)
    GET    /v1/tasks/{id}/logs?container=&follow=1&tail=N  -> NDJSON stream of log entries
    POST   /v1/gc                       {dryRun?, stopUnknown?} -> [{kind, name, detail, status}]
    GET    /v1/secrets                  -> [name]   (values are never returned)
    PUT    /v1/secrets/{name}           {value} -> 204
    DELETE /v1/secrets/{name}           -> 204
    GET    /v1/credentials              -> [{roleArn, expiration}]   (keys are never returned)
    PUT    /v1/credentials/{role arn}   {text, source?} -> 204   (JSON or key=value lines)
    DELETE /v1/credentials/{role arn}   -> 204
    GET    /v1/metrics                  -> logging counters of running containers, totals
    GET    /v1/images                   -> [image]
    POST   /v1/images/import            {path} -> [image]
    POST   /v1/images/pull              {ref, username?, password?} -> image (+transferred)
    GET    /v1/images/inspect/{name}    -> the image's config, digest, size, chain id
    DELETE /v1/images/{name}            -> 204 (409 while a task uses it)
    POST   /v1/images/prune             -> [names removed]

Errors are JSON `{error, message, details?}` with the status of the NstaskError raised.

Limits: a request body is at most MAX_REQUEST_BYTES (1 MiB: ECS takes task definitions of up
to 64 KiB, and overrides come on top), else 413 `request_too_large`; JSON nested deeper than
MAX_JSON_DEPTH (64) levels is refused with 400 (a task definition nests about 6). A client that
goes away before its body is in or before the answer is out is logged as `client_disconnected`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from agent import execute, gc, images, logwatch, pull
from agent.engine import Engine, logging_stats
from agent.errors import (
    MAX_REQUEST_BYTES,
    AgentRunning,
    Conflict,
    InvalidInput,
    NstaskError,
    RequestTooLarge,
)
from agent.warmpool import is_pool_id
from shim import jsonfile

log = structlog.get_logger("nstask.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
VERSION = "0.1.0"
EXIT_GRACE_S = 0.5
MAX_JSON_DEPTH = 64
LOG_READERS = concurrent.futures.ThreadPoolExecutor(
    max_workers=256, thread_name_prefix="nstask-logs"
)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except NstaskError as e:
        return web.json_response(e.to_dict(), status=e.http_status)
    except web.HTTPException:
        raise
    except Exception as e:
        if isinstance(e, ConnectionError) and _client_gone(request):
            # Gone mid-body or mid-answer (Ctrl-C, a timeout): a normal event, nobody to answer.
            log.info("client_disconnected", method=request.method, path=request.path)
            return web.Response(status=400)
        log.exception("api_internal_error", path=request.path)
        return web.json_response({"error": "internal", "message": str(e)}, status=500)


def _exec_container(task: Any, name: Any) -> Any:
    """The running container of `task` an exec runs in (named, or the only one)."""
    if name:
        chosen = [c for c in task.containers if c.name == name]
        if not chosen:
            raise InvalidInput(
                f"task {task.id} has no container named {name!r}; it has: "
                + ", ".join(c.name for c in task.containers)
            )
    elif len(task.containers) == 1:
        chosen = task.containers
    else:
        raise InvalidInput(
            "the task has several containers; name one: "
            + ", ".join(c.name for c in task.containers)
        )
    c = chosen[0]
    if c.last_status != "RUNNING":
        raise Conflict(f"container {c.name} of task {task.id} is not running ({c.last_status})")
    return c


def _exec_body(raw: str | None) -> dict[str, Any]:
    """The interactive exec's request: the `request` query parameter, a JSON object."""
    if not raw:
        raise InvalidInput("the exec session needs a request parameter (JSON)")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidInput("the exec request is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput("the exec request must be a JSON object")
    return body


def _exec_request(body: dict[str, Any], init_pid: int) -> execute.ExecRequest:
    """The interactive exec's request, checked (names resolved in the container)."""
    command = body.get("command")
    if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
        raise InvalidInput("command must be a list of strings")
    env = body.get("environment") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in env.items()
    ):
        raise InvalidInput("environment must be an object of strings (names without '=')")
    for flag in ("tty", "stdin"):
        if not isinstance(body.get(flag, False), bool):
            raise InvalidInput(f"{flag} must be true or false")
    size = []
    for dim in ("columns", "rows"):
        n = body.get(dim, 0)
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 0xFFFF:
            raise InvalidInput(f"{dim} must be an integer from 0 to 65535")
        size.append(n)
    workdir = body.get("workdir")
    if workdir is not None and (not isinstance(workdir, str) or not workdir.startswith("/")):
        raise InvalidInput(f"workdir {workdir!r} must be an absolute path")
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or not user):
        raise InvalidInput("user must be a string: USER[:GROUP] (a name or a number)")
    resolved = (
        execute.resolve_user(user, Path(f"/proc/{init_pid}/root")) if user is not None else None
    )
    return execute.ExecRequest(
        command,
        tty=bool(body.get("tty", False)),
        stdin=bool(body.get("stdin", False)),
        env=env,
        user=resolved,
        workdir=workdir,
        columns=size[0],
        rows=size[1],
    )


class _WebSocketChannel:
    """agent.execute.Channel over aiohttp's WebSocket (binary messages; None when closed)."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws

    async def receive(self) -> bytes | None:
        while True:
            msg = await self._ws.receive()
            if msg.type == WSMsgType.BINARY:
                return bytes(msg.data)
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return None

    async def send(self, data: bytes) -> None:
        if self._ws.closed:
            raise ConnectionResetError("the exec client has gone")
        await self._ws.send_bytes(data)


async def _exec_session(
    engine: Engine, request: web.Request, sessions: set[web.WebSocketResponse]
) -> web.StreamResponse:
    from agent import exec_stream

    task = engine.get(request.match_info["id"])
    body = _exec_body(request.query.get("request"))
    c = _exec_container(task, body.get("container"))
    exec_req = _exec_request(body, c.pid or 0)
    info = await engine.client.get_container(c.containerd_id)
    if info is None or not info.spec:
        raise Conflict(f"container {c.name} of task {task.id} is gone")
    ws = web.WebSocketResponse(max_msg_size=exec_stream.MAX_FRAME)
    await ws.prepare(request)
    channel = _WebSocketChannel(ws)
    sessions.add(ws)
    try:
        code = await execute.attach(
            engine.client,
            c.containerd_id,
            dict(info.spec["process"]),
            exec_req,
            engine.config.task_dir / task.id,
            channel,
        )
        log.info("exec_session_ended", task=task.id, container=c.name, exit_code=code)
    except Exception as e:
        # After the upgrade an error is a message of the stream, not an HTTP answer.
        if isinstance(e, NstaskError):
            err = e.to_dict()
        else:
            log.exception("exec_session_failed", task=task.id, container=c.name)
            err = {"error": "internal", "message": f"the exec failed: {e}"}
        with contextlib.suppress(ConnectionError):
            await channel.send(exec_stream.message(exec_stream.ERROR, json.dumps(err).encode()))
    finally:
        sessions.discard(ws)
        with contextlib.suppress(ConnectionError):
            await ws.close()
    return ws


def _client_gone(request: web.Request) -> bool:
    """Whether the client's connection is closed (aiohttp raises ConnectionResetError on a
    read, ConnectionError on a write), as opposed to a ConnectionError of our own calls."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def _body(request: web.Request, *, own_checks: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON object of the request. `own_checks` names members whose validator bounds
    their nesting itself, with a located message (a task definition: taskdef's MAX_NESTING)."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise RequestTooLarge("the request body") from None
    try:
        data = json.loads(raw)
    except RecursionError:
        raise InvalidInput(_too_deep("the request body")) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInput(f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object")
    if _depth({k: v for k, v in data.items() if k not in own_checks}) > MAX_JSON_DEPTH:
        raise InvalidInput(_too_deep("the request body"))
    return data


def _too_deep(what: str) -> str:
    return f"{what} is nested too deeply (more than {MAX_JSON_DEPTH} levels)"


def _depth(value: Any) -> int:
    """How deep arrays and objects nest, without recursion (so any depth is safe)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, dict | list):
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            break
        stack.extend((c, depth + 1) for c in (item.values() if isinstance(item, dict) else item))
    return deepest


def build_app(engine: Engine) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=MAX_REQUEST_BYTES)
    # The open exec sessions: closed when the agent shuts down (their execs are then killed,
    # as for a client that went away), else the server would wait for them to end.
    sessions: set[web.WebSocketResponse] = set()

    async def close_exec_sessions(_: web.Application) -> None:
        for ws in list(sessions):
            with contextlib.suppress(ConnectionError):
                await ws.close(code=1001, message=b"the nstask agent is stopping")

    app.on_shutdown.append(close_exec_sessions)
    routes = web.RouteTableDef()

    @routes.get("/v1/version")
    async def version(_: web.Request) -> web.Response:
        ver = await engine.client.version()
        cfg = engine.config
        return web.json_response(
            {
                "netnsPrefix": cfg.netns_prefix,
                "bridge": cfg.bridge,
                "network": engine.network.name,
                "cniCacheDir": str(cfg.cni_cache_dir),
                "ipamDataDir": str(cfg.ipam_data_dir),
                "nstask": VERSION,
                "containerd": ver.version,
                "namespace": engine.config.namespace,
                "pid": os.getpid(),
                # Attachments made ahead of tasks (agent.warmpool): not leftovers.
                "warmPool": sorted(
                    {r.task_id for r in engine.store.resources() if is_pool_id(r.task_id)}
                ),
            }
        )

    @routes.get("/v1/agent")
    async def agent_status(_: web.Request) -> web.Response:
        """What `nstask agent status` shows: this agent, its settings, containerd, tasks."""
        return web.json_response(await _agent_status(engine))

    @routes.post("/v1/tasks")
    async def run(request: web.Request) -> web.Response:
        body = await _body(request, own_checks=("definition",))
        env = body.get("environment") or {}
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise InvalidInput("environment must be an object of strings")
        try:
            task = await engine.submit(
                body.get("definition"), source=str(body.get("source", "")), env=env
            )
        except RecursionError:  # validation walks the definition; _body bounds its depth
            raise InvalidInput(_too_deep("the task definition")) from None
        return web.json_response(task.to_dict(), status=201)

    @routes.get("/v1/tasks")
    async def ps(request: web.Request) -> web.Response:
        all_tasks = request.query.get("all") in ("1", "true")
        return web.json_response([t.to_dict() for t in engine.list_tasks(all_tasks=all_tasks)])

    @routes.get("/v1/tasks/{id}")
    async def inspect(request: web.Request) -> web.Response:
        task = engine.get(request.match_info["id"]).to_dict()
        for c in task["containers"]:
            c["logging"] = logging_stats(c["logPath"])  # the shim's counters
        return web.json_response(task)

    @routes.get("/v1/tasks/{id}/stats")
    async def task_stats(request: web.Request) -> web.Response:
        from agent import stats

        return web.json_response(
            await stats.task_stats(engine.ctx, engine.get(request.match_info["id"]))
        )

    @routes.get("/v1/tasks/{id}/wait")
    async def wait(request: web.Request) -> web.Response:
        return web.json_response((await engine.wait(request.match_info["id"])).to_dict())

    @routes.post("/v1/tasks/{id}/stop")
    async def stop(request: web.Request) -> web.Response:
        body = await _body(request) if request.can_read_body else {}
        timeout = body.get("timeout")
        if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
            raise InvalidInput("timeout must be a non-negative number of seconds")
        task = await engine.stop(request.match_info["id"], timeout=timeout)
        return web.json_response(task.to_dict())

    @routes.delete("/v1/tasks/{id}")
    async def rm(request: web.Request) -> web.Response:
        await engine.remove(
            request.match_info["id"], force=request.query.get("force") in ("1", "true")
        )
        return web.Response(status=204)

    @routes.post("/v1/tasks/{id}/exec")
    async def exec_(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        task = engine.get(request.match_info["id"])
        command = body.get("command")
        if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
            raise InvalidInput("command must be a list of strings")
        env = body.get("environment") or {}
        if not isinstance(env, dict):
            raise InvalidInput("environment must be an object of strings")
        c = _exec_container(task, body.get("container"))
        info = await engine.client.get_container(c.containerd_id)
        if info is None or not info.spec:
            raise Conflict(f"container {c.name} of task {task.id} is gone")
        chunks = execute.run(
            engine.client, c.containerd_id, dict(info.spec["process"]), command, env
        )
        first = await anext(chunks)  # errors before any output become a proper HTTP error
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write((json.dumps(first) + "\n").encode())
        async for item in chunks:
            await resp.write((json.dumps(item) + "\n").encode())
        await resp.write_eof()
        return resp

    @routes.get("/v1/tasks/{id}/exec")
    async def exec_session(request: web.Request) -> web.StreamResponse:
        """The interactive exec (`nstask exec -i/-t`): a WebSocket upgrade, agent.exec_stream."""
        return await _exec_session(engine, request, sessions)

    @routes.get("/v1/tasks/{id}/logs")
    async def logs(request: web.Request) -> web.StreamResponse:
        task = engine.get(request.match_info["id"])
        name = request.query.get("container")
        containers = [c for c in task.containers if name in (None, "", c.name)]
        if not containers:
            raise InvalidInput(
                f"task {task.id} has no container named {name!r}; it has: "
                + ", ".join(c.name for c in task.containers)
            )
        follow = request.query.get("follow") in ("1", "true")
        tail = _int_query(request, "tail")
        since = _float_query(request, "since")
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await _stream_logs(engine, task.id, containers, follow, tail, since, resp)
        await resp.write_eof()
        return resp

    @routes.post("/v1/gc")
    async def collect(request: web.Request) -> web.Response:
        body = await _body(request) if request.can_read_body else {}
        return web.json_response(
            await gc.collect(
                engine,
                dry_run=bool(body.get("dryRun")),
                stop_unknown=bool(body.get("stopUnknown")),
            )
        )

    @routes.get("/v1/secrets")
    async def secret_ls(_: web.Request) -> web.Response:
        return web.json_response(engine.secrets.names())

    @routes.put("/v1/secrets/{name:.+}")
    async def secret_put(request: web.Request) -> web.Response:
        body = await _body(request)
        value = body.get("value")
        if not isinstance(value, str):
            raise InvalidInput("value must be a string")
        engine.secrets.put(request.match_info["name"], value)
        return web.Response(status=204)

    @routes.delete("/v1/secrets/{name:.+}")
    async def secret_rm(request: web.Request) -> web.Response:
        engine.secrets.remove(request.match_info["name"])
        return web.Response(status=204)

    # Task-role credentials of the local store (agent.credentials): put and remove take
    # keys, listing shows roles and expirations only; nothing here answers with a key.
    @routes.get("/v1/credentials")
    async def credentials_ls(_: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(engine.credentials.roles))

    @routes.put("/v1/credentials/{role:.+}")
    async def credentials_put(request: web.Request) -> web.Response:
        from agent.credentials import check_role_arn, parse_credentials

        role = check_role_arn(request.match_info["role"])
        body = await _body(request)
        text = body.get("text")
        if not isinstance(text, str):
            raise InvalidInput("text must be a string (JSON or key=value lines)")
        fields = parse_credentials(text, where=str(body.get("source") or "the request"))
        await asyncio.to_thread(engine.credentials.put, role, fields)
        return web.Response(status=204)

    @routes.delete("/v1/credentials/{role:.+}")
    async def credentials_rm(request: web.Request) -> web.Response:
        await asyncio.to_thread(engine.credentials.remove, request.match_info["role"])
        return web.Response(status=204)

    @routes.get("/v1/metrics")
    async def metrics(_: web.Request) -> web.Response:
        """Per-container logging counters of every task not stopped, and totals."""
        out: list[dict[str, Any]] = []
        totals = {"dropped_lines": 0, "written_bytes": 0, "sink_errors": 0}
        for t in engine.list_tasks():
            for c in t.containers:
                stats = logging_stats(c.log_path) or {}
                for k in totals:
                    totals[k] += int(stats.get(k) or 0)
                out.append(
                    {
                        "task": t.id,
                        "container": c.name,
                        "health": c.health,
                        "lastStatus": c.last_status,
                        "logging": stats,
                    }
                )
        return web.json_response(
            {"tasks": len(engine.list_tasks()), "logging": totals, "containers": out}
        )

    @routes.get("/v1/images")
    async def image_ls(_: web.Request) -> web.Response:
        imgs = await images.list_images(engine.client)
        return web.json_response([i.to_dict() for i in imgs])

    def images_in_use() -> set[str]:
        return {c.image for t in engine.list_tasks() for c in t.containers}

    @routes.get("/v1/images/inspect/{name:.+}")
    async def image_inspect(request: web.Request) -> web.Response:
        config = await images.image_config(engine.client, request.match_info["name"])
        return web.json_response(config.to_dict())

    @routes.delete("/v1/images/{name:.+}")
    async def image_rm(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name in images_in_use():
            raise Conflict(f"image {name} is used by a task that is not stopped")
        await images.remove_image(engine.client, name)
        return web.Response(status=204)

    @routes.post("/v1/images/prune")
    async def image_prune(_: web.Request) -> web.Response:
        """Remove every image no task that is not stopped uses (content and snapshots go
        with containerd's GC)."""
        return web.json_response(await images.prune_images(engine.client, images_in_use()))

    @routes.post("/v1/images/pull")
    async def image_pull(request: web.Request) -> web.StreamResponse:
        """With {"progress": true} the answer is NDJSON: {"progress": {digest: [done, total]}}
        lines (at most ten a second) and then {"image": ...}; else one JSON object."""
        body = await _body(request)
        ref = body.get("ref")
        if not isinstance(ref, str) or not ref:
            raise InvalidInput("ref must be an image reference")
        creds = None
        if body.get("username"):
            creds = pull.Credentials(str(body["username"]), str(body.get("password", "")))
        state: list[pull.Progress] = []
        updated = asyncio.Event()

        def keep(p: pull.Progress) -> None:
            state[:] = [p]
            updated.set()

        job = asyncio.ensure_future(
            pull.pull(
                engine.client,
                ref,
                snapshotter=engine.config.snapshotter,
                creds=creds,
                insecure=engine.config.insecure_registries,
                progress=keep,
                docker_config=engine.config.docker_config or None,
            )
        )
        if not body.get("progress"):
            image = await job
            answer = image.to_dict()
            answer["transferred"] = state[0].transferred if state else 0
            return web.json_response(answer)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        try:
            # The first event (or an early error, as a proper HTTP error) before streaming.
            await asyncio.wait(
                [job, asyncio.ensure_future(updated.wait())], return_when=asyncio.FIRST_COMPLETED
            )
            if job.done():
                job.result()
            await resp.prepare(request)
            while not job.done():
                updated.clear()
                if state:
                    line = {"progress": state[0].layers, "transferred": state[0].transferred}
                    await resp.write((json.dumps(line) + "\n").encode())
                await asyncio.wait([job], timeout=0.1)
            if state:  # the final state, so every layer shows as done
                line = {"progress": state[0].layers, "transferred": state[0].transferred}
                await resp.write((json.dumps(line) + "\n").encode())
            try:
                image = job.result()
                answer = {
                    "image": {
                        **image.to_dict(),
                        "transferred": state[0].transferred if state else 0,
                    }
                }
            except NstaskError as e:
                answer = {"error": e.to_dict()}
            await resp.write((json.dumps(answer) + "\n").encode())
            await resp.write_eof()
            return resp
        finally:
            if not job.done():
                job.cancel()

    @routes.post("/v1/images/import")
    async def image_import(request: web.Request) -> web.Response:
        body = await _body(request)
        path = body.get("path")
        if not isinstance(path, str) or not Path(path).is_file():
            raise InvalidInput(f"image archive not found: {path!r}")
        refs = await images.import_archive(
            engine.client, Path(path), snapshotter=engine.config.snapshotter
        )
        return web.json_response([r.to_dict() for r in refs])

    app.add_routes(routes)
    return app


def _float_query(request: web.Request, key: str) -> float | None:
    raw = request.query.get(key)
    if raw in (None, ""):
        return None
    try:
        return float(raw)
    except ValueError:
        raise InvalidInput(f"{key} must be a number (epoch seconds), got {raw!r}") from None


def _int_query(request: web.Request, key: str) -> int | None:
    raw = request.query.get(key)
    if raw in (None, "", "all"):
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"{key} must be an integer, got {raw!r}") from None


async def _stream_logs(
    engine: Engine,
    task_id: str,
    containers: list[Any],
    follow: bool,
    tail: int | None,
    since: float | None,
    resp: web.StreamResponse,
) -> None:
    """Entries of each container in file order; with follow, until the task has stopped and
    every file is drained. Files are read in worker threads; a client that goes away ends them."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=1024)
    stopped = threading.Event()  # the task has stopped: followers drain and return
    gone = threading.Event()  # the client went away: readers return at once
    wakeup = logwatch.Wakeup()  # set with either: a follower's wait ends at once

    def put(item: dict[str, Any]) -> bool:
        fut = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while True:
            try:
                fut.result(timeout=0.5)
                return True
            except concurrent.futures.TimeoutError:
                if gone.is_set():
                    fut.cancel()
                    return False

    def container_done(c: Any) -> bool:
        """A container that exited while its task runs on (a non-essential one): its shim
        keeps reading until the task is deleted, so give it a moment after the exit."""
        return c.finished_at is not None and time.time() - c.finished_at > EXIT_GRACE_S

    def pump(c: Any) -> None:
        path = str(c.log_path)
        watch = None
        if follow:
            try:
                watch = logwatch.Watch(os.path.dirname(path), wakeup)
            except OSError as exc:  # no inotify watch left, no log directory: poll
                log.debug("log_follow_polls", task=task_id, error=str(exc))
        try:
            _pump(c, path, watch)
        finally:
            if watch is not None:
                watch.close()

    def _pump(c: Any, path: str, watch: logwatch.Watch | None) -> None:
        entries = (
            jsonfile.follow(
                path,
                stop=lambda: stopped.is_set() or gone.is_set() or container_done(c),
                tail=tail,
                since=since,
                # With inotify the wait ends on a change; the timeout only bounds how long a
                # non-essential container's exit (container_done) goes unnoticed.
                poll=0.02 if watch is None else 0.25,
                wake=wakeup.wait if watch is None else watch.wait,
            )
            if follow
            else jsonfile.read_entries(path, tail=tail, since=since)
        )
        try:
            for e in entries:
                item = {"container": c.name, "stream": e.stream, "time": e.time, "log": e.log}
                if gone.is_set() or not put(item):
                    return
        except FileNotFoundError:
            return  # the container never started, so it has no output

    async def watch_stop() -> None:
        with contextlib.suppress(NstaskError):
            await engine.wait(task_id)
        # No grace period needed: teardown's Tasks.Delete returns only after containerd has
        # closed the pipes and the logging shim has drained them and exited.
        stopped.set()
        wakeup.set()

    watcher = asyncio.create_task(watch_stop()) if follow else None
    # Followers block (they poll files) for as long as a task runs: they get a pool of their
    # own, so they can never take the threads that netlink and CNI calls need.
    pumps = [loop.run_in_executor(LOG_READERS, pump, c) for c in containers]

    async def finish() -> None:
        for result in await asyncio.gather(*pumps, return_exceptions=True):
            if isinstance(result, BaseException):
                log.error("log_stream_failed", task=task_id, error=str(result))
        await queue.put(None)

    done = asyncio.create_task(finish())
    done.add_done_callback(lambda _: wakeup.close())  # every pump has returned
    try:
        while (item := await queue.get()) is not None:
            await resp.write((json.dumps(item) + "\n").encode())
    finally:
        gone.set()
        wakeup.set()
        if watcher is not None:
            watcher.cancel()
        while not queue.empty():
            queue.get_nowait()
        with contextlib.suppress(Exception):
            await done


async def serve(engine: Engine, socket_path: Path) -> web.AppRunner:
    """Start the API on a unix socket only root can use."""
    app = build_app(engine)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if socket_in_use(socket_path):
        raise AgentRunning(f"another agent answers on {socket_path}", socket=str(socket_path))
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()  # a dead agent's
    old = os.umask(0o177)
    try:
        site = web.UnixSite(runner, str(socket_path))
        await site.start()
    finally:
        os.umask(old)
    os.chmod(socket_path, 0o600)
    return runner


def socket_in_use(path: Path) -> bool:
    """Whether a live process accepts connections on the unix socket at `path` (a socket file
    left by an agent that died refuses them)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        return False
    except OSError:
        return True  # there, but not ours to judge (a timeout, a full backlog): leave it
    finally:
        s.close()
    return True


STARTED_AT = time.time()  # the module is imported once, at the agent's start


async def _agent_status(engine: Engine) -> dict[str, Any]:
    cfg = engine.config
    containerd: dict[str, Any] = {"address": cfg.containerd_address, "reachable": False}
    try:
        ver = await asyncio.wait_for(engine.client.version(), 5)
        containerd |= {"reachable": True, "version": ver.version}
    except Exception as e:  # any failure means "not reachable": say which
        containerd["error"] = str(e) or type(e).__name__
    counts: dict[str, int] = {}
    for t in engine.list_tasks(all_tasks=True):
        counts[t.last_status] = counts.get(t.last_status, 0) + 1
    return {
        "pid": os.getpid(),
        "nstask": VERSION,
        "startedAt": STARTED_AT,
        "uptime": round(time.time() - STARTED_AT, 3),
        "socket": str(cfg.socket),
        "stateDir": str(cfg.state_dir),
        "runDir": str(cfg.run_dir),
        "namespace": cfg.namespace,
        "bridge": cfg.bridge,
        "subnet": cfg.subnet,
        "snapshotter": cfg.snapshotter,
        "cniPath": list(cfg.cni_path),
        "chainedPlugins": list(cfg.chained_plugins),
        "conflistFile": str(cfg.conflist_file) if cfg.conflist_file else None,
        "stopTasksOnExit": cfg.stop_tasks_on_exit,
        "containerd": containerd,
        "tasks": counts,
    }
