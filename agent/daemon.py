"""`nstask agent`: wire the parts together and serve until SIGTERM/SIGINT.

On SIGTERM the agent stops serving and leaves its tasks running (containerd's shims hold
them), as the ECS agent does on an update; the next agent re-attaches to them.

One agent per state dir: the first thing an agent does is take an exclusive flock on
`<state dir>/agent.lock` (which holds its pid), for as long as it runs; and it never takes a
socket another agent answers on. The state and run dirs are 0700 and the store, its WAL and
agent.log 0600 from their creation on (the WAL holds task definitions and `-e` values); modes
found looser at start are fixed, with a warning. No process-wide umask: task dirs and the files
bind-mounted into containers get explicit modes of their own, readable by non-root users.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from agent.config import AgentConfig
from agent.errors import AgentRunning, NstaskError, StateError, Unavailable

if TYPE_CHECKING:
    from aiohttp import web

    from agent.credentials import CredentialSource
    from agent.tracing import StartTraces

log = structlog.get_logger("nstask.agent")


def configure_logging(*, json_output: bool = False, level: str = "info") -> None:
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"])
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


async def _connect(config: AgentConfig) -> object:
    """containerd may still be starting (bootstrap, CI): retry for a few seconds."""
    from agent.containerd import Containerd

    client = Containerd(address=config.containerd_address, namespace=config.namespace)
    delay, deadline = 0.1, asyncio.get_running_loop().time() + 10
    while True:
        try:
            await client.version()
            return client
        except Unavailable:
            if asyncio.get_running_loop().time() > deadline:
                await client.close()
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def private_dir(path: Path) -> None:
    """Create `path` 0700 (its missing parents get the usual mode: they are not ours)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)


def _fix_mode(path: Path) -> None:
    """Take away any group or world access an older nstask or a user gave `path`."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077 and mode & stat.S_ISVTX:  # /tmp or the like: not ours to close
        log.warning("dir_shared", path=str(path), mode=oct(mode), note="give nstask its own")
    elif mode & 0o077:
        os.chmod(path, mode & 0o700)
        log.warning("mode_fixed", path=str(path), old_mode=oct(mode), new_mode=oct(mode & 0o700))


def _lock_state_dir(config: AgentConfig) -> int:
    """Hold an exclusive flock on the state dir's lock file for the agent's life (the fd
    stays open until the process ends), or fail naming the agent that holds it."""
    path = config.state_dir / "agent.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise AgentRunning(
            f"another nstask agent (pid {holder}) runs on the state dir {config.state_dir};"
            " stop it first, or give this agent a --state-dir of its own",
            pid=holder,
            state_dir=str(config.state_dir),
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _private_file(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def credential_sources(
    config: AgentConfig, sts: CredentialSource | None = None
) -> list[CredentialSource]:
    """Where task-role credentials come from, in the order they are asked: the one place
    the chain is built (a source added here is used by every task's credentials URI).
    First the local per-role store (`nstask credentials put`), then, when given, a real STS
    AssumeRole with the agent's own credentials (agent.aws; it answers nothing when the agent
    has none or AWS is not in its secret sources)."""
    from agent.credentials import LocalCredentialStore

    sources: list[CredentialSource] = [LocalCredentialStore(config.state_dir / "credentials")]
    if sts is not None:
        sources.append(sts)
    return sources


async def run_agent(config: AgentConfig) -> None:
    from agent.api import serve, socket_in_use
    from agent.engine import Engine
    from agent.network import TaskNetwork
    from agent.store import Store

    try:
        private_dir(config.state_dir)
        lock = _lock_state_dir(config)  # before anything else in the state dir is touched
        private_dir(config.run_dir)
    except OSError as e:
        raise StateError(f"cannot prepare {e.filename}: {e.strerror}") from None
    db = config.db_path
    for path in (config.state_dir, config.run_dir, db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        _fix_mode(path)
    _fix_mode(config.state_dir / "agent.log")
    if socket_in_use(config.socket):
        raise AgentRunning(
            f"another agent answers on {config.socket}; stop it first, or give this agent a"
            " --socket of its own",
            socket=str(config.socket),
        )
    store = Store(db)
    client = await _connect(config)
    network = TaskNetwork(config)
    engine = Engine(config, store, client, network)  # type: ignore[arg-type]
    from agent.warmpool import WarmPool

    warm_pool = WarmPool(config, store, network)  # attached netns ready ahead of tasks
    from agent.api import VERSION
    from agent.credentials import CredentialChain
    from agent.metadata.server import MetadataServers

    # 169.254.170.2 for the tasks (metadata, credentials) and the introspection API.
    metadata = MetadataServers(
        engine,
        config,
        CredentialChain(credential_sources(config, engine.ctx.secret_sources.sts)),
        agent_version=VERSION,
    )
    runner: web.AppRunner | None = None
    metrics_runner: web.AppRunner | None = None  # the Prometheus listener (agent.metrics)
    traces: StartTraces | None = None  # when an OTLP endpoint is configured
    ours: int | None = None
    pidfile = config.run_dir / "agent.pid"
    # One way out for every exit after this point, a failed start included (a socket that
    # cannot be bound, say): the pool is drained and the bridge removed when no task uses it.
    try:
        from agent import tracing

        if url := tracing.traces_url(config):  # opentelemetry is imported only then
            traces = tracing.StartTraces(url)
            engine.ctx.start_observers.append(traces.observe)
        await engine.start()
        if warm_pool.size:
            engine.warm_pool = warm_pool  # tasks take their network from it
        await warm_pool.start()
        await metadata.start()
        engine.metadata = metadata
        runner = await serve(engine, config.socket)
        ours = os.stat(config.socket).st_ino
        if config.metrics_address:  # prometheus_client is imported only then
            from agent import metrics

            metrics_runner, _ = await metrics.serve(engine, config.metrics_address)
        _private_file(pidfile, f"{os.getpid()}\n")
        log.info(
            "agent_ready",
            socket=str(config.socket),
            namespace=config.namespace,
            state_dir=str(config.state_dir),
            bridge=config.bridge,
            subnet=config.subnet,
        )
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        await done.wait()
    finally:
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        if runner is not None:
            await runner.cleanup()
        if config.stop_tasks_on_exit and runner is not None:
            log.info("agent_stopping", note="stopping every task first (--stop-tasks-on-exit)")
            await asyncio.gather(
                *[
                    engine.stop(t.id, reason="Agent stopped with --stop-tasks-on-exit")
                    for t in engine.list_tasks()
                ],
                return_exceptions=True,
            )
        else:
            log.info("agent_stopping", note="tasks keep running; the next agent re-attaches")
        await metadata.close()
        await engine.close()
        if traces is not None:
            await asyncio.to_thread(traces.close)  # send the spans still queued
        await warm_pool.close()
        if await network.remove_bridge_if_unused():
            log.info("bridge_removed", bridge=config.bridge, note="no task was attached")
        # The endpoint's rules go with the bridge (tasks still running keep both).
        with contextlib.suppress(NstaskError):
            await asyncio.to_thread(metadata.remove_stale_of_ours)
        await client.close()  # type: ignore[attr-defined]
        store.close()
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        # Only our own socket: another agent may have bound a new one at this path since.
        with contextlib.suppress(FileNotFoundError):
            if ours is not None and os.stat(config.socket).st_ino == ours:
                config.socket.unlink()
        os.close(lock)


def main(config: AgentConfig) -> int:
    try:
        asyncio.run(run_agent(config))
    except NstaskError as e:
        log.error("agent_failed", error=e.message)
        return e.exit_code
    return 0
