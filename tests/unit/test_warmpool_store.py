"""The warm pool's bookkeeping against a fake network (no root): take() is atomic on the
store, start() adopts whole entries and removes broken ones, close() removes the rest."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from agent import netns, warmpool
from agent.config import AgentConfig
from agent.errors import NstaskError
from agent.store import Store
from agent.warmpool import Taken, WarmPool


class _Cached:
    def __init__(self) -> None:
        self.result: dict[str, Any] = {"ips": []}


class FakeCache:
    def __init__(self, net: FakeNetwork) -> None:
        self.net = net

    def read(self, network: str, container_id: str, ifname: str) -> _Cached | None:
        return _Cached() if container_id in self.net.attached else None


class _Runtime:
    def __init__(self, net: FakeNetwork) -> None:
        self.cache = FakeCache(net)


class FakeNetwork:
    name = "nstask"

    def __init__(self) -> None:
        self.netns: set[str] = set()
        self.attached: dict[str, str] = {}
        self.runtime = _Runtime(self)
        self.n = 0

    async def create_netns(self, name: str) -> str:
        self.netns.add(name)
        return f"/run/netns/{name}"

    async def remove_netns(self, name: str) -> None:
        self.netns.discard(name)

    async def attach(self, task_id: str, netns_path: str, **_: Any) -> str:
        self.n += 1
        self.attached[task_id] = netns_path
        return f"10.213.0.{self.n + 1}"

    async def detach(self, task_id: str, netns_path: str | None, *, ifname: str = "eth0") -> None:
        self.attached.pop(task_id, None)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state.db")


def _pool(store: Store, net: FakeNetwork, size: int = 1) -> WarmPool:
    return WarmPool(AgentConfig(warm_pool_size=size), store, net)  # type: ignore[arg-type]


async def _filled(pool: WarmPool, n: int) -> None:
    for _ in range(200):
        if pool.ready >= n:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"pool has {pool.ready}, want {n}")


def test_reassign_from_two_connections_gives_the_rows_to_one_task(tmp_path: Path) -> None:
    first = Store(tmp_path / "state.db")
    first.intend("netns", "nstask-pool-1", "pool-1")
    first.intend("cni", "nstask/pool-1/eth0", "pool-1")
    stores = [first, Store(tmp_path / "state.db")]
    rows = [("netns", "nstask-pool-1"), ("cni", "nstask/pool-1/eth0")]
    wins: list[str] = []
    barrier = threading.Barrier(2)

    def take(i: int) -> None:
        barrier.wait()
        if stores[i].reassign(rows, "pool-1", f"task-{i}"):
            wins.append(f"task-{i}")

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert {r.task_id for r in first.resources()} == {wins[0]}


def test_reassign_is_all_or_nothing(store: Store) -> None:
    store.intend("netns", "nstask-pool-1", "pool-1")
    # The cni row is missing: nothing moves.
    assert not store.reassign(
        [("netns", "nstask-pool-1"), ("cni", "nstask/pool-1/eth0")], "pool-1", "t1"
    )
    assert [r.task_id for r in store.resources()] == ["pool-1"]


def test_concurrent_takes_never_get_the_same_entry(store: Store) -> None:
    net = FakeNetwork()

    async def scenario() -> list[Taken | None]:
        pool = _pool(store, net, size=1)
        await pool.start()
        await _filled(pool, 1)
        got = await asyncio.gather(pool.take("task-a"), pool.take("task-b"))
        await _filled(pool, 1)  # the take triggered a refill
        await pool.close()
        return list(got)

    got = asyncio.run(scenario())
    taken = [t for t in got if t is not None]
    assert len(taken) == 1 and got.count(None) == 1
    t = taken[0]
    assert t.netns_name == "nstask-" + t.attachment_id and t.attachment_id.startswith("pool-")
    assert t.cni_key == f"nstask/{t.attachment_id}/eth0" and t.ip
    # Both rows of the entry now belong to the one task that got it; nothing else is left.
    owner = {r.key: r.task_id for r in store.resources()}
    assert set(owner) == {t.netns_name, t.cni_key}
    assert len(set(owner.values())) == 1 and set(owner.values()) <= {"task-a", "task-b"}
    # close() removed the refilled entry, and only it: the task's attachment stays.
    assert net.attached == {t.attachment_id: t.netns_path}
    assert net.netns == {t.netns_name}


def test_start_adopts_whole_entries_and_removes_broken_ones(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = FakeNetwork()

    async def first_agent() -> None:
        pool = _pool(store, net, size=2)
        await pool.start()
        await _filled(pool, 2)
        pool._refill.cancel()  # type: ignore[union-attr]  # the agent is killed: no close()

    asyncio.run(first_agent())
    ids = sorted({r.task_id for r in store.resources()})
    assert len(ids) == 2
    net.attached.pop(ids[1])  # its cache entry is gone: broken
    monkeypatch.setattr(netns, "netns_exists", lambda name: name in net.netns)

    async def second_agent() -> list[str]:
        pool = _pool(store, net, size=2)
        await pool.start()
        adopted = [e.pool_id for e in pool._ready]
        await _filled(pool, 2)
        await pool.close()
        return adopted

    assert asyncio.run(second_agent()) == [ids[0]]
    assert store.resources() == [] and net.attached == {} and net.netns == set()


def test_size_zero_or_a_user_conflist_makes_none(store: Store, tmp_path: Path) -> None:
    net = FakeNetwork()

    async def scenario(config: AgentConfig) -> int:
        pool = WarmPool(config, store, net)  # type: ignore[arg-type]
        await pool.start()
        await asyncio.sleep(0.05)
        made = net.n
        await pool.close()
        return made

    assert asyncio.run(scenario(AgentConfig(warm_pool_size=0))) == 0
    conflist = tmp_path / "x.conflist"
    assert asyncio.run(scenario(AgentConfig(warm_pool_size=2, conflist_file=conflist))) == 0


def test_gc_counts_a_taken_entry_as_live_under_its_pool_id(store: Store) -> None:
    """A taken entry's netns, veth, IPAM file and cache entry carry the pool id, while its
    rows name the task: gc must count the pool id as live, or it would tear the task's
    network out."""
    from agent import gc

    net = FakeNetwork()

    async def scenario() -> Taken | None:
        pool = _pool(store, net, size=1)
        await pool.start()
        await _filled(pool, 1)
        taken = await pool.take("a" * 32)
        assert pool._refill is not None
        pool._refill.cancel()
        return taken

    t = asyncio.run(scenario())
    assert t is not None

    class _Engine:
        config = AgentConfig()

        def __init__(self) -> None:
            self.store = store

        def list_tasks(self) -> list[Any]:
            return []

    live = gc._live_ids(_Engine())  # type: ignore[arg-type]
    assert "a" * 32 in live and t.attachment_id in live


def test_a_failing_removal_or_fill_never_stops_the_agent(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() runs at agent exit before the bridge, the store and the socket are dealt with:
    an entry it cannot remove stays recorded for the next start, and close() returns."""
    net = FakeNetwork()
    calls = {"attach": 0}
    real_attach = net.attach

    async def flaky_attach(task_id: str, netns_path: str, **kw: Any) -> str:
        calls["attach"] += 1
        if calls["attach"] == 1:
            raise RuntimeError("an unexpected failure")
        return await real_attach(task_id, netns_path, **kw)

    async def failing_detach(task_id: str, netns_path: str | None, *, ifname: str = "eth0") -> None:
        raise NstaskError("CNI DEL failed")

    net.attach = flaky_attach  # type: ignore[method-assign]
    monkeypatch.setattr(warmpool, "_RETRY_FIRST", 0.01)

    async def scenario() -> None:
        pool = _pool(store, net, size=1)
        await pool.start()
        await _filled(pool, 1)  # the first fill failed, the pool went on
        net.detach = failing_detach  # type: ignore[method-assign]
        await pool.close()

    asyncio.run(scenario())
    assert calls["attach"] == 2
    # The entry it could not remove is still recorded (the failed fill's rows were removed).
    assert sorted(r.kind for r in store.resources()) == ["cni", "netns"]
