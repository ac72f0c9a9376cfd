"""The metrics listener's address, its phase labels, and that nothing imports
prometheus_client or OpenTelemetry unless they are configured."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.config import listen_address, load_config
from agent.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("9464", ("127.0.0.1", 9464)),
        (":9464", ("127.0.0.1", 9464)),
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        ("0.0.0.0:9464", ("0.0.0.0", 9464)),  # named by the user: taken as is
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:9464", ("localhost", 9464)),
    ],
)
def test_listen_address_defaults_to_loopback(text: str, want: tuple[str, int]) -> None:
    assert listen_address(text) == want


@pytest.mark.parametrize("text", ["", "abc", "127.0.0.1:", "1.2.3.4:70000", "example.com:9464"])
def test_bad_listen_address_is_refused_naming_the_setting(text: str) -> None:
    with pytest.raises(InvalidInput, match="metrics_address"):
        listen_address(text)


def test_bad_metrics_address_from_the_environment_fails_at_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NSTASK_METRICS_ADDRESS", "nope")
    with pytest.raises(InvalidInput, match="NSTASK_METRICS_ADDRESS"):
        load_config()


def test_phase_labels_do_not_grow_with_container_names() -> None:
    from agent.metrics import phase_label

    assert phase_label("container.web-1.create") == "container.create"
    assert phase_label("container.a.b.dependencies") == "container.dependencies"
    assert phase_label("network.cni") == "network.cni"


def test_agent_and_cli_import_neither_prometheus_nor_opentelemetry() -> None:
    code = (
        "import sys, cli, agent.daemon, agent.api, agent.engine, agent.stats\n"
        "bad = [m for m in sys.modules if m.startswith(('prometheus_client', 'opentelemetry'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_otlp_endpoint_from_config_or_the_standard_variables() -> None:
    from agent.config import AgentConfig
    from agent.tracing import traces_url

    none = AgentConfig()
    assert traces_url(none, {}) is None
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318/"}
    assert traces_url(none, base) == "http://127.0.0.1:4318/v1/traces"
    signal = {**base, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://h:1/custom"}
    assert traces_url(none, signal) == "http://h:1/custom"  # the signal's own: used as is
    ours = AgentConfig(otlp_endpoint="http://127.0.0.1:9999")
    assert traces_url(ours, signal) == "http://127.0.0.1:9999/v1/traces"
    full = AgentConfig(otlp_endpoint="http://127.0.0.1:9999/v1/traces")
    assert traces_url(full, {}) == "http://127.0.0.1:9999/v1/traces"
