"""The agent's settings: defaults in one place, each overridable by a flag or an NSTASK_* variable.

Every path is configurable so tests run an agent of their own with temporary state, their own
containerd namespace, their own bridge and subnet, beside a user's agent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from agent.errors import InvalidInput

DEFAULT_SOCKET = "/run/nstask/nstask.sock"


@dataclass(frozen=True)
class AgentConfig:
    state_dir: Path = Path("/var/lib/nstask")
    run_dir: Path = Path("/run/nstask")
    socket: Path = Path(DEFAULT_SOCKET)
    containerd_address: str = "/run/containerd/containerd.sock"
    namespace: str = "nstask"
    snapshotter: str = "overlayfs"
    runtime: str = "io.containerd.runc.v2"
    # The task network (awsvpc-like): one bridge, host-local IPAM, then chained plugins.
    network_name: str = "nstask"
    bridge: str = "nstask0"
    subnet: str = "10.213.0.0/24"
    cni_path: tuple[str, ...] = ("/usr/lib/cni", "/opt/cni/bin")
    cni_cache_dir: Path = Path("/var/lib/cni")
    ipam_data_dir: Path = Path("/var/lib/cni/networks")
    chained_plugins: tuple[str, ...] = ("portmap", "firewall")
    # A user-supplied conflist replaces the default network entirely.
    conflist_file: Path | None = None
    stop_timeout: float = 30.0
    # How long a container waits for a dependency when it sets no startTimeout (ECS: 3 min).
    start_timeout: float = 180.0
    # On SIGTERM the agent leaves tasks running (as the ECS agent does on update), unless set.
    stop_tasks_on_exit: bool = False
    # Image pull behaviour, as ECS_IMAGE_PULL_BEHAVIOR: default | always | once | prefer-cached.
    pull_policy: str = "prefer-cached"
    # Registries spoken to over plain HTTP (localhost and 127.0.0.1 always are).
    insecure_registries: tuple[str, ...] = ()
    # The docker config.json with registry credentials (auths, credsStore, credHelpers), or
    # its directory; empty: $DOCKER_CONFIG/config.json, else ~/.docker/config.json.
    docker_config: str = ""
    netns_prefix: str = "nstask-"
    # Host paths a task's host volumes may bind although they hold the agent's or
    # containerd's own state (refused by default: such a task could drive them).
    allow_host_paths: tuple[str, ...] = ()
    shim_path: Path | None = None
    dns_servers: tuple[str, ...] = field(default_factory=tuple)
    # Processes (and threads) per task, all its containers together: pids.max of the task
    # cgroup, against fork bombs. 0: no limit of nstask's own.
    pids_limit: int = 4096
    # Network namespaces kept attached to the built-in network ahead of tasks (agent.warmpool);
    # 0: none. Never with a user's --conflist.
    warm_pool_size: int = 2
    # What tasks are told about where they run (agent.metadata): ECS's cluster name, and the
    # region and account their ARNs carry (defaults that parse as ECS's; nothing is called).
    cluster: str = "nstask"
    region: str = "us-east-1"
    account_id: str = "000000000000"
    availability_zone: str = ""  # empty: "<region>a"
    # The metadata endpoint (169.254.170.2:80 in the tasks, DNATed per bridge to this port of
    # the bridge's gateway address) and the introspection API (127.0.0.1 only; 0: off).
    metadata_port: int = 51679
    introspection_port: int = 51678
    # Host-mode tasks reach 169.254.170.2 through a host-wide nat OUTPUT rule: one agent per
    # host at most may own it, so it is off unless asked (see README, "Task metadata").
    metadata_host_mode: bool = False
    # AWS (agent.aws): secrets from Secrets Manager / SSM Parameter Store and STS AssumeRole,
    # used only when the agent's own environment holds AWS credentials (botocore's chain).
    # The region of bare SSM names, STS and ARNs without one: `region` above.
    # Where secrets[].valueFrom is looked up, in order: "local" (the store under state_dir),
    # "aws" (Secrets Manager or SSM, by the ARN).
    secret_sources: tuple[str, ...] = ("local", "aws")
    # Endpoint URLs per service (LocalStack, moto); empty: AWS's own.
    sts_endpoint: str = ""
    secretsmanager_endpoint: str = ""
    ssm_endpoint: str = ""
    # STS AssumeRole: the credentials' lifetime, and how long before expiry they are renewed.
    sts_duration: int = 3600
    sts_refresh_margin: float = 300.0
    # Prometheus metrics listener (agent.metrics), off when empty. "9464" or ":9464" binds
    # 127.0.0.1; a named address ("0.0.0.0:9464") is taken as the user's choice.
    metrics_address: str = ""
    # OTLP/HTTP endpoint (e.g. http://127.0.0.1:4318) that gets each task's start as a trace
    # (agent.tracing); empty: OTEL_EXPORTER_OTLP_ENDPOINT if set, else no export.
    otlp_endpoint: str = ""
    # The agent's own log file (`--log-file`, and every `--detach`ed agent, agent.logfile):
    # rotated past this many bytes (0: never), keeping this many old files.
    log_max_bytes: int = 10 * 1024 * 1024
    log_max_files: int = 5

    @property
    def db_path(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def task_dir(self) -> Path:
        return self.state_dir / "tasks"

    @property
    def cni_lock(self) -> Path:
        return self.run_dir / "cni.lock"

    def with_overrides(self, **values: Any) -> AgentConfig:
        """Return a copy with the given non-None values set (flags left unset keep defaults)."""
        known = {f.name for f in fields(self)}
        clean = {k: v for k, v in values.items() if v is not None and k in known}
        return replace(self, **clean)


def _env_overrides() -> dict[str, Any]:
    """NSTASK_<FIELD> variables, typed like the field they set."""
    out: dict[str, Any] = {}
    for f in fields(AgentConfig):
        raw = os.environ.get("NSTASK_" + f.name.upper())
        if raw is None or raw == "":
            continue
        default = getattr(AgentConfig(), f.name)
        if isinstance(default, Path) or f.name in ("conflist_file", "shim_path"):
            out[f.name] = Path(raw)
        elif isinstance(default, bool):
            out[f.name] = raw.lower() in ("1", "true", "yes")
        elif isinstance(default, tuple):
            # Paths split on ':' or ','; host:port lists (registries) only on ','.
            seps = (
                raw
                if f.name in ("insecure_registries", "allow_host_paths")
                else raw.replace(":", ",")
            )
            out[f.name] = tuple(p.strip() for p in seps.split(",") if p.strip())
        elif isinstance(default, float):
            out[f.name] = float(raw)
        elif isinstance(default, int):
            if not raw.strip().isdigit():
                raise InvalidInput(f"NSTASK_{f.name.upper()}={raw!r}: must be a whole number >= 0")
            out[f.name] = int(raw)
        else:
            out[f.name] = raw
    return out


def load_config(*, config_file: str | os.PathLike[str] | None = None, **flags: Any) -> AgentConfig:
    """Defaults, then the config file (agent.config_file), then NSTASK_* variables, then
    command-line flags."""
    from agent.config_file import read_config_file

    config = (
        AgentConfig()
        .with_overrides(**read_config_file(config_file))
        .with_overrides(**_env_overrides())
        .with_overrides(**flags)
    )
    if config.metrics_address:
        listen_address(config.metrics_address)  # refused at start, with the setting named
    return config


def listen_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """`[host]:port` of the metrics listener as (host, port); no host means loopback."""
    import ipaddress

    raw = text.strip()
    host, sep, port_text = raw.rpartition(":")
    if not sep:
        host, port_text = "", raw
    host = host.strip("[]") or default_host
    where = f"metrics_address (NSTASK_METRICS_ADDRESS, --metrics-address) {text!r}"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidInput(f"{where}: the port must be a number from 1 to 65535")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise InvalidInput(f"{where}: {host!r} is not an IP address") from None
    return host, int(port_text)


def default_shim_path() -> Path:
    """The logging shim installed beside the running interpreter (the venv's bin/)."""
    import sys

    return Path(sys.executable).parent / "nstask-shim-logger"
