"""`nstask exec`: run a command in a running container (containerd exec), its output
streamed back, as `docker exec` without a terminal does; and `nstask exec -i/-t` (attach
below): the client's input in, a pty when asked, over a two-way channel (agent.exec_stream).

The process gets the container's own process settings (user, env, cwd, capabilities) with
the given arguments. Its stdout and stderr go through two FIFOs in a private temporary
directory, read in worker threads while the process runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent.containerd import Containerd
from agent.errors import InvalidInput, NstaskError

log = structlog.get_logger("nstask.exec")

_ids = itertools.count(1)
# Readers block for as long as the command runs: a pool of their own, away from the
# default pool that netlink and CNI calls use.
READERS = ThreadPoolExecutor(max_workers=64, thread_name_prefix="nstask-exec")
CHUNK = 65536


async def run(
    client: Containerd,
    container_id: str,
    process: Mapping[str, Any],
    args: list[str],
    env: Mapping[str, str],
) -> AsyncIterator[dict[str, Any]]:
    """Yield {"stream", "data"} chunks as they come, then {"exitCode"}."""
    if not args:
        raise InvalidInput("exec needs a command to run")
    exec_id = f"nstask-exec-{os.getpid()}-{next(_ids)}"
    tmp = tempfile.mkdtemp(prefix="nstask-exec-")
    paths = {name: os.path.join(tmp, name) for name in ("stdout", "stderr")}
    queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    try:
        for p in paths.values():
            os.mkfifo(p, 0o600)
        # Open the read ends first (non-blocking so the open does not wait for a writer).
        fds = {name: os.open(p, os.O_RDONLY | os.O_NONBLOCK) for name, p in paths.items()}
        # Hold a write end of our own until the process has started, so the readers cannot
        # see EOF before containerd's shim has opened its ends.
        holders = [os.open(p, os.O_WRONLY | os.O_NONBLOCK) for p in paths.values()]
        for fd in fds.values():
            os.set_blocking(fd, True)
        spec = {
            **process,
            "args": list(args),
            "terminal": False,
            "env": [*process.get("env", []), *(f"{k}={v}" for k, v in env.items())],
        }
        await client.exec_process(
            container_id, exec_id, process_spec=spec, stdout=paths["stdout"], stderr=paths["stderr"]
        )

        def pump(name: str, fd: int) -> None:
            while chunk := os.read(fd, CHUNK):
                loop.call_soon_threadsafe(queue.put_nowait, (name, chunk))
            loop.call_soon_threadsafe(queue.put_nowait, None)

        waiter = asyncio.ensure_future(client.wait_task(container_id, exec_id=exec_id))
        try:
            await client.start_task(container_id, exec_id=exec_id)
            for fd in holders:
                os.close(fd)
            holders = []
            readers = [loop.run_in_executor(READERS, pump, n, fd) for n, fd in fds.items()]
            open_streams = len(readers)
            while open_streams:
                item = await queue.get()
                if item is None:
                    open_streams -= 1
                    continue
                yield {"stream": item[0], "data": item[1].decode("utf-8", "replace")}
            status = await waiter
            yield {"exitCode": status.code}
        except BaseException:
            with contextlib.suppress(NstaskError):
                await client.kill_task(container_id, signal.SIGKILL, exec_id=exec_id)
            raise
        finally:
            waiter.cancel()
            with contextlib.suppress(NstaskError):
                await client.delete_process(container_id, exec_id)
            for fd in [*fds.values(), *holders]:
                with contextlib.suppress(OSError):
                    os.close(fd)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- interactive exec (`nstask exec -i/-t`): stdin in, a terminal, over a two-way channel ------
class Channel(Protocol):
    """The client's end, as agent.api adapts its WebSocket: receive() gives one message of
    agent.exec_stream (None once the client has gone), send() one back."""

    async def receive(self) -> bytes | None: ...

    async def send(self, data: bytes) -> None: ...


class ClientGone(Exception):
    """The client's connection closed before the process ended."""


OUTPUT_DRAIN_S = 2.0  # after the exit, how long output may still come (a background child
# holding the terminal keeps it open: the exit is not held up for it)


def exec_fifos(task_dir: Path, exec_id: str) -> dict[str, Path]:
    """The FIFO paths of an exec, in its task's directory (removed with the exec, and with
    the task directory at the latest)."""
    d = task_dir / "exec"
    return {name: d / f"{exec_id}.{name}" for name in ("stdin", "stdout", "stderr")}


async def attach(
    client: Containerd,
    container_id: str,
    process: Mapping[str, Any],
    request: ExecRequest,
    task_dir: Path,
    channel: Channel,
) -> int | None:
    """Run the command with the client's input (and a terminal when asked), its output sent
    back as it comes, then EXIT. Returns the exit code (None when the client went away; the
    process and every process of its session are then killed)."""
    from agent import exec_stream as xs

    exec_id = f"nstask-exec-{os.getpid()}-{next(_ids)}"
    paths = exec_fifos(task_dir, exec_id)
    wanted = ["stdout"] + ([] if request.tty else ["stderr"]) + (["stdin"] if request.stdin else [])
    loop = asyncio.get_running_loop()
    fds: dict[str, int] = {}
    holders: list[int] = []
    created: list[Path] = []
    started = False
    exited = False
    waiter: asyncio.Future[Any] | None = None
    pid = 0
    try:
        paths["stdout"].parent.mkdir(mode=0o700, exist_ok=True)
        for name in wanted:
            created.append(paths[name])
            os.mkfifo(paths[name], 0o600)
        for name in ("stdout", "stderr"):
            if name in wanted:
                fds[name] = os.open(paths[name], os.O_RDONLY | os.O_NONBLOCK)
                # A write end of ours until the shim holds its own: no early EOF.
                holders.append(os.open(paths[name], os.O_WRONLY | os.O_NONBLOCK))
        if request.stdin:
            # Read-write: opening never blocks, and the FIFO buffers what comes before the
            # shim opens its read end at start. Closing it is the process's EOF.
            fds["stdin"] = os.open(paths["stdin"], os.O_RDWR | os.O_NONBLOCK)
        spec = process_for(process, request)
        await client.exec_process(
            container_id,
            exec_id,
            process_spec=spec,
            stdin=str(paths["stdin"]) if request.stdin else "",
            stdout=str(paths["stdout"]),
            stderr="" if request.tty else str(paths["stderr"]),
            terminal=request.tty,
        )
        waiter = asyncio.ensure_future(client.wait_task(container_id, exec_id=exec_id))
        pid = await client.start_task(container_id, exec_id=exec_id)
        started = True
        for fd in holders:
            os.close(fd)
        holders = []
        if request.tty and request.columns and request.rows:
            await client.resize_pty(
                container_id, width=request.columns, height=request.rows, exec_id=exec_id
            )

        async def pump_out(name: str, kind: int) -> None:
            fd = fds[name]
            while chunk := await _read(loop, fd):
                await channel.send(xs.message(kind, chunk))

        async def pump_in() -> None:
            while True:
                data = await channel.receive()
                if data is None:
                    raise ClientGone
                try:
                    kind, payload = xs.parse(data)
                except xs.StreamError as e:
                    log.warning("exec_bad_message", exec_id=exec_id, error=str(e))
                    continue
                if kind == xs.STDIN and "stdin" in fds:
                    await _write_all(loop, fds["stdin"], payload)
                elif kind == xs.EOF and "stdin" in fds:
                    os.close(fds.pop("stdin"))
                    with contextlib.suppress(NstaskError):
                        await client.close_stdin(container_id, exec_id=exec_id)
                elif kind == xs.RESIZE and request.tty:
                    columns, rows = xs.parse_resize(payload)
                    if columns and rows:
                        with contextlib.suppress(NstaskError):
                            await client.resize_pty(
                                container_id, width=columns, height=rows, exec_id=exec_id
                            )

        outputs = [
            asyncio.ensure_future(pump_out(n, xs.STDOUT if n == "stdout" else xs.STDERR))
            for n in ("stdout", "stderr")
            if n in fds
        ]
        inputs = asyncio.ensure_future(pump_in())
        try:
            await asyncio.wait([waiter, inputs], return_when=asyncio.FIRST_COMPLETED)
            if inputs.done() and not waiter.done():
                inputs.result()  # ClientGone, or what else ended the input
            status = await waiter
            exited = True
            await asyncio.wait(outputs, timeout=OUTPUT_DRAIN_S)
            for o in outputs:
                if o.done():
                    o.result()
            await channel.send(xs.message(xs.EXIT, json.dumps({"exitCode": status.code}).encode()))
            return int(status.code)
        except (ClientGone, ConnectionError):
            log.info("exec_client_gone", container=container_id, exec_id=exec_id)
            return None
        finally:
            for t in [inputs, *outputs]:
                t.cancel()
    finally:
        if started and not exited:
            await _kill_session(client, container_id, exec_id, pid)
        if waiter is not None:
            waiter.cancel()
        with contextlib.suppress(NstaskError):
            await client.delete_process(container_id, exec_id)
        for fd in [*fds.values(), *holders]:
            with contextlib.suppress(OSError):
                os.close(fd)
        for p in created:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        with contextlib.suppress(OSError):
            paths["stdout"].parent.rmdir()  # when no other exec uses it


async def _kill_session(client: Containerd, container_id: str, exec_id: str, pid: int) -> None:
    """SIGKILL the exec and every process of its session (what it started: a shell's
    children), then wait for it. The exec is the leader of its own session (runc setsid)."""
    with contextlib.suppress(NstaskError):
        await client.kill_task(container_id, signal.SIGKILL, exec_id=exec_id)
    if pid > 0:
        for other in session_members(pid):
            with contextlib.suppress(OSError):
                os.kill(other, signal.SIGKILL)
    with contextlib.suppress(NstaskError, TimeoutError):
        await asyncio.wait_for(client.wait_task(container_id, exec_id=exec_id), 5)


def session_members(sid: int) -> list[int]:
    """Host pids of the processes whose session id is `sid` (from /proc/<pid>/stat)."""
    out: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields_ = stat.rsplit(b")", 1)[-1].split()
        # After the name: state, ppid, pgrp, session.
        if len(fields_) > 3 and fields_[3] == str(sid).encode():
            out.append(int(entry))
    return out


async def _read(loop: asyncio.AbstractEventLoop, fd: int) -> bytes:
    while True:
        try:
            return os.read(fd, CHUNK)
        except BlockingIOError:
            await _ready(loop, fd, write=False)


async def _write_all(loop: asyncio.AbstractEventLoop, fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await _ready(loop, fd, write=True)


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, wake)
    try:
        await fut
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


class ExecRequest:
    """What the client asked for, checked (agent.api builds it from the request's JSON)."""

    def __init__(
        self,
        command: list[str],
        *,
        tty: bool = False,
        stdin: bool = False,
        env: Mapping[str, str] | None = None,
        user: tuple[int, int, list[int]] | None = None,
        workdir: str | None = None,
        columns: int = 0,
        rows: int = 0,
    ) -> None:
        if not command:
            raise InvalidInput("exec needs a command to run")
        self.command = command
        self.tty = tty
        self.stdin = stdin
        self.env = dict(env or {})
        self.user = user
        self.workdir = workdir
        self.columns = columns
        self.rows = rows


def process_for(process: Mapping[str, Any], request: ExecRequest) -> dict[str, Any]:
    """The exec's OCI process: the container's own with the request's changes."""
    env = [*process.get("env", []), *(f"{k}={v}" for k, v in request.env.items())]
    if request.tty and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=xterm")  # as docker exec -t sets it
    spec: dict[str, Any] = {
        **process,
        "args": list(request.command),
        "terminal": request.tty,
        "env": env,
    }
    if request.tty and request.columns and request.rows:
        spec["consoleSize"] = {"height": request.rows, "width": request.columns}
    else:
        spec.pop("consoleSize", None)
    if request.user is not None:
        uid, gid, groups = request.user
        spec["user"] = {"uid": uid, "gid": gid, **({"additionalGids": groups} if groups else {})}
    if request.workdir:
        spec["cwd"] = request.workdir
    return spec


def resolve_user(spec: str, root: Path) -> tuple[int, int, list[int]]:
    """`uid`, `uid:gid`, `name`, `name:group` (as docker exec --user), names looked up in
    the container's /etc/passwd and /etc/group under `root` (symlinks there are not
    followed: they would resolve on the host)."""
    name, _, group = spec.partition(":")
    if not name:
        raise InvalidInput(f"--user {spec!r}: expected USER[:GROUP]")
    passwd = _etc(root, "passwd")
    if name.isdigit():
        uid = int(name)
        entry = next((e for e in passwd if e[2] == name), None)
        gid = int(entry[3]) if entry and entry[3].isdigit() else 0
        user_name = entry[0] if entry else None
    else:
        entry = next((e for e in passwd if e[0] == name), None)
        if entry is None or not entry[2].isdigit() or not entry[3].isdigit():
            raise InvalidInput(f"--user {spec!r}: no user {name!r} in the container's /etc/passwd")
        uid, gid, user_name = int(entry[2]), int(entry[3]), name
    groups_file = _etc(root, "group")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            g = next((e for e in groups_file if e[0] == group), None)
            if g is None or len(g) < 3 or not g[2].isdigit():
                raise InvalidInput(
                    f"--user {spec!r}: no group {group!r} in the container's /etc/group"
                )
            gid = int(g[2])
    extra = sorted(
        {
            int(e[2])
            for e in groups_file
            if user_name and len(e) > 3 and e[2].isdigit() and user_name in e[3].split(",")
        }
        - {gid}
    )
    return uid, gid, extra


def _etc(root: Path, name: str) -> list[list[str]]:
    etc = root / "etc"
    try:
        if etc.is_symlink():
            return []
        fd = os.open(etc / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return []
    try:
        with os.fdopen(fd, "rb") as f:
            text = f.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


async def sweep_orphans(
    client: Containerd, task_dir: Path, containers: Mapping[str, list[str]]
) -> list[str]:
    """At agent start: the execs a previous agent left behind (it died while a session ran).
    Their FIFOs in the task's directory are their record: each exec still there, in any
    container of its task, is killed with its session and deleted; the FIFOs are removed.
    Returns the exec ids found."""
    found: list[str] = []
    for task_id, cids in containers.items():
        d = task_dir / task_id / "exec"
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for exec_id in sorted({n.rsplit(".", 1)[0] for n in names}):
            found.append(exec_id)
            for cid in cids:
                with contextlib.suppress(NstaskError):
                    info = await client.get_task(cid, exec_id=exec_id)
                    if info is None:
                        continue
                    if info.status != "stopped":
                        await _kill_session(client, cid, exec_id, info.pid)
                    await client.delete_process(cid, exec_id)
            for name in exec_fifos(task_dir / task_id, exec_id).values():
                with contextlib.suppress(FileNotFoundError):
                    name.unlink()
            log.info("exec_orphan_removed", task=task_id, exec_id=exec_id)
        with contextlib.suppress(OSError):
            d.rmdir()
    return found
