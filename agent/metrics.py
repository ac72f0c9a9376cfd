"""Prometheus metrics of the agent, on a listener of their own (off unless `metrics_address`
or NSTASK_METRICS_ADDRESS is set; loopback unless the user names another address).

    GET /metrics   the text exposition format (prometheus_client's)

    nstask_tasks{status}                                   gauge: tasks in the store by status
    nstask_task_starts_total{result}                       counter: starts ended, running|failed
    nstask_task_start_phase_seconds{phase}                 histogram: each start phase
        (task.timings; `container.<name>.<step>` counted as `container.<step>`)
    nstask_container_cpu_seconds_total{task,family,container}       counter
    nstask_container_memory_usage_bytes / _memory_limit_bytes       gauge (docker stats' usage)
    nstask_container_block_{read,write}_bytes_total                 counter
    nstask_container_pids                                           gauge
    nstask_task_network_{receive,transmit}_bytes_total{task,family,interface}  counter: the
        task netns is shared by its containers, so network is per task
    nstask_log_{lines,bytes,written_lines,written_bytes,dropped_lines,dropped_bytes,
                sink_errors}_total{task,family,container,driver}    counter: the logging shim's
    nstask_log_buffered_lines{...}                                  gauge

Everything but the start histograms is read at scrape time (one Tasks.Metrics call and one
netns read per running task); the histograms count the starts this agent process saw end.
prometheus_client is imported only here, and this module only when the listener is on.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import prometheus_client as prom
import structlog
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent import stats
from agent.config import listen_address
from agent.errors import NstaskError
from agent.store import TaskRecord

if TYPE_CHECKING:
    from agent.engine import Engine

log = structlog.get_logger("nstask.metrics")

__all__ = ["Metrics", "phase_label", "serve"]

# Start phases take milliseconds (netns, a container's create) to minutes (an image pull).
PHASE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
_LOG_COUNTERS = (
    "lines",
    "bytes",
    "written_lines",
    "written_bytes",
    "dropped_lines",
    "dropped_bytes",
    "sink_errors",
)
_CONTAINER_PHASE = re.compile(r"^container\.(.+)\.([a-z_]+)$")


def phase_label(name: str) -> str:
    """A bounded label: container names would make one series per container."""
    m = _CONTAINER_PHASE.match(name)
    return f"container.{m.group(2)}" if m else name


class Metrics:
    """The registry of one agent: start histograms fed by the lifecycle (observe), the rest
    gathered at each scrape (render)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.registry = prom.CollectorRegistry()
        self.phases = prom.Histogram(
            "nstask_task_start_phase_seconds",
            "Duration of each phase of a task start (task.timings).",
            ["phase"],
            buckets=PHASE_BUCKETS,
            registry=self.registry,
        )
        self.starts = prom.Counter(
            "nstask_task_starts",
            "Task starts that ended, by result (running: every container started).",
            ["result"],
            registry=self.registry,
        )
        self._snapshot: list[Metric] = []
        self.registry.register(_Snapshot(self))

    def observe(self, task: TaskRecord, error: str | None) -> None:
        """A start ended (Context.start_observers)."""
        self.starts.labels("failed" if error else "running").inc()
        for name, milliseconds in task.timings.items():
            if not name.startswith("stop."):
                self.phases.labels(phase_label(name)).observe(milliseconds / 1000)

    async def render(self) -> bytes:
        self._snapshot = await self._gather()
        try:
            return bytes(prom.generate_latest(self.registry))
        finally:
            self._snapshot = []

    async def _gather(self) -> list[Metric]:
        from agent.engine import logging_stats

        engine = self.engine
        by_status = GaugeMetricFamily("nstask_tasks", "Tasks by lastStatus.", labels=["status"])
        counts: dict[str, int] = {}
        for t in engine.list_tasks(all_tasks=True):
            counts[t.last_status] = counts.get(t.last_status, 0) + 1
        for status in ("PROVISIONING", "PENDING", "RUNNING", "DEPROVISIONING", "STOPPED"):
            by_status.add_metric([status], counts.pop(status, 0))
        for status, n in sorted(counts.items()):
            by_status.add_metric([status], n)
        c_labels = ["task", "family", "container"]
        cpu = CounterMetricFamily(
            "nstask_container_cpu_seconds", "CPU time of the container.", labels=c_labels
        )
        mem = GaugeMetricFamily(
            "nstask_container_memory_usage_bytes",
            "Memory in use less inactive page cache (docker stats' MEM USAGE).",
            labels=c_labels,
        )
        limit = GaugeMetricFamily(
            "nstask_container_memory_limit_bytes", "The container's memory limit.", labels=c_labels
        )
        blk_r = CounterMetricFamily(
            "nstask_container_block_read_bytes", "Bytes read from block devices.", labels=c_labels
        )
        blk_w = CounterMetricFamily(
            "nstask_container_block_write_bytes", "Bytes written to block devices.", labels=c_labels
        )
        pids = GaugeMetricFamily("nstask_container_pids", "Processes and threads.", labels=c_labels)
        n_labels = ["task", "family", "interface"]
        rx = CounterMetricFamily(
            "nstask_task_network_receive_bytes",
            "Bytes received in the task netns.",
            labels=n_labels,
        )
        tx = CounterMetricFamily(
            "nstask_task_network_transmit_bytes", "Bytes sent from the task netns.", labels=n_labels
        )
        l_labels = [*c_labels, "driver"]
        logs = {
            k: CounterMetricFamily(f"nstask_log_{k}", f"Logging shim: {k}.", labels=l_labels)
            for k in _LOG_COUNTERS
        }
        buffered = GaugeMetricFamily(
            "nstask_log_buffered_lines", "Logging shim: lines in the ring buffer.", labels=l_labels
        )
        for t in engine.list_tasks():
            try:
                per_container = await stats.task_stats(engine.ctx, t)
            except NstaskError as e:  # containerd away: the rest of the page still serves
                log.warning("metrics_stats_failed", task=t.id, error=e.message)
                per_container = {}
            networks_done = False
            for c in t.containers:
                labels = [t.id, t.family, c.name]
                s = per_container.get(c.containerd_id)
                if s is not None:
                    cpu.add_metric(labels, s["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9)
                    used, lim = stats.memory_usage(s)
                    mem.add_metric(labels, used)
                    limit.add_metric(labels, lim)
                    read, written = stats.block_io(s)
                    blk_r.add_metric(labels, read)
                    blk_w.add_metric(labels, written)
                    pids.add_metric(labels, s["pids_stats"].get("current", 0))
                    if not networks_done:
                        for ifname, n in (s.get("networks") or {}).items():
                            rx.add_metric([t.id, t.family, ifname], n["rx_bytes"])
                            tx.add_metric([t.id, t.family, ifname], n["tx_bytes"])
                        networks_done = True
                shim = logging_stats(c.log_path)
                if shim:
                    l_vals = [*labels, str(shim.get("driver", ""))]
                    for k, fam in logs.items():
                        fam.add_metric(l_vals, float(shim.get(k) or 0))
                    buffered.add_metric(l_vals, float(shim.get("buffered_lines") or 0))
        return [by_status, cpu, mem, limit, blk_r, blk_w, pids, rx, tx, *logs.values(), buffered]


class _Snapshot(Collector):
    """Hands prometheus_client the families gathered for the scrape in progress."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # no collect() at registration (nothing is gathered then)

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics._snapshot


async def serve(engine: Engine, address: str) -> tuple[web.AppRunner, Metrics]:
    """Start the listener; the Metrics observes every start from now on."""
    host, port = listen_address(address)
    metrics = Metrics(engine)
    app = web.Application()

    async def scrape(_: web.Request) -> web.Response:
        body = await metrics.render()
        return web.Response(body=body, headers={"Content-Type": prom.CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        await runner.cleanup()
        raise NstaskError(
            f"metrics listener {host}:{port} (metrics_address): {e.strerror or e}"
        ) from None
    if not ipaddress.ip_address("127.0.0.1" if host == "localhost" else host).is_loopback:
        log.warning("metrics_listener_not_loopback", address=f"{host}:{port}")
    engine.ctx.start_observers.append(metrics.observe)
    log.info("metrics_listening", address=f"{host}:{port}")
    return runner, metrics
