"""`nstask exec`: run a command in a running container (containerd exec), its output
streamed back, as `docker exec` without a terminal does.

The process gets the container's own process settings (user, env, cwd, capabilities) with
the given arguments. Its stdout and stderr go through two FIFOs in a private temporary
directory, read in worker threads while the process runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agent.containerd import Containerd
from agent.errors import InvalidInput, NstaskError

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
