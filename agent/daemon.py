"""`nstask agent`: wire the parts together and serve until SIGTERM/SIGINT.

On SIGTERM the agent stops serving and leaves its tasks running (containerd's shims hold
them), as the ECS agent does on an update; the next agent re-attaches to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

import structlog

from agent.config import AgentConfig
from agent.errors import NstaskError, Unavailable

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


async def run_agent(config: AgentConfig) -> None:
    from agent.api import serve
    from agent.engine import Engine
    from agent.network import TaskNetwork
    from agent.store import Store

    for d in (config.state_dir, config.run_dir):
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = Store(config.db_path)
    client = await _connect(config)
    network = TaskNetwork(config)
    engine = Engine(config, store, client, network)  # type: ignore[arg-type]
    await engine.start()
    runner = await serve(engine, config.socket)
    pidfile = config.run_dir / "agent.pid"
    pidfile.write_text(f"{os.getpid()}\n")
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
    try:
        await done.wait()
    finally:
        await runner.cleanup()
        if config.stop_tasks_on_exit:
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
        await engine.close()
        if await network.remove_bridge_if_unused():
            log.info("bridge_removed", bridge=config.bridge, note="no task was attached")
        await client.close()  # type: ignore[attr-defined]
        store.close()
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        with contextlib.suppress(FileNotFoundError):
            config.socket.unlink()


def main(config: AgentConfig) -> int:
    try:
        asyncio.run(run_agent(config))
    except NstaskError as e:
        log.error("agent_failed", error=e.message)
        return e.exit_code
    return 0
