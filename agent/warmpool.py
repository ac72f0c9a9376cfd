"""A warm pool of network attachments: netns already attached to the built-in network.

A task start spends most of its network time in CNI ADD (~70 ms) and netns creation. The pool
keeps `warm_pool_size` of them ready: each entry is a netns named `<netns_prefix>pool-<hex>`
attached as CNI container `pool-<hex>` (ifname eth0), recorded in the state store like any
resource (intent before creation, `created` after), under the task id `pool-<hex>`:

    netns  <netns_prefix>pool-<hex>          data {path}
    cni    <network>/pool-<hex>/eth0         data {netns: path, ip}

`take(task_id)` gives one entry to a task by moving both rows to the task id in one store
transaction, so an attachment can never go to two tasks; from then on the task's teardown
removes it like one it made itself (its CNI DEL goes to the container id in the key, the netns
by its name). Only the built-in network is pooled: an entry has no port mappings, and a user's
--conflist may mean anything.

At start, entries a previous agent recorded are adopted when their netns and CNI cache entry
still exist, and removed otherwise; at close every entry still in the pool is removed (a
host with no tasks holds nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from agent import netns
from agent.config import AgentConfig
from agent.errors import NstaskError
from agent.network import TaskNetwork
from agent.store import Resource, Store

__all__ = ["POOL_PREFIX", "Taken", "WarmPool", "is_pool_id"]

POOL_PREFIX = "pool-"
IFNAME = "eth0"
_RETRY_FIRST, _RETRY_MOST = 1.0, 30.0
# Seconds between a take and the refill it asks for (see _fill_forever).
REFILL_DELAY = 0.3
T = TypeVar("T")

log = structlog.get_logger("nstask.warmpool")


def is_pool_id(task_id: str) -> bool:
    return task_id.startswith(POOL_PREFIX)


@dataclass(frozen=True)
class Taken:
    """A pool entry now recorded as the task's own."""

    netns_name: str
    netns_path: str
    ip: str | None
    cni_key: str
    attachment_id: str  # the CNI container id the attachment was made with (the pool id)


@dataclass(frozen=True)
class _Entry:
    pool_id: str
    netns_name: str
    netns_path: str
    ip: str | None
    cni_key: str


class WarmPool:
    def __init__(self, config: AgentConfig, store: Store, network: TaskNetwork) -> None:
        self.config = config
        self.store = store
        self.network = network
        # Only the built-in network is pooled (a user's conflist may mean anything).
        self.size = config.warm_pool_size if config.conflist_file is None else 0
        self._ready: list[_Entry] = []
        self._making = 0
        self._wake = asyncio.Event()
        self._refill: asyncio.Task[None] | None = None
        self._closed = False

    # -- the API -----------------------------------------------------------------------
    async def start(self) -> None:
        """Adopt the entries a previous agent left that are whole, remove the rest, then
        fill up in the background."""
        for pool_id, rows in sorted(self._recorded().items()):
            entry = await self._adoptable(pool_id, rows)
            if entry is not None and len(self._ready) < self.size:
                self._ready.append(entry)
                log.info("warm_pool_adopted", pool_id=pool_id, ip=entry.ip)
            else:
                await self._remove_quietly(pool_id, rows)
        if self.size:
            self._refill = asyncio.create_task(self._fill_forever())

    async def take(self, task_id: str) -> Taken | None:
        """One ready entry, now recorded as `task_id`'s; None when the pool is empty."""
        while self._ready:
            e = self._ready.pop(0)
            rows = [("netns", e.netns_name), ("cni", e.cni_key)]
            if self.store.reassign(rows, e.pool_id, task_id):
                self._wake.set()
                log.info("warm_pool_taken", pool_id=e.pool_id, task=task_id, ip=e.ip)
                return Taken(e.netns_name, e.netns_path, e.ip, e.cni_key, e.pool_id)
            log.warning("warm_pool_entry_lost", pool_id=e.pool_id)
        self._wake.set()
        return None

    async def close(self) -> None:
        """Stop refilling and remove every entry still in the pool."""
        self._closed = True
        if self._refill is not None:
            self._refill.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refill
        for pool_id, rows in sorted(self._recorded().items()):
            await self._remove_quietly(pool_id, rows)
        self._ready.clear()

    @property
    def ready(self) -> int:
        return len(self._ready)

    # -- filling -----------------------------------------------------------------------
    async def _fill_forever(self) -> None:
        delay = _RETRY_FIRST
        while not self._closed:
            self._wake.clear()
            while len(self._ready) + self._making < self.size and not self._closed:
                try:
                    self._ready.append(await self._make())
                    delay = _RETRY_FIRST
                except Exception as e:  # the pool is an optimisation: never stop the agent
                    log.warning(
                        "warm_pool_fill_failed",
                        error=str(e) or type(e).__name__,
                        retry_in=delay,
                        exc_info=not isinstance(e, NstaskError),
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MOST)
            await self._wake.wait()
            # A take comes at a task's start: refilling at once would compete with that
            # start for the CPU (seen: its images and create phases 3x slower).
            await asyncio.sleep(REFILL_DELAY)

    async def _make(self) -> _Entry:
        pool_id = POOL_PREFIX + secrets.token_hex(8)
        name = self.config.netns_prefix + pool_id
        key = f"{self.network.name}/{pool_id}/{IFNAME}"
        self._making += 1
        try:
            self.store.intend("netns", name, pool_id)
            path = await _to_the_end(self.network.create_netns(name))
            self.store.created("netns", name, path=path)
            self.store.intend("cni", key, pool_id, netns=path)
            ip = await self.network.attach(pool_id, path, fault_points=False)
            self.store.created("cni", key, netns=path, ip=ip)
        except BaseException:
            # Cancelled (agent exit) or failed half-way: remove what was recorded and made.
            await asyncio.shield(
                self._remove_quietly(pool_id, {r.kind: r for r in self.store.resources(pool_id)})
            )
            raise
        finally:
            self._making -= 1
        log.info("warm_pool_filled", pool_id=pool_id, ip=ip)
        return _Entry(pool_id, name, path, ip, key)

    # -- records -----------------------------------------------------------------------
    def _recorded(self) -> dict[str, dict[str, Resource]]:
        """Pool ids with resource rows still under them (taken entries are not)."""
        out: dict[str, dict[str, Resource]] = {}
        for r in self.store.resources():
            if is_pool_id(r.task_id):
                out.setdefault(r.task_id, {})[r.kind] = r
        return out

    async def _adoptable(self, pool_id: str, rows: dict[str, Resource]) -> _Entry | None:
        ns, cni = rows.get("netns"), rows.get("cni")
        if ns is None or cni is None or ns.state != "created" or cni.state != "created":
            return None
        if cni.key != f"{self.network.name}/{pool_id}/{IFNAME}" or set(rows) != {"netns", "cni"}:
            return None
        path = str(ns.data.get("path", ""))
        exists = await asyncio.to_thread(netns.netns_exists, ns.key)
        cached = await asyncio.to_thread(
            self.network.runtime.cache.read, self.network.name, pool_id, IFNAME
        )
        if not exists or cached is None or cached.result is None:
            return None
        ip = cni.data.get("ip")
        return _Entry(pool_id, ns.key, path, str(ip) if ip else None, cni.key)

    async def _remove_quietly(self, pool_id: str, rows: dict[str, Resource]) -> None:
        """Remove an entry; a failure is logged and its rows stay for the next agent start
        (the engine's recovery, or this pool's start) to retry."""
        try:
            await self._remove_rows(pool_id, rows)
        except Exception as e:
            log.error("warm_pool_remove_failed", pool_id=pool_id, error=str(e))

    async def _remove_rows(self, pool_id: str, rows: dict[str, Resource]) -> None:
        """CNI DEL, then the netns; each row deleted once its resource is gone."""
        cni = rows.get("cni")
        if cni is not None:
            await self.network.detach(pool_id, cni.data.get("netns"), ifname=IFNAME)
            self.store.removed("cni", cni.key)
        ns = rows.get("netns")
        if ns is not None:
            await self.network.remove_netns(ns.key)
            self.store.removed("netns", ns.key)
        for kind, r in rows.items():
            if kind not in ("cni", "netns"):
                log.warning("warm_pool_unexpected_row", kind=kind, key=r.key)
        log.info("warm_pool_removed", pool_id=pool_id)


async def _to_the_end(coro: Coroutine[Any, Any, T]) -> T:
    """Await `coro` to its end even when cancelled meanwhile (a netns being created in a
    worker thread must exist before its removal runs), then re-raise the cancel."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait({task})
        raise
