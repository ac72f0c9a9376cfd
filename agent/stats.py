"""Per-container statistics in Docker's stats JSON shape, as ECS's task metadata endpoint v4
serves them at `/stats` and `/task/stats`, plus ECS's `network_rate_stats`.

    cgroup counters   containerd Tasks.Metrics (agent.containerd), an Any of
                      io.containerd.cgroups.v1.Metrics (this machine) or ...v2.Metrics
    network counters  the task netns' /proc/net/dev (agent.netns.interface_counters)
    host CPU time     /proc/stat (Docker's system_cpu_usage)

Docker computes CPU % from two samples: `precpu_stats` is the previous sample's `cpu_stats`
(and `preread` its time). The previous sample of each container lives in the task's runtime
object (TaskRuntime.stats, a History), so it goes away with the task. Several readers may
ask at once (the metadata endpoint from inside the task, `nstask stats`, a Prometheus scrape):
a sample taken less than MIN_GAP_S after the last one is compared with the one before it,
so no reader sees a CPU % computed over a few milliseconds.

The pure parts (decode, build, and what `nstask stats` derives from the JSON: cpu_percent,
memory_usage, block_io, net_io) import nothing heavy at module level: the CLI uses them.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from agent.containerd import Metric
    from agent.lifecycle.runtime import Context
    from agent.store import ContainerRecord, TaskRecord

__all__ = [
    "V1_METRICS",
    "V2_METRICS",
    "ZERO_TIME",
    "History",
    "Sample",
    "block_io",
    "build",
    "container_stats",
    "cpu_percent",
    "decode",
    "memory_usage",
    "net_io",
    "rfc3339_nano",
    "system_cpu_usage",
    "task_stats",
]

V1_METRICS = "io.containerd.cgroups.v1.Metrics"
V2_METRICS = "io.containerd.cgroups.v2.Metrics"
ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time.Time: Docker's preread of a first sample
MIN_GAP_S = 0.5
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# v1 memory.stat keys whose proto field names differ from the file's (Docker uses the file's).
_V1_MEMORY_KEYS = {
    "pg_pg_in": "pgpgin",
    "pg_pg_out": "pgpgout",
    "pg_fault": "pgfault",
    "pg_maj_fault": "pgmajfault",
    "total_pg_pg_in": "total_pgpgin",
    "total_pg_pg_out": "total_pgpgout",
    "total_pg_fault": "total_pgfault",
    "total_pg_maj_fault": "total_pgmajfault",
    "hierarchical_swap_limit": "hierarchical_memsw_limit",
}
_V1_BLKIO = (
    "io_service_bytes_recursive",
    "io_serviced_recursive",
    "io_queue_recursive",  # Docker's spelling; containerd's field is io_queued_recursive
    "io_service_time_recursive",
    "io_wait_time_recursive",
    "io_merged_recursive",
    "io_time_recursive",
    "sectors_recursive",
)


# -- samples ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of a container: the cgroup part already in Docker's shape (decode), the
    host's CPU time and the netns' interface counters at the same moment."""

    read_ns: int  # epoch nanoseconds
    cgroup: dict[str, Any]
    system_cpu_usage: int
    online_cpus: int
    networks: dict[str, dict[str, int]] | None  # None: no netns of its own (host mode)


@dataclass
class History:
    """The two latest samples of one container (kept in TaskRuntime.stats)."""

    last: Sample | None = None
    before: Sample | None = None

    def baseline(self, current: Sample) -> Sample | None:
        """The sample to compare `current` with, and remember `current` for the next call.

        A sample soon after the last (another reader) is compared with the one before the
        last and replaces nothing, so the baseline stays at least MIN_GAP_S old."""
        last = self.last
        if last is None:
            self.last = current
            return None
        if current.read_ns - last.read_ns >= MIN_GAP_S * 1e9:
            self.before, self.last = last, current
            return last
        return self.before


# -- decoding containerd's metrics ------------------------------------------------------


def decode(type_url: str, data: bytes) -> dict[str, Any]:
    """containerd's cgroup metrics (v1 or v2) as Docker's cpu_stats (without the host's
    part), memory_stats, blkio_stats and pids_stats."""
    name = type_url.rsplit("/", 1)[-1]
    if name == V1_METRICS:
        return _decode_v1(data)
    if name == V2_METRICS:
        return _decode_v2(data)
    raise ValueError(f"unknown metrics type {type_url!r}")


def _decode_v1(data: bytes) -> dict[str, Any]:
    from agent._pb.containerd.cgroups.v1 import metrics_pb2 as v1

    m = v1.Metrics.FromString(data)
    usage = m.cpu.usage
    cpu_usage: dict[str, Any] = {
        "total_usage": usage.total,
        "usage_in_kernelmode": usage.kernel,
        "usage_in_usermode": usage.user,
    }
    if usage.per_cpu:
        cpu_usage["percpu_usage"] = list(usage.per_cpu)
    thr = m.cpu.throttling
    mem = m.memory
    stats = {
        _V1_MEMORY_KEYS.get(f.name, f.name): getattr(mem, f.name)
        for f in mem.DESCRIPTOR.fields
        if f.type != f.TYPE_MESSAGE
    }
    blkio = m.blkio
    lists = [
        blkio.io_service_bytes_recursive,
        blkio.io_serviced_recursive,
        blkio.io_queued_recursive,
        blkio.io_service_time_recursive,
        blkio.io_wait_time_recursive,
        blkio.io_merged_recursive,
        blkio.io_time_recursive,
        blkio.sectors_recursive,
    ]
    limit = _memory_limit(mem.usage.limit, mem.hierarchical_memory_limit)
    return {
        "cpu_stats": {
            "cpu_usage": cpu_usage,
            "throttling_data": {
                "periods": thr.periods,
                "throttled_periods": thr.throttled_periods,
                "throttled_time": thr.throttled_time,
            },
        },
        "memory_stats": {
            "usage": mem.usage.usage,
            "max_usage": mem.usage.max,
            "stats": stats,
            "failcnt": mem.usage.failcnt,
            "limit": limit,
        },
        "blkio_stats": {
            key: [
                {"major": e.major, "minor": e.minor, "op": e.op, "value": e.value} for e in entries
            ]
            for key, entries in zip(_V1_BLKIO, lists, strict=True)
        },
        "pids_stats": _pids(m.pids.current, m.pids.limit),
    }


def _decode_v2(data: bytes) -> dict[str, Any]:
    from agent._pb.containerd.cgroups.v2 import metrics_pb2 as v2

    m = v2.Metrics.FromString(data)
    cpu, mem = m.cpu, m.memory
    skip = {"usage", "usage_limit", "max_usage", "swap_usage", "swap_limit", "swap_max_usage"}
    stats = {f.name: getattr(mem, f.name) for f in mem.DESCRIPTOR.fields if f.name not in skip}
    service_bytes, serviced = [], []
    for e in m.io.usage:
        for op, nbytes, ios in (("read", e.rbytes, e.rios), ("write", e.wbytes, e.wios)):
            service_bytes.append({"major": e.major, "minor": e.minor, "op": op, "value": nbytes})
            serviced.append({"major": e.major, "minor": e.minor, "op": op, "value": ios})
    memory: dict[str, Any] = {
        "usage": mem.usage,
        "stats": stats,
        "limit": _memory_limit(mem.usage_limit),
    }
    if mem.max_usage:
        memory["max_usage"] = mem.max_usage
    return {
        "cpu_stats": {
            "cpu_usage": {
                "total_usage": cpu.usage_usec * 1000,
                "usage_in_kernelmode": cpu.system_usec * 1000,
                "usage_in_usermode": cpu.user_usec * 1000,
            },
            "throttling_data": {
                "periods": cpu.nr_periods,
                "throttled_periods": cpu.nr_throttled,
                "throttled_time": cpu.throttled_usec * 1000,
            },
        },
        "memory_stats": memory,
        "blkio_stats": {
            key: (
                service_bytes
                if key == "io_service_bytes_recursive"
                else serviced
                if key == "io_serviced_recursive"
                else []
            )
            for key in _V1_BLKIO
        },
        "pids_stats": _pids(m.pids.current, m.pids.limit),
    }


def _pids(current: int, limit: int) -> dict[str, int]:
    out = {"current": current}
    if limit:  # 0: pids.max is "max"; Docker leaves the key out then
        out["limit"] = limit
    return out


def _memory_limit(*limits: int) -> int:
    """The lowest of the cgroup limits that are set (a container without a limit of its own
    has its task's as the hierarchical one) and the host's memory: an unlimited cgroup
    reports about 2^63, which no table should show."""
    host = _host_memory()
    return min([x for x in limits if x > 0] + ([host] if host else []), default=0)


def _host_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def system_cpu_usage(proc_stat: str) -> int:
    """The host's CPU time in nanoseconds, as Docker counts it: the first seven columns
    (user nice system idle iowait irq softirq) of /proc/stat's `cpu` line, in clock ticks."""
    for line in proc_stat.splitlines():
        if line.startswith("cpu "):
            ticks = sum(int(x) for x in line.split()[1:8])
            return ticks * 1_000_000_000 // _CLK_TCK
    raise ValueError("/proc/stat has no cpu line")


def rfc3339_nano(ns: int) -> str:
    """Epoch nanoseconds as Go's RFC 3339 with nanoseconds in UTC (Docker's `read`)."""
    secs, frac = divmod(ns, 1_000_000_000)
    return f"{datetime.fromtimestamp(secs, UTC):%Y-%m-%dT%H:%M:%S}.{frac:09d}Z"


# -- the Docker shape -------------------------------------------------------------------

_ZERO_CPU: dict[str, Any] = {
    "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
    "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
}


def _cpu_stats(s: Sample) -> dict[str, Any]:
    return {
        **s.cgroup["cpu_stats"],
        "system_cpu_usage": s.system_cpu_usage,
        "online_cpus": s.online_cpus,
    }


def _external(networks: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """The task's interfaces without lo (Docker and ECS list only those)."""
    return {name: dict(c) for name, c in sorted(networks.items()) if name != "lo"}


def build(
    current: Sample, previous: Sample | None, *, name: str, container_id: str
) -> dict[str, Any]:
    """The Docker stats JSON of one container (what ECS's /stats answers per container)."""
    out: dict[str, Any] = {
        "read": rfc3339_nano(current.read_ns),
        "preread": rfc3339_nano(previous.read_ns) if previous else ZERO_TIME,
        "pids_stats": current.cgroup["pids_stats"],
        "blkio_stats": current.cgroup["blkio_stats"],
        "num_procs": 0,  # Windows only, as in Docker
        "storage_stats": {},
        "cpu_stats": _cpu_stats(current),
        "precpu_stats": _cpu_stats(previous) if previous else _ZERO_CPU,
        "memory_stats": current.cgroup["memory_stats"],
        "name": name,
        "id": container_id,
    }
    if current.networks is not None:
        now = _external(current.networks)
        out["networks"] = now
        rx = tx = 0.0
        if previous is not None and previous.networks is not None:
            seconds = (current.read_ns - previous.read_ns) / 1e9
            before = _external(previous.networks)
            if seconds > 0:
                rx = _rate(now, before, "rx_bytes", seconds)
                tx = _rate(now, before, "tx_bytes", seconds)
        out["network_rate_stats"] = {"rx_bytes_per_sec": rx, "tx_bytes_per_sec": tx}
    return out


def _rate(
    now: Mapping[str, Mapping[str, int]],
    before: Mapping[str, Mapping[str, int]],
    key: str,
    seconds: float,
) -> float:
    delta = sum(c[key] - before[n][key] for n, c in now.items() if n in before)
    return max(delta, 0) / seconds


# -- what `nstask stats` shows (docker stats' arithmetic) -------------------------------


def cpu_percent(stats: Mapping[str, Any]) -> float:
    """CPU % as `docker stats` computes it: the container's share of the host's CPU time
    between the two samples, times the number of CPUs (100% = one CPU busy)."""
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    cpu_delta = cpu.get("cpu_usage", {}).get("total_usage", 0) - pre.get("cpu_usage", {}).get(
        "total_usage", 0
    )
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    cpus = cpu.get("online_cpus") or len(cpu.get("cpu_usage", {}).get("percpu_usage") or ())
    if not pre.get("system_cpu_usage") or system_delta <= 0 or cpu_delta <= 0:
        return 0.0
    return float(cpu_delta / system_delta * cpus * 100.0)


def memory_usage(stats: Mapping[str, Any]) -> tuple[int, int]:
    """(used, limit) bytes as `docker stats` shows them: usage less the inactive page cache
    (total_inactive_file on cgroup v1, inactive_file on v2)."""
    mem = stats.get("memory_stats") or {}
    usage, detail = int(mem.get("usage") or 0), mem.get("stats") or {}
    cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    used = usage - cache if cache < usage else usage
    return used, int(mem.get("limit") or 0)


def block_io(stats: Mapping[str, Any]) -> tuple[int, int]:
    """(read, written) bytes from blkio_stats.io_service_bytes_recursive."""
    read = written = 0
    entries = (stats.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []
    for e in entries:
        op = str(e.get("op", "")).lower()
        if op == "read":
            read += int(e.get("value") or 0)
        elif op == "write":
            written += int(e.get("value") or 0)
    return read, written


def net_io(stats: Mapping[str, Any]) -> tuple[int, int]:
    """(received, sent) bytes over every interface of `networks`."""
    nets: Mapping[str, Mapping[str, int]] = stats.get("networks") or {}
    return (
        sum(int(n.get("rx_bytes", 0)) for n in nets.values()),
        sum(int(n.get("tx_bytes", 0)) for n in nets.values()),
    )


# -- collecting from the live task ------------------------------------------------------


class MetricsClient(Protocol):
    """The one containerd call stats needs (agent.containerd.Containerd has it)."""

    async def metrics(self, container_ids: Iterable[str]) -> list[Metric]: ...


@dataclass
class _Reading:
    metrics: dict[str, Metric] = field(default_factory=dict)
    networks: dict[str, dict[str, int]] | None = None
    system_cpu: int = 0
    read_ns: int = 0


async def _read(ctx: Context, task: TaskRecord, ids: Sequence[str]) -> _Reading:
    """One Tasks.Metrics call for the containers, the netns counters and /proc/stat."""
    from agent import netns

    client = cast(MetricsClient, ctx.client)  # the real client; the lifecycle's seam lacks it
    nets: asyncio.Future[dict[str, dict[str, int]]] | None = None
    if task.netns:
        nets = asyncio.ensure_future(asyncio.to_thread(netns.interface_counters, task.netns))
    try:
        found = await client.metrics(ids)
    finally:
        networks = await nets if nets is not None else None
    with open("/proc/stat") as f:
        system = system_cpu_usage(f.read())
    return _Reading({m.id: m for m in found if m.id in ids}, networks, system, time.time_ns())


def _sample(reading: _Reading, metric: Metric) -> Sample:
    if metric.timestamp is not None:
        read_ns = int(metric.timestamp.timestamp() * 1e6) * 1000
    else:
        read_ns = reading.read_ns
    return Sample(
        read_ns=read_ns,
        cgroup=decode(metric.type_url, metric.data),
        system_cpu_usage=reading.system_cpu,
        online_cpus=os.cpu_count() or 1,
        networks=reading.networks,
    )


def _histories(ctx: Context, task: TaskRecord) -> dict[str, History] | None:
    rt = ctx.runtimes.get(task.id)
    return None if rt is None else rt.stats


def _running(task: TaskRecord) -> list[ContainerRecord]:
    return [c for c in task.containers if c.last_status == "RUNNING"]


def _docker(history: dict[str, History], c: ContainerRecord, current: Sample) -> dict[str, Any]:
    previous = history.setdefault(c.containerd_id, History()).baseline(current)
    return build(current, previous, name=f"/{c.name}", container_id=c.containerd_id)


async def container_stats(
    ctx: Context, task: TaskRecord, container: ContainerRecord
) -> dict[str, Any] | None:
    """The Docker stats JSON of one container, None when it is not running."""
    history = _histories(ctx, task)
    if history is None or container not in _running(task):
        return None
    reading = await _read(ctx, task, [container.containerd_id])
    metric = reading.metrics.get(container.containerd_id)
    if metric is None:
        return None
    return _docker(history, container, _sample(reading, metric))


async def task_stats(ctx: Context, task: TaskRecord) -> dict[str, dict[str, Any] | None]:
    """Every container's stats keyed by DockerId (the containerd id), None for a container
    that is not running: what ECS's /task/stats answers."""
    out: dict[str, dict[str, Any] | None] = {c.containerd_id: None for c in task.containers}
    history = _histories(ctx, task)
    running = _running(task)
    if history is None or not running:
        return out
    reading = await _read(ctx, task, [c.containerd_id for c in running])
    for c in running:
        metric = reading.metrics.get(c.containerd_id)
        if metric is not None:
            out[c.containerd_id] = _docker(history, c, _sample(reading, metric))
    return out
