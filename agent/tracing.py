"""Each task's start as an OpenTelemetry trace, sent over OTLP/HTTP (protobuf) when an endpoint
is configured: `otlp_endpoint` (NSTASK_OTLP_ENDPOINT, --otlp-endpoint), else the standard
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as is) or OTEL_EXPORTER_OTLP_ENDPOINT (the base URL,
`/v1/traces` appended, as the OTLP exporter specification says).

    task.start                       root span: from the start of `accept` to the last phase's
      accept, network.cni, images,   end; attributes nstask.task.id, nstask.task.family (and
      container.<name>.create, ...   aws.ecs.task.family); status ERROR with the error when the
                                     start failed. One child per phase of task.timeline, at
                                     its real start (created_at + offset) and end (+ timings).

The spans are made after the fact from what the lifecycle recorded (Context.start_observers),
so the engine carries no tracing code; the SDK's batch processor sends them from its own
thread. opentelemetry is imported only when an endpoint is configured.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.store import TaskRecord

log = structlog.get_logger("nstask.tracing")

__all__ = ["ROOT_SPAN", "StartTraces", "traces_url"]

ROOT_SPAN = "task.start"
_TRACES_PATH = "/v1/traces"


def traces_url(config: AgentConfig, environ: dict[str, str] | None = None) -> str | None:
    """Where spans go, or None when no endpoint is configured."""
    env = os.environ if environ is None else environ
    if config.otlp_endpoint:
        base = config.otlp_endpoint
    elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    elif env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        base = env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    else:
        return None
    base = base.rstrip("/")
    return base if base.endswith(_TRACES_PATH) else base + _TRACES_PATH


class StartTraces:
    """A tracer provider of the agent's own (the process-wide one is left alone)."""

    def __init__(self, url: str, *, delay_ms: int = 500) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.url = url
        self.provider = TracerProvider(resource=Resource.create({"service.name": "nstask-agent"}))
        self.provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=url, timeout=5), schedule_delay_millis=delay_ms
            )
        )
        self.tracer = self.provider.get_tracer("nstask.lifecycle")
        log.info("otlp_export", endpoint=url)

    def observe(self, task: TaskRecord, error: str | None) -> None:
        """A start ended (Context.start_observers): its phases become one trace."""
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        created_ns = int(task.created_at * 1e9)
        phases = {
            name: (
                created_ns + int(offset * 1e6),
                created_ns + int((offset + task.timings[name]) * 1e6),
            )
            for name, offset in task.timeline.items()
            if name in task.timings and name != "start_total"  # the root span is that one
        }
        if not phases:
            return
        attributes = {
            "nstask.task.id": task.id,
            "nstask.task.family": task.family,
            "aws.ecs.task.family": task.family,
        }
        root = self.tracer.start_span(
            ROOT_SPAN,
            start_time=min(start for start, _ in phases.values()),
            attributes=attributes,
        )
        parent = trace.set_span_in_context(root)
        for name, (start, end) in sorted(phases.items(), key=lambda p: p[1]):
            span = self.tracer.start_span(
                name, context=parent, start_time=start, attributes=attributes
            )
            span.end(end_time=end)
        if error:
            root.set_status(Status(StatusCode.ERROR, error))
        root.end(end_time=max(end for _, end in phases.values()))

    def close(self) -> None:
        """Send what is still queued (bounded by the exporter's timeout)."""
        self.provider.shutdown()
