"""The Docker stats shape built from containerd's cgroup metrics, and docker stats' arithmetic."""

from __future__ import annotations

from typing import Any

import pytest

from agent import stats
from agent._pb.containerd.cgroups.v1 import metrics_pb2 as v1
from agent._pb.containerd.cgroups.v2 import metrics_pb2 as v2
from agent.netns import parse_net_dev

GIB = 1 << 30


def _v1_metrics(total: int, *, limit: int = 256 << 20) -> bytes:
    m = v1.Metrics()
    m.pids.current, m.pids.limit = 3, 4096
    m.cpu.usage.total, m.cpu.usage.kernel, m.cpu.usage.user = total, total // 4, total // 2
    m.cpu.usage.per_cpu.extend([total // 2, total - total // 2])
    m.cpu.throttling.periods, m.cpu.throttling.throttled_periods = 10, 2
    m.memory.usage.usage, m.memory.usage.max, m.memory.usage.limit = 40 << 20, 50 << 20, limit
    m.memory.total_inactive_file = 8 << 20
    m.memory.pg_fault = 77
    m.memory.hierarchical_memory_limit = 1 << 62
    m.blkio.io_service_bytes_recursive.add(op="Read", major=8, minor=0, value=4096)
    m.blkio.io_service_bytes_recursive.add(op="Write", major=8, minor=0, value=8192)
    m.blkio.io_service_bytes_recursive.add(op="Total", major=8, minor=0, value=12288)
    return m.SerializeToString()


def _sample(read_s: float, cgroup: dict[str, Any], system: int, **nets: int) -> stats.Sample:
    return stats.Sample(
        read_ns=int(read_s * 1e9),
        cgroup=cgroup,
        system_cpu_usage=system,
        online_cpus=2,
        networks={
            "lo": {"rx_bytes": 999, "tx_bytes": 999},
            "eth0": {"rx_bytes": nets.get("rx", 0), "tx_bytes": nets.get("tx", 0)},
        },
    )


def test_v1_metrics_become_docker_shape_with_docker_key_names() -> None:
    d = stats.decode("io.containerd.cgroups.v1.Metrics", _v1_metrics(10**9))
    assert d["cpu_stats"]["cpu_usage"] == {
        "total_usage": 10**9,
        "usage_in_kernelmode": 250_000_000,
        "usage_in_usermode": 500_000_000,
        "percpu_usage": [500_000_000, 500_000_000],
    }
    assert d["cpu_stats"]["throttling_data"] == {
        "periods": 10,
        "throttled_periods": 2,
        "throttled_time": 0,
    }
    mem = d["memory_stats"]
    assert (mem["usage"], mem["max_usage"], mem["limit"]) == (40 << 20, 50 << 20, 256 << 20)
    # memory.stat's own names, zeros included (Docker lists every key)
    assert mem["stats"]["pgfault"] == 77 and mem["stats"]["total_inactive_file"] == 8 << 20
    assert mem["stats"]["rss"] == 0 and "pg_fault" not in mem["stats"]
    assert d["pids_stats"] == {"current": 3, "limit": 4096}
    assert d["blkio_stats"]["io_service_bytes_recursive"][0] == {
        "major": 8,
        "minor": 0,
        "op": "Read",
        "value": 4096,
    }
    assert set(d["blkio_stats"]) >= {"io_serviced_recursive", "io_queue_recursive"}


def test_unlimited_cgroup_reports_at_most_host_memory() -> None:
    d = stats.decode("io.containerd.cgroups.v1.Metrics", _v1_metrics(1, limit=(1 << 63) - 4096))
    assert 0 < d["memory_stats"]["limit"] < 1 << 50


def test_v2_metrics_in_microseconds_become_nanoseconds() -> None:
    m = v2.Metrics()
    m.cpu.usage_usec, m.cpu.user_usec, m.cpu.system_usec, m.cpu.throttled_usec = 5, 3, 2, 1
    m.memory.usage, m.memory.usage_limit, m.memory.inactive_file = 100 << 20, 1 * GIB, 1 << 20
    m.pids.current = 2
    m.io.usage.add(major=254, minor=0, rbytes=10, wbytes=20, rios=1, wios=2)
    d = stats.decode("types.example/io.containerd.cgroups.v2.Metrics", m.SerializeToString())
    assert d["cpu_stats"]["cpu_usage"] == {
        "total_usage": 5000,
        "usage_in_kernelmode": 2000,
        "usage_in_usermode": 3000,
    }
    assert d["cpu_stats"]["throttling_data"]["throttled_time"] == 1000
    assert d["memory_stats"]["stats"]["inactive_file"] == 1 << 20
    assert d["pids_stats"] == {"current": 2}
    ops = {(e["op"], e["value"]) for e in d["blkio_stats"]["io_service_bytes_recursive"]}
    assert ops == {("read", 10), ("write", 20)}
    assert stats.memory_usage(d)[0] == 99 << 20  # inactive page cache is not counted


def test_unknown_metrics_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown metrics type"):
        stats.decode("io.containerd.cgroups.v9.Metrics", b"")


def test_first_sample_has_zero_precpu_and_go_zero_preread() -> None:
    cg = stats.decode(stats.V1_METRICS, _v1_metrics(10**9))
    out = stats.build(_sample(100, cg, 10**12), None, name="/app", container_id="t-0-app")
    assert out["preread"] == stats.ZERO_TIME
    assert out["precpu_stats"]["cpu_usage"]["total_usage"] == 0
    assert stats.cpu_percent(out) == 0.0
    assert out["network_rate_stats"] == {"rx_bytes_per_sec": 0.0, "tx_bytes_per_sec": 0.0}
    assert out["read"] == "1970-01-01T00:01:40.000000000Z"
    assert (out["name"], out["id"], out["num_procs"]) == ("/app", "t-0-app", 0)


def test_cpu_percent_is_share_of_host_time_times_cpus() -> None:
    """One CPU busy out of two over a second: docker stats shows 100%."""
    before = _sample(100, stats.decode(stats.V1_METRICS, _v1_metrics(10**9)), 10**12, rx=0)
    after = _sample(
        101, stats.decode(stats.V1_METRICS, _v1_metrics(2 * 10**9)), 10**12 + 2 * 10**9, rx=5000
    )
    out = stats.build(after, before, name="/app", container_id="x")
    assert out["precpu_stats"]["system_cpu_usage"] == 10**12
    assert stats.cpu_percent(out) == pytest.approx(100.0)
    # lo is not one of the task's networks; the rate is per second between the samples
    assert list(out["networks"]) == ["eth0"]
    assert out["network_rate_stats"]["rx_bytes_per_sec"] == pytest.approx(5000.0)
    assert stats.net_io(out) == (5000, 0)
    assert stats.block_io(out) == (4096, 8192)
    assert stats.memory_usage(out) == (32 << 20, 256 << 20)


def test_host_mode_sample_has_no_networks() -> None:
    cg = stats.decode(stats.V1_METRICS, _v1_metrics(1))
    s = stats.Sample(1, cg, 1, 1, None)
    out = stats.build(s, None, name="/a", container_id="a")
    assert "networks" not in out and "network_rate_stats" not in out
    assert stats.net_io(out) == (0, 0)


def test_a_second_reader_right_after_keeps_a_baseline_that_is_not_milliseconds_old() -> None:
    h = stats.History()
    cg: dict[str, Any] = {}
    s0, s1, s1b, s2 = (_sample(t, cg, 0) for t in (10.0, 11.0, 11.01, 12.0))
    assert h.baseline(s0) is None
    assert h.baseline(s1) is s0
    assert h.baseline(s1b) is s0  # 10 ms after s1: compared with s0, s1 stays the latest
    assert h.baseline(s2) is s1


def test_system_cpu_usage_counts_seven_columns_in_nanoseconds() -> None:
    text = "cpu  100 0 50 800 25 5 20 7 0 0\ncpu0 1 2 3 4 5 6 7 0 0 0\n"
    ticks = 100 + 50 + 800 + 25 + 5 + 20
    assert stats.system_cpu_usage(text) == ticks * 1_000_000_000 // stats._CLK_TCK
    with pytest.raises(ValueError):
        stats.system_cpu_usage("intr 1 2 3\n")


def test_proc_net_dev_is_parsed_into_docker_network_keys() -> None:
    text = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets"
        " errs drop fifo colls carrier compressed\n"
        "    lo:     100       2    0    0    0     0          0         0      100       2"
        "    0    0    0     0       0          0\n"
        "  eth0: 5000 40 1 2 0 0 0 3 6000 50 4 5 0 0 0 0\n"
    )
    nets = parse_net_dev(text)
    assert nets["eth0"] == {
        "rx_bytes": 5000,
        "rx_packets": 40,
        "rx_errors": 1,
        "rx_dropped": 2,
        "tx_bytes": 6000,
        "tx_packets": 50,
        "tx_errors": 4,
        "tx_dropped": 5,
    }
    assert nets["lo"]["rx_bytes"] == 100


def _number(message: Any, name: str) -> int:
    return int(message.DESCRIPTOR.fields_by_name[name].number)


def test_field_numbers_match_containerds_cgroup_metrics() -> None:
    """Our own .proto of the subset: numbers that differ would garble every sample."""
    assert [_number(v1.Metrics, f) for f in ("pids", "cpu", "memory", "blkio")] == [2, 3, 4, 5]
    assert _number(v1.MemoryStat, "total_inactive_file") == 30
    assert _number(v1.MemoryStat, "usage") == 33
    assert _number(v1.BlkIOEntry, "value") == 5
    assert [_number(v2.Metrics, f) for f in ("pids", "cpu", "memory", "io")] == [1, 2, 4, 6]
    assert _number(v2.MemoryStat, "usage") == 32 and _number(v2.MemoryStat, "max_usage") == 36
    assert v1.Metrics.DESCRIPTOR.full_name == stats.V1_METRICS
    assert v2.Metrics.DESCRIPTOR.full_name == stats.V2_METRICS
