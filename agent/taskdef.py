"""Task definitions: the JSON that ECS accepts, validated into a small typed model.

Accepts a whole `register-task-definition` input, or the `{"taskDefinition": {...}}` answer of
`describe-task-definition`. Every problem is reported with the path of the field it concerns
(`containerDefinitions[0].image`), all problems at once. Fields that ECS has and nstask does
not act on yet are accepted with one warning each naming the field.

Kept free of heavy imports: the CLI imports it for `nstask validate`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from agent.errors import TaskDefinitionError

NETWORK_MODES = ("awsvpc", "bridge", "host", "none")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_ENV_NAME_RE = re.compile(r"^[^=\0]+$")

# Task-level and container-level keys ECS accepts. Those nstask acts on are parsed below;
# the rest are accepted with a warning (one per field, naming it).
_TASK_KEYS_USED = {"family", "networkMode", "containerDefinitions", "cpu", "memory"}
_TASK_KEYS_IGNORED = {
    "taskRoleArn",
    "executionRoleArn",
    "volumes",
    "placementConstraints",
    "requiresCompatibilities",
    "tags",
    "pidMode",
    "ipcMode",
    "proxyConfiguration",
    "inferenceAccelerators",
    "ephemeralStorage",
    "runtimePlatform",
    "revision",
    "taskDefinitionArn",
    "status",
    "compatibilities",
    "registeredAt",
    "registeredBy",
    "requiresAttributes",
    "deregisteredAt",
    "enableFaultInjection",
}
_TASK_KEYS_SILENT = {
    # describe-task-definition bookkeeping: not settings, so no warning.
    "revision",
    "taskDefinitionArn",
    "status",
    "compatibilities",
    "registeredAt",
    "registeredBy",
    "requiresAttributes",
    "deregisteredAt",
    "requiresCompatibilities",
}
_CONTAINER_KEYS_USED = {
    "name",
    "image",
    "command",
    "entryPoint",
    "environment",
    "essential",
    "portMappings",
    "cpu",
    "memory",
    "memoryReservation",
    "stopTimeout",
    "workingDirectory",
    "user",
    "hostname",
    "readonlyRootFilesystem",
    "dockerLabels",
}
_CONTAINER_KEYS_IGNORED = {
    "repositoryCredentials",
    "links",
    "healthCheck",
    "environmentFiles",
    "secrets",
    "dependsOn",
    "startTimeout",
    "logConfiguration",
    "linuxParameters",
    "ulimits",
    "privileged",
    "dnsServers",
    "dnsSearchDomains",
    "extraHosts",
    "volumesFrom",
    "mountPoints",
    "disableNetworking",
    "interactive",
    "pseudoTerminal",
    "dockerSecurityOptions",
    "systemControls",
    "resourceRequirements",
    "firelensConfiguration",
    "credentialSpecs",
    "gpu",
    "restartPolicy",
    "versionConsistency",
}


@dataclass(frozen=True)
class PortMapping:
    container_port: int
    host_port: int | None
    protocol: str  # "tcp" | "udp"


@dataclass(frozen=True)
class ContainerDefinition:
    name: str
    image: str
    command: tuple[str, ...] | None = None
    entry_point: tuple[str, ...] | None = None
    environment: tuple[tuple[str, str], ...] = ()
    essential: bool = True
    port_mappings: tuple[PortMapping, ...] = ()
    cpu: int | None = None
    memory: int | None = None  # MiB, hard limit
    memory_reservation: int | None = None  # MiB, soft limit
    stop_timeout: int | None = None  # seconds
    working_directory: str | None = None
    user: str | None = None
    hostname: str | None = None
    readonly_root_filesystem: bool = False
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TaskDefinition:
    family: str
    network_mode: str
    containers: tuple[ContainerDefinition, ...]
    cpu: int | None = None  # CPU units (1024 = 1 vCPU)
    memory: int | None = None  # MiB
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def container(self, name: str) -> ContainerDefinition:
        for c in self.containers:
            if c.name == name:
                return c
        raise KeyError(name)


class _Problems:
    """Collects (path, message) pairs so the user sees every problem at once."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.warnings: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append((path, message))


def load_json(text: str | bytes, *, source: str = "") -> Any:
    """Parse JSON, turning a syntax error into a located TaskDefinitionError."""
    try:
        return json.loads(text)
    except UnicodeDecodeError as e:
        raise TaskDefinitionError(
            [("", f"is not UTF-8 text ({e.reason})")], source=source
        ) from None
    except json.JSONDecodeError as e:
        raise TaskDefinitionError(
            [("", f"is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}")],
            source=source,
        ) from None


def parse_task_definition(data: Any, *, source: str = "") -> TaskDefinition:
    """Validate ECS task definition JSON (already decoded) into a TaskDefinition."""
    p = _Problems()
    if isinstance(data, dict) and isinstance(data.get("taskDefinition"), dict):
        data = data["taskDefinition"]
    if not isinstance(data, dict):
        raise TaskDefinitionError(
            [("", f"must be a JSON object (a task definition), not {_kind(data)}")], source=source
        )
    for key in data:
        if key in _TASK_KEYS_USED:
            continue
        if key in _TASK_KEYS_SILENT:
            continue
        if key in _TASK_KEYS_IGNORED:
            p.warnings.append(f"{key}: accepted but not supported by nstask yet; ignored")
        else:
            p.warnings.append(f"{key}: unknown task definition field; ignored")

    family = _str(p, data, "family", "", required=False) or "nstask"
    if family and not _NAME_RE.match(family):
        p.add("family", "must be 1-255 letters, digits, hyphens or underscores")
    network_mode = _str(p, data, "networkMode", "", required=False) or "awsvpc"
    if network_mode not in NETWORK_MODES:
        p.add(
            "networkMode",
            f"unknown network mode {network_mode!r}; expected one of {', '.join(NETWORK_MODES)}",
        )
    cpu = _units(p, data.get("cpu"), "cpu", _parse_cpu)
    memory = _units(p, data.get("memory"), "memory", _parse_memory)

    containers: list[ContainerDefinition] = []
    defs = data.get("containerDefinitions")
    if defs is None:
        p.add("containerDefinitions", "is required")
    elif not isinstance(defs, list):
        p.add("containerDefinitions", f"must be a list, not {_kind(defs)}")
    elif not defs:
        p.add("containerDefinitions", "must hold at least one container definition")
    else:
        for i, cdef in enumerate(defs):
            c = _container(p, cdef, f"containerDefinitions[{i}]", network_mode)
            if c is not None:
                containers.append(c)
        seen: dict[str, int] = {}
        for i, c in enumerate(containers):
            if c.name in seen:
                p.add(
                    f"containerDefinitions[{i}].name",
                    f"duplicate container name {c.name!r} "
                    f"(also containerDefinitions[{seen[c.name]}])",
                )
            seen.setdefault(c.name, i)
        if containers and len(containers) == len(defs) and not any(c.essential for c in containers):
            p.add("containerDefinitions", "at least one container must be essential")
    if p.items:
        raise TaskDefinitionError(p.items, source=source)
    return TaskDefinition(
        family=family,
        network_mode=network_mode,
        containers=tuple(containers),
        cpu=cpu,
        memory=memory,
        warnings=tuple(p.warnings),
    )


def parse_task_definition_text(text: str | bytes, *, source: str = "") -> TaskDefinition:
    return parse_task_definition(load_json(text, source=source), source=source)


def _container(p: _Problems, c: Any, at: str, network_mode: str) -> ContainerDefinition | None:
    if not isinstance(c, dict):
        p.add(at, f"must be an object, not {_kind(c)}")
        return None
    before = len(p.items)
    for key in c:
        if key in _CONTAINER_KEYS_IGNORED:
            p.warnings.append(f"{at}.{key}: accepted but not supported by nstask yet; ignored")
        elif key not in _CONTAINER_KEYS_USED:
            p.warnings.append(f"{at}.{key}: unknown container definition field; ignored")
    name = _str(p, c, "name", at)
    if name is not None and not _NAME_RE.match(name):
        p.add(f"{at}.name", "must be 1-255 letters, digits, hyphens or underscores")
    image = _str(p, c, "image", at)
    if image is not None and (not image.strip() or any(ch.isspace() for ch in image)):
        p.add(f"{at}.image", f"is not a valid image reference: {image!r}")
    command = _str_list(p, c, "command", at)
    entry_point = _str_list(p, c, "entryPoint", at)
    env = _environment(p, c.get("environment"), f"{at}.environment")
    essential = _bool(p, c, "essential", at, default=True)
    ports = _ports(p, c.get("portMappings"), f"{at}.portMappings", network_mode)
    cpu = _int(p, c, "cpu", at, lo=0, hi=10 * 1024)
    memory = _int(p, c, "memory", at, lo=6, hi=None)
    reservation = _int(p, c, "memoryReservation", at, lo=6, hi=None)
    if memory is not None and reservation is not None and reservation > memory:
        p.add(f"{at}.memoryReservation", f"({reservation}) must not exceed memory ({memory})")
    stop_timeout = _int(p, c, "stopTimeout", at, lo=0, hi=120)
    workdir = _str(p, c, "workingDirectory", at, required=False)
    if workdir is not None and not workdir.startswith("/"):
        p.add(f"{at}.workingDirectory", "must be an absolute path")
    user = _str(p, c, "user", at, required=False)
    hostname = _str(p, c, "hostname", at, required=False)
    if hostname is not None and network_mode == "awsvpc":
        p.add(f"{at}.hostname", "is not supported in awsvpc network mode (as in ECS)")
    readonly = _bool(p, c, "readonlyRootFilesystem", at, default=False)
    labels = _labels(p, c.get("dockerLabels"), f"{at}.dockerLabels")
    if len(p.items) > before or name is None or image is None:
        return None
    return ContainerDefinition(
        name=name,
        image=image,
        command=command,
        entry_point=entry_point,
        environment=env,
        essential=essential,
        port_mappings=ports,
        cpu=cpu,
        memory=memory,
        memory_reservation=reservation,
        stop_timeout=stop_timeout,
        working_directory=workdir,
        user=user,
        hostname=hostname,
        readonly_root_filesystem=readonly,
        labels=labels,
    )


def _kind(v: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(v), type(v).__name__)


def _str(
    p: _Problems, d: dict[str, Any], key: str, at: str, *, required: bool = True
) -> str | None:
    path = f"{at}.{key}" if at else key
    v = d.get(key)
    if v is None:
        if required:
            p.add(path, "is required")
        return None
    if not isinstance(v, str):
        p.add(path, f"must be a string, not {_kind(v)}")
        return None
    if required and not v:
        p.add(path, "must not be empty")
        return None
    return v


def _str_list(p: _Problems, d: dict[str, Any], key: str, at: str) -> tuple[str, ...] | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        p.add(f"{at}.{key}", "must be a list of strings")
        return None
    return tuple(v)


def _bool(p: _Problems, d: dict[str, Any], key: str, at: str, *, default: bool) -> bool:
    v = d.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        p.add(f"{at}.{key}", f"must be true or false, not {_kind(v)}")
        return default
    return v


def _int(
    p: _Problems, d: dict[str, Any], key: str, at: str, *, lo: int, hi: int | None
) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        p.add(f"{at}.{key}", f"must be an integer, not {_kind(v)}")
        return None
    if v < lo or (hi is not None and v > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        p.add(f"{at}.{key}", f"must be {bound}, got {v}")
        return None
    return v


def _environment(p: _Problems, v: Any, at: str) -> tuple[tuple[str, str], ...]:
    if v is None:
        return ()
    if not isinstance(v, list):
        p.add(at, f"must be a list of {{name, value}} objects, not {_kind(v)}")
        return ()
    out: list[tuple[str, str]] = []
    for i, item in enumerate(v):
        if not isinstance(item, dict):
            p.add(f"{at}[{i}]", "must be an object with name and value")
            continue
        name, value = item.get("name"), item.get("value", "")
        if not isinstance(name, str) or not _ENV_NAME_RE.match(name):
            p.add(f"{at}[{i}].name", "must be a non-empty string without '='")
            continue
        if not isinstance(value, str):
            p.add(f"{at}[{i}].value", f"must be a string, not {_kind(value)}")
            continue
        out.append((name, value))
    return tuple(out)


def _labels(p: _Problems, v: Any, at: str) -> tuple[tuple[str, str], ...]:
    if v is None:
        return ()
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        p.add(at, "must be an object of string values")
        return ()
    return tuple(sorted(v.items()))


def _ports(p: _Problems, v: Any, at: str, network_mode: str) -> tuple[PortMapping, ...]:
    if v is None:
        return ()
    if not isinstance(v, list):
        p.add(at, f"must be a list, not {_kind(v)}")
        return ()
    out: list[PortMapping] = []
    for i, item in enumerate(v):
        here = f"{at}[{i}]"
        if not isinstance(item, dict):
            p.add(here, "must be an object")
            continue
        cport = _int(p, item, "containerPort", here, lo=1, hi=65535)
        if "containerPort" not in item:
            p.add(f"{here}.containerPort", "is required")
        hport = _int(p, item, "hostPort", here, lo=0, hi=65535)
        proto = item.get("protocol", "tcp")
        if proto not in ("tcp", "udp"):
            p.add(f"{here}.protocol", f"must be tcp or udp, got {proto!r}")
        if cport is None:
            continue
        if network_mode == "awsvpc" and hport not in (None, cport):
            p.add(f"{here}.hostPort", f"must equal containerPort ({cport}) in awsvpc network mode")
            continue
        out.append(PortMapping(container_port=cport, host_port=hport or None, protocol=str(proto)))
    return tuple(out)


def _units(p: _Problems, v: Any, key: str, parse: Any) -> int | None:
    if v is None:
        return None
    try:
        value: int = parse(v)
    except ValueError as e:
        p.add(key, str(e))
        return None
    return value


def _parse_cpu(v: Any) -> int:
    """CPU units: 256, "256", "1 vCPU", "0.5 vcpu"."""
    if isinstance(v, int) and not isinstance(v, bool):
        n = float(v)
    elif isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(vcpu)?\s*", v, re.IGNORECASE)
        if not m:
            raise ValueError(f"must be CPU units (e.g. 256) or vCPUs (e.g. '1 vCPU'), got {v!r}")
        n = float(m.group(1)) * (1024 if m.group(2) else 1)
    else:
        raise ValueError(f"must be a number or a string, not {_kind(v)}")
    if n < 128 or n > 16 * 1024:
        raise ValueError(f"must be between 128 CPU units (.125 vCPU) and 16 vCPU, got {v!r}")
    return int(n)


def _parse_memory(v: Any) -> int:
    """Memory in MiB: 512, "512", "0.5 GB", "2GB"."""
    if isinstance(v, int) and not isinstance(v, bool):
        n = float(v)
    elif isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(gb|mb|mib|gib)?\s*", v, re.IGNORECASE)
        if not m:
            raise ValueError(f"must be MiB (e.g. 512) or a size like '0.5 GB', got {v!r}")
        n = float(m.group(1)) * (1024 if (m.group(2) or "").lower() in ("gb", "gib") else 1)
    else:
        raise ValueError(f"must be a number or a string, not {_kind(v)}")
    if n < 6:
        raise ValueError(f"must be at least 6 MiB, got {v!r}")
    return int(n)


def with_environment(td: TaskDefinition, extra: dict[str, str]) -> TaskDefinition:
    """Apply run-time environment overrides (ECS RunTask containerOverrides) to all containers."""
    if not extra:
        return td
    from dataclasses import replace

    containers = []
    for c in td.containers:
        env = dict(c.environment)
        env.update(extra)
        containers.append(replace(c, environment=tuple(env.items())))
    return replace(td, containers=tuple(containers))
