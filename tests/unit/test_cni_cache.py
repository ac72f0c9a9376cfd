"""The on-disk result cache and the host lock (no root)."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

import pytest

from agent.errors import Unavailable
from cni.cache import CacheEntry, ResultCache
from cni.errors import CNIError
from cni.lock import HostLock


def entry(cid: str, network: str = "net", ifname: str = "eth0") -> CacheEntry:
    return CacheEntry(
        network=network,
        container_id=cid,
        ifname=ifname,
        config=b'{"name": "net"}',
        result={"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]},
        cni_args={"A": "1"},
        capability_args={"portMappings": []},
        netns="/run/netns/x",
    )


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    cache = ResultCache(str(tmp_path))
    path = cache.write(entry("c1"))
    assert path == str(tmp_path / "results" / "net-c1-eth0")
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    got = cache.read("net", "c1", "eth0")
    assert got is not None
    assert got.result == entry("c1").result
    assert (got.config, got.cni_args, got.netns) == (b'{"name": "net"}', {"A": "1"}, "/run/netns/x")


def test_missing_entry_is_none_and_remove_is_idempotent(tmp_path: Path) -> None:
    cache = ResultCache(str(tmp_path))
    assert cache.read("net", "nobody", "eth0") is None
    cache.write(entry("c1"))
    assert cache.remove("net", "c1", "eth0") is True
    assert cache.remove("net", "c1", "eth0") is False


def test_corrupt_entry_raises_instead_of_being_ignored(tmp_path: Path) -> None:
    cache = ResultCache(str(tmp_path))
    path = Path(cache.write(entry("c1")))
    path.write_text('{"kind": "cniCacheV1", "truncat')
    with pytest.raises(CNIError) as info:
        cache.read("net", "c1", "eth0")
    assert info.value.code == 6
    assert str(path) in str(info.value)


def test_entries_lists_per_network_and_skips_temp_files(tmp_path: Path) -> None:
    cache = ResultCache(str(tmp_path))
    cache.write(entry("c1"))
    cache.write(entry("c2", ifname="eth1"))
    cache.write(entry("c3", network="other"))
    (tmp_path / "results" / ".nstask-tmp123").write_text("partial")
    assert [(e.container_id, e.ifname) for e in cache.entries("net")] == [
        ("c1", "eth0"),
        ("c2", "eth1"),
    ]
    assert len(cache.entries()) == 3


def test_no_temp_file_is_left_after_writes(tmp_path: Path) -> None:
    cache = ResultCache(str(tmp_path))
    for _ in range(3):
        cache.write(entry("c1"))
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["net-c1-eth0"]


def test_lock_excludes_other_threads(tmp_path: Path) -> None:
    lock = HostLock(str(tmp_path / "sub" / "cni.lock"))
    inside = 0
    most = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        with lock.hold():
            with guard:
                inside += 1
                most = max(most, inside)
            time.sleep(0.01)
            with guard:
                inside -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == 1
    assert stat.S_IMODE((tmp_path / "sub" / "cni.lock").stat().st_mode) == 0o600


def test_lock_timeout_raises_unavailable(tmp_path: Path) -> None:
    path = str(tmp_path / "cni.lock")
    with (
        HostLock(path).hold(),
        pytest.raises(Unavailable, match="held by another"),
        HostLock(path, timeout=0.05).hold(),
    ):
        pass
