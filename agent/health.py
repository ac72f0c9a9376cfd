"""Container health checks, as ECS runs them: the check command executed inside the
container (containerd exec), every `interval` seconds, failing after `timeout`; `retries`
consecutive failures make the container UNHEALTHY; failures during `startPeriod` do not
count, a success during it makes the container HEALTHY at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import structlog

from agent.containerd import ExitStatus
from agent.errors import NstaskError
from agent.taskdef import HealthCheck

log = structlog.get_logger("nstask.health")

UNKNOWN, HEALTHY, UNHEALTHY = "UNKNOWN", "HEALTHY", "UNHEALTHY"
_exec_ids = itertools.count(1)


class ExecClient(Protocol):
    """The slice of the containerd client a health check needs."""

    async def exec_process(
        self, container_id: str, exec_id: str, *, process_spec: Mapping[str, Any]
    ) -> None: ...
    async def start_task(self, container_id: str, *, exec_id: str = "") -> int: ...
    async def wait_task(self, container_id: str, *, exec_id: str = "") -> ExitStatus: ...
    async def kill_task(
        self,
        container_id: str,
        signal: int = ...,
        *,
        all_processes: bool = False,
        exec_id: str = "",
    ) -> None: ...
    async def delete_process(self, container_id: str, exec_id: str) -> ExitStatus: ...


def check_args(check: HealthCheck) -> list[str] | None:
    """["CMD", a, b] -> [a, b]; ["CMD-SHELL", s] -> ["/bin/sh", "-c", s]; NONE -> None."""
    kind, *rest = check.command
    if kind == "CMD":
        return list(rest)
    if kind == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(rest)]
    return None


async def run_once(
    client: ExecClient,
    container_id: str,
    process: Mapping[str, Any],
    args: list[str],
    timeout: float,
) -> bool:
    """One check: True when the command exits 0 within the timeout."""
    exec_id = f"nstask-health-{next(_exec_ids)}"
    proc = {**process, "args": args, "terminal": False}
    await client.exec_process(container_id, exec_id, process_spec=proc)
    try:
        waiter = asyncio.ensure_future(client.wait_task(container_id, exec_id=exec_id))
        await client.start_task(container_id, exec_id=exec_id)
        try:
            status = await asyncio.wait_for(waiter, timeout)
            return status.code == 0
        except TimeoutError:
            with contextlib.suppress(NstaskError):
                await client.kill_task(container_id, signal.SIGKILL, exec_id=exec_id)
            return False
    finally:
        with contextlib.suppress(NstaskError):
            await client.delete_process(container_id, exec_id)


async def monitor(
    client: ExecClient,
    container_id: str,
    process: Mapping[str, Any],
    check: HealthCheck,
    on_change: Callable[[str], Awaitable[None]],
) -> None:
    """Run checks until cancelled, calling on_change(status) on every transition."""
    args = check_args(check)
    if args is None:
        return
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, failures = UNKNOWN, 0
    while True:
        try:
            ok = await run_once(client, container_id, process, args, check.timeout)
        except NstaskError as e:
            # The container may be going away; a failure to exec counts as a failed check.
            log.debug("health_exec_failed", container=container_id, error=str(e))
            ok = False
        in_grace = loop.time() - started < check.start_period
        new = status
        if ok:
            failures, new = 0, HEALTHY
        elif not in_grace:
            failures += 1
            if failures >= check.retries:
                new = UNHEALTHY
        if new != status:
            status = new
            await on_change(status)
        await asyncio.sleep(check.interval)
