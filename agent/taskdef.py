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
from typing import Any, TypeVar, dataclass_transform

from agent import fields
from agent.errors import TaskDefinitionError

__all__ = [
    "CAPABILITIES",
    "DEPENDENCY_CONDITIONS",
    "LOG_DRIVERS",
    "LOG_DRIVERS_AS_JSON_FILE",
    "MAX_CONTAINERS",
    "MAX_DEFINITION_BYTES",
    "MAX_NESTING",
    "NETWORK_MODES",
    "ULIMIT_NAMES",
    "ContainerDefinition",
    "Dependency",
    "Device",
    "FirelensConfiguration",
    "HealthCheck",
    "LinuxParameters",
    "LogConfiguration",
    "MountPoint",
    "PortMapping",
    "RestartPolicy",
    "Secret",
    "TaskDefinition",
    "TaskDefinitionError",
    "Tmpfs",
    "Ulimit",
    "Volume",
    "VolumeFrom",
    "load_json",
    "local_secret_name",
    "parse_task_definition",
    "parse_task_definition_text",
    "start_order",
    "stop_order",
    "with_environment",
]

NETWORK_MODES = ("awsvpc", "bridge", "host", "none")
# Every check of a name or value uses fullmatch: `^...$` with re.match also matches before a
# final newline, so "web\n" passed as a name (issue 9).
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,255}")
_ENV_NAME_RE = re.compile(r"[^=\0]+")

# -- limits (issue 9: one task definition must not be able to freeze the agent) --------------
# ECS's documented limits where it has them; elsewhere a generous bound that no real task
# definition reaches, so that work stays small. Counts are checked before the items are parsed.
MAX_DEFINITION_BYTES = 64 * 1024  # ECS service quota "Task definition size": 64 KiB
MAX_CONTAINERS = 10  # ECS service quota "Containers per task definition": 10 (not adjustable)
MAX_NESTING = 32  # not ECS's: a real task definition nests about 7 levels
_MAX_VALUES = 1_000_000  # not ECS's: values in one decoded document (64 KiB holds ~32,000)
_MAX_ITEMS = 1000  # not ECS's: any list or map ECS sets no count for (env, ports, labels...)
_MAX_FIELDS = 200  # not ECS's: keys of one object (a container definition has ~50)
_MAX_ENV_FILES = 10  # ECS: "You can specify up to ten environment files"
_MAX_DNS_SERVERS = 32  # not ECS's (glibc reads 3 nameservers)
_MAX_INT32 = 2**31 - 1  # ECS's API types its integer fields (ulimits, ...) as 32-bit
_MAX_TASK_CPU = 16 * 1024  # Fargate: 16 vCPU
_MAX_CONTAINER_CPU = 10 * 1024  # ECS: 10 vCPU for one container
_MAX_MEMORY_MIB = 120 * 1024  # Fargate's largest task: 120 GB; bounds container memory too
_MAX_TMPFS_MIB = 1024 * 1024  # not ECS's: 1 TiB (tmpfs and /dev/shm sizes)

# Which fields nstask acts on, and what it says about the others: agent.fields (issue 12).


_T = TypeVar("_T")
_NOT_COMPARED = frozenset({"warnings"})  # TaskDefinition.warnings: not part of its value


@dataclass_transform(frozen_default=True, eq_default=True)
def _record(cls: type[_T]) -> type[_T]:
    """A frozen value class, as @dataclass(frozen=True) makes one, without the dataclasses
    module: that import and its code generation cost `nstask validate` ~14 ms of a ~43 ms
    start (issue 10). Fields are the class's annotations in order, defaults its values."""
    names = tuple(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063 (no inspect: slow)
    defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}
    compared = tuple(n for n in names if n not in _NOT_COMPARED)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}() takes {len(names)} arguments, got {len(args)}")
        values = dict(zip(names, args, strict=False))
        for k, v in kwargs.items():
            if k not in names or k in values:
                raise TypeError(f"{cls.__name__}(): unexpected or repeated argument {k!r}")
            values[k] = v
        for n in names:
            if n not in values:
                if n not in defaults:
                    raise TypeError(f"{cls.__name__}(): missing argument {n!r}")
                values[n] = defaults[n]
            object.__setattr__(self, n, values[n])

    def __setattr__(self: Any, name: str, value: Any) -> None:
        raise AttributeError(f"{cls.__name__} is frozen: cannot set {name!r}")

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in compared)

    def __hash__(self: Any) -> int:
        return hash(tuple(getattr(self, n) for n in compared))

    def __repr__(self: Any) -> str:
        return f"{cls.__name__}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in names) + ")"

    for f in (__init__, __setattr__, __eq__, __hash__, __repr__):
        f.__qualname__ = f"{cls.__name__}.{f.__name__}"
        setattr(cls, f.__name__, f)
    cls.__delattr__ = __setattr__  # type: ignore[method-assign, assignment]
    cls._fields = names  # type: ignore[attr-defined]
    return cls


def replace(obj: _T, **changes: Any) -> _T:
    """A copy of a record with some fields changed (as dataclasses.replace)."""
    values = {n: getattr(obj, n) for n in obj._fields}  # type: ignore[attr-defined]
    values.update(changes)
    return obj.__class__(**values)


@_record
class PortMapping:
    container_port: int
    host_port: int | None
    protocol: str  # "tcp" | "udp"


@_record
class Secret:
    name: str
    value_from: str


@_record
class Dependency:
    container_name: str
    condition: str  # START | COMPLETE | SUCCESS | HEALTHY


@_record
class HealthCheck:
    command: tuple[str, ...]
    interval: int = 30
    timeout: int = 5
    retries: int = 3
    start_period: int = 0


@_record
class LogConfiguration:
    driver: str
    options: tuple[tuple[str, str], ...] = ()
    secret_options: tuple[Secret, ...] = ()


@_record
class Tmpfs:
    container_path: str
    size: int  # MiB
    mount_options: tuple[str, ...] = ()


@_record
class Device:
    host_path: str
    container_path: str
    permissions: str  # a subset of "rwm", as the cgroup device rule takes it


@_record
class RestartPolicy:
    """ECS's container restart policy: restart in place on an exit whose code is not
    ignored, unless the container ran less than restart_attempt_period seconds."""

    ignored_exit_codes: tuple[int, ...] = ()
    restart_attempt_period: int = 300


@_record
class LinuxParameters:
    init_process_enabled: bool = False
    capabilities_add: tuple[str, ...] = ()
    capabilities_drop: tuple[str, ...] = ()
    shared_memory_size: int | None = None  # MiB
    tmpfs: tuple[Tmpfs, ...] = ()
    # issue 12 B: devices, swap
    devices: tuple[Device, ...] = ()
    max_swap: int | None = None  # MiB; 0: no swap
    swappiness: int | None = None  # 0-100, only with max_swap


@_record
class Ulimit:
    name: str
    soft: int
    hard: int


@_record
class MountPoint:
    source_volume: str
    container_path: str
    read_only: bool = False


@_record
class VolumeFrom:
    source_container: str
    read_only: bool = False


@_record
class FirelensConfiguration:
    type: str
    options: tuple[tuple[str, str], ...] = ()


@_record
class Volume:
    name: str
    host_path: str | None = None  # None: a task-scoped empty volume
    # dockerVolumeConfiguration local driver with tmpfs driverOpts: the tmpfs mount options
    tmpfs_options: tuple[str, ...] | None = None


@_record
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
    environment_files: tuple[str, ...] = ()
    secrets: tuple[Secret, ...] = ()
    depends_on: tuple[Dependency, ...] = ()
    health_check: HealthCheck | None = None
    start_timeout: int | None = None
    log_configuration: LogConfiguration | None = None
    linux_parameters: LinuxParameters | None = None
    ulimits: tuple[Ulimit, ...] = ()
    privileged: bool = False
    dns_servers: tuple[str, ...] = ()
    extra_hosts: tuple[tuple[str, str], ...] = ()  # (hostname, ip)
    stop_signal: str | None = None
    mount_points: tuple[MountPoint, ...] = ()
    volumes_from: tuple[VolumeFrom, ...] = ()
    firelens: FirelensConfiguration | None = None
    # dockerSecurityOptions seccomp: None = the default profile, "unconfined", or a file path.
    seccomp: str | None = None
    # repositoryCredentials.credentialsParameter: the secret (ARN or name) holding the
    # registry's {"username", "password"}, resolved like secrets[].valueFrom.
    repository_credentials: str | None = None
    pseudo_terminal: bool = False  # the main process in a pty (agent.terminal)
    interactive: bool = False  # its stdin kept open (agent.terminal)
    # issue 12 B: resolv.conf search domains, an own netns with only lo, namespaced sysctls.
    dns_search_domains: tuple[str, ...] = ()
    disable_networking: bool = False
    system_controls: tuple[tuple[str, str], ...] = ()  # (namespace, value), in order
    restart_policy: RestartPolicy | None = None


@_record
class TaskDefinition:
    family: str
    network_mode: str
    containers: tuple[ContainerDefinition, ...]
    cpu: int | None = None  # CPU units (1024 = 1 vCPU)
    memory: int | None = None  # MiB
    volumes: tuple[Volume, ...] = ()
    warnings: tuple[str, ...] = ()  # not compared (see _NOT_COMPARED)
    pid_mode: str | None = None  # None (each container its own), "task" or "host"
    ipc_mode: str | None = None  # None (each container its own), "task", "host" or "none"
    # runtimePlatform, checked against the host at submit (agent.hostfields)
    cpu_architecture: str | None = None  # X86_64 | ARM64
    os_family: str | None = None  # LINUX, WINDOWS_SERVER_...

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


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def load_json(text: str | bytes, *, source: str = "") -> Any:
    """Parse JSON, turning a syntax error into a located TaskDefinitionError.

    Refused before parsing: a document above ECS's task definition size
    (MAX_DEFINITION_BYTES). Refused while parsing: nesting deeper than MAX_NESTING (the
    parser would otherwise raise RecursionError), NaN/Infinity, numbers too long to convert.
    """
    size = len(text)
    if size <= MAX_DEFINITION_BYTES and isinstance(text, str):
        size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_DEFINITION_BYTES:
        raise TaskDefinitionError(
            [
                (
                    "",
                    f"is {size} bytes; a task definition is at most {MAX_DEFINITION_BYTES} bytes "
                    "(64 KiB, as in ECS)",
                )
            ],
            source=source,
        )
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except UnicodeDecodeError as e:
        raise TaskDefinitionError(
            [("", f"is not UTF-8 text ({e.reason})")], source=source
        ) from None
    except json.JSONDecodeError as e:
        raise TaskDefinitionError(
            [("", f"is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}")],
            source=source,
        ) from None
    except RecursionError:
        raise TaskDefinitionError(
            [("", f"is nested too deeply (more than {MAX_NESTING} levels)")], source=source
        ) from None
    except ValueError as e:  # NaN/Infinity, or an integer literal of thousands of digits
        raise TaskDefinitionError([("", f"is not valid JSON: {e}")], source=source) from None
    shape = _shape_problem(data, data)
    if shape is not None:
        raise TaskDefinitionError([shape], source=source)
    return data


def _shape_problem(data: Any, td: Any) -> tuple[str, str] | None:
    """The first place where decoded JSON nests deeper than MAX_NESTING or holds more than
    _MAX_VALUES values, located by its top-level field of `td`; walked with an explicit stack
    (no recursion on user input) and stopped at the limit."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    values = 0
    while stack:
        v, depth, where = stack.pop()
        if depth > MAX_NESTING:
            return (where, f"is nested too deeply (more than {MAX_NESTING} levels)")
        values += len(v) if isinstance(v, (dict, list)) else 0
        if values > _MAX_VALUES:
            return (where, f"is too large (more than {_MAX_VALUES} values)")
        if isinstance(v, dict):
            for k, x in v.items():
                if isinstance(x, (dict, list)):
                    stack.append((x, depth + 1, str(k) if v is td else where))
        elif isinstance(v, list):
            for x in v:
                if isinstance(x, (dict, list)):
                    stack.append((x, depth + 1, where))
    return None


def _too_many(p: _Problems, at: str, v: Any, limit: int, what: str) -> bool:
    """Refuse a list or map longer than `limit` with one error, before its items are read."""
    if isinstance(v, (list, dict)) and len(v) > limit:
        p.add(at, f"at most {limit} {what}, got {len(v)}")
        return True
    return False


def parse_task_definition(data: Any, *, source: str = "") -> TaskDefinition:
    """Validate ECS task definition JSON (already decoded) into a TaskDefinition."""
    p = _Problems()
    original = data
    if isinstance(data, dict) and isinstance(data.get("taskDefinition"), dict):
        data = data["taskDefinition"]
    if not isinstance(data, dict):
        raise TaskDefinitionError(
            [("", f"must be a JSON object (a task definition), not {_kind(data)}")], source=source
        )
    shape = _shape_problem(original, data)
    if shape is None and _too_many(p, "", data, _MAX_FIELDS, "fields in a task definition"):
        shape = p.items[0]
    if shape is not None:
        raise TaskDefinitionError([shape], source=source)
    for key in data:
        # The verdict of each field is in agent.fields (issue 12).
        note = fields.unused_warning(key)
        if note is None:
            p.warnings.append(f"{key}: unknown task definition field; ignored")
        elif note and not _asks_nothing(data[key]):
            p.warnings.append(f"{key}: {note}")

    _role_and_tags(p, data)
    family = _str(p, data, "family", "", required=False) or "nstask"
    _str(p, data, "executionRoleArn", "", required=False)  # read by the secrets step
    if family and not _NAME_RE.fullmatch(family):
        p.add("family", "must be 1-255 letters, digits, hyphens or underscores")
    network_mode = _str(p, data, "networkMode", "", required=False) or "awsvpc"
    if network_mode not in NETWORK_MODES:
        p.add(
            "networkMode",
            f"unknown network mode {network_mode!r}; expected one of {', '.join(NETWORK_MODES)}",
        )
    cpu = _units(p, data.get("cpu"), "cpu", _parse_cpu)
    memory = _units(p, data.get("memory"), "memory", _parse_memory)
    before_volumes = len(p.items)
    volumes = _volumes(p, data.get("volumes"))
    volumes_ok = len(p.items) == before_volumes

    containers: list[ContainerDefinition] = []
    defs = data.get("containerDefinitions")
    if defs is None:
        p.add("containerDefinitions", "is required")
    elif not isinstance(defs, list):
        p.add("containerDefinitions", f"must be a list, not {_kind(defs)}")
    elif not defs:
        p.add("containerDefinitions", "must hold at least one container definition")
    elif _too_many(
        p, "containerDefinitions", defs, MAX_CONTAINERS, "container definitions per task definition"
    ):
        pass
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
        # Rules across containers need every container parsed and named once; task-level
        # problems (family, cpu, ...) do not stop them, so the user still sees all at once.
        if len(containers) == len(defs) and len(seen) == len(containers):
            _cross_check(p, containers, volumes if volumes_ok else None, memory)
    modes = _namespace_modes(p, data, containers)
    modes.update(_platform(p, data))
    if p.items:
        raise TaskDefinitionError(p.items, source=source)
    return TaskDefinition(
        family=family,
        network_mode=network_mode,
        containers=tuple(containers),
        cpu=cpu,
        memory=memory,
        volumes=volumes,
        warnings=tuple(p.warnings),
        **modes,
    )


def parse_task_definition_text(text: str | bytes, *, source: str = "") -> TaskDefinition:
    return parse_task_definition(load_json(text, source=source), source=source)


def _container(p: _Problems, c: Any, at: str, network_mode: str) -> ContainerDefinition | None:
    if not isinstance(c, dict):
        p.add(at, f"must be an object, not {_kind(c)}")
        return None
    if _too_many(p, at, c, _MAX_FIELDS, "fields in a container definition"):
        return None
    before = len(p.items)
    for key in c:
        note = fields.unused_warning(f"containerDefinitions.{key}")  # issue 12: agent.fields
        if note is None:
            p.warnings.append(f"{at}.{key}: unknown container definition field; ignored")
        elif note and not _asks_nothing(c[key]):
            p.warnings.append(f"{at}.{key}: {note}")
    name = _str(p, c, "name", at)
    if name is not None and not _NAME_RE.fullmatch(name):
        p.add(f"{at}.name", "must be 1-255 letters, digits, hyphens or underscores")
    image = _str(p, c, "image", at)
    if image is not None and len(image) > 255:  # ECS: "Up to 255 letters ..."
        p.add(f"{at}.image", f"must be at most 255 characters (as in ECS), got {len(image)}")
    elif image is not None and (not image.strip() or any(ch.isspace() for ch in image)):
        p.add(f"{at}.image", f"is not a valid image reference: {image!r}")
    command = _str_list(p, c, "command", at)
    entry_point = _str_list(p, c, "entryPoint", at)
    env = _environment(p, c.get("environment"), f"{at}.environment")
    essential = _bool(p, c, "essential", at, default=True)
    ports = _ports(p, c.get("portMappings"), f"{at}.portMappings", network_mode)
    cpu = _int(p, c, "cpu", at, lo=0, hi=_MAX_CONTAINER_CPU)
    memory = _int(p, c, "memory", at, lo=6, hi=_MAX_MEMORY_MIB)
    reservation = _int(p, c, "memoryReservation", at, lo=6, hi=_MAX_MEMORY_MIB)
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
    _check_labels(p, labels, f"{at}.dockerLabels")
    _check_hostname(p, hostname, f"{at}.hostname")
    env_files = _env_files(p, c.get("environmentFiles"), f"{at}.environmentFiles")
    secrets = _secrets(p, c.get("secrets"), f"{at}.secrets")
    depends_on = _depends_on(p, c.get("dependsOn"), f"{at}.dependsOn")
    health = _health_check(p, c.get("healthCheck"), f"{at}.healthCheck")
    start_timeout = _int(p, c, "startTimeout", at, lo=2, hi=120)
    log_config = _log_configuration(p, c.get("logConfiguration"), f"{at}.logConfiguration")
    linux = _linux_parameters(p, c.get("linuxParameters"), f"{at}.linuxParameters")
    ulimits = _ulimits(p, c.get("ulimits"), f"{at}.ulimits")
    privileged = _bool(p, c, "privileged", at, default=False)
    if privileged:
        p.warnings.append(
            f"{at}.privileged: the container gets every capability and the host's devices "
            "(it can take over the host); accepted as in ECS"
        )
    dns = _ip_list(p, c.get("dnsServers"), f"{at}.dnsServers")
    extra_hosts = _extra_hosts(p, c.get("extraHosts"), f"{at}.extraHosts")
    stop_signal = _stop_signal(p, c.get("stopSignal"), f"{at}.stopSignal")
    mount_points = _mount_points(p, c.get("mountPoints"), f"{at}.mountPoints")
    volumes_from = _volumes_from(p, c.get("volumesFrom"), f"{at}.volumesFrom")
    firelens = _firelens(p, c.get("firelensConfiguration"), f"{at}.firelensConfiguration")
    seccomp = _security_options(p, c.get("dockerSecurityOptions"), f"{at}.dockerSecurityOptions")
    repo_creds = _repository_credentials(
        p, c.get("repositoryCredentials"), f"{at}.repositoryCredentials"
    )
    pseudo_terminal = _bool(p, c, "pseudoTerminal", at, default=False)
    interactive = _bool(p, c, "interactive", at, default=False)
    if interactive and not pseudo_terminal:
        p.warnings.append(
            f"{at}.interactive: without pseudoTerminal the process's stdin is empty here "
            "(containerd's binary logging has no stdin), not kept open as Docker does; "
            "set pseudoTerminal too to keep a shell running"
        )
    extras = _container_extras(p, c, at, network_mode, ports)
    if len(p.items) > before or name is None or image is None:
        return None
    if essential and (linux is None or not linux.init_process_enabled):
        _warn_shell_pid1(p, at, entry_point, command)
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
        environment_files=env_files,
        secrets=secrets,
        depends_on=depends_on,
        health_check=health,
        start_timeout=start_timeout,
        log_configuration=log_config,
        linux_parameters=linux,
        ulimits=ulimits,
        privileged=privileged,
        dns_servers=dns,
        extra_hosts=extra_hosts,
        stop_signal=stop_signal,
        mount_points=mount_points,
        volumes_from=volumes_from,
        firelens=firelens,
        seccomp=seccomp,
        repository_credentials=repo_creds,
        pseudo_terminal=pseudo_terminal,
        interactive=interactive,
        **extras,
    )


def _asks_nothing(v: Any) -> bool:
    """An unsupported field set to null, false, "" or an empty list/object asks for nothing,
    so it gets no warning: describe-task-definition fills in `"systemControls": []` and
    `"placementConstraints": []` on every definition. Zero is not empty (maxSwap 0 means
    something)."""
    return v is None or v is False or v in ("", [], {})


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


_ROLE_ARN_RE = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
# The same with any account (a placeholder such as ${AWS_ACCOUNT_ID}): a warning, not an error.
_PLACEHOLDER_ROLE_ARN_RE = re.compile(r"arn:aws[a-z-]*:iam::[^:/]*:role/[\w+=,.@/${}-]{1,512}")


def _role_and_tags(p: _Problems, data: dict[str, Any]) -> None:
    """taskRoleArn (an IAM role ARN, or empty: no role) and tags ([{key, value}], ECS's
    limits: 50 tags, keys up to 128 and values up to 256 characters)."""
    role = _str(p, data, "taskRoleArn", "", required=False)
    if role and _PLACEHOLDER_ROLE_ARN_RE.fullmatch(role) and not _ROLE_ARN_RE.fullmatch(role):
        # ECS registers it (issue 12: templates keep `${AWS_ACCOUNT_ID}` or `ACCOUNT`); the
        # task's credentials request fails at run time instead.
        p.warnings.append(
            f"taskRoleArn: {role!r} has no 12-digit account (a placeholder?); accepted as "
            "ECS does, but the task's credentials requests will fail with an error naming it"
        )
    elif role and not _ROLE_ARN_RE.fullmatch(role):
        p.add("taskRoleArn", "must be an IAM role ARN (arn:aws:iam::123456789012:role/NAME)")
    tags = data.get("tags")
    if tags is None:
        return
    if not isinstance(tags, list):
        p.add("tags", f"must be a list of {{key, value}} objects, not {_kind(tags)}")
        return
    if len(tags) > 50:
        p.add("tags", f"has {len(tags)} tags; ECS allows at most 50")
        return
    for i, t in enumerate(tags):
        at = f"tags[{i}]"
        if not isinstance(t, dict):
            p.add(at, f"must be a {{key, value}} object, not {_kind(t)}")
            continue
        key, value = t.get("key"), t.get("value", "")
        if not isinstance(key, str) or not 1 <= len(key) <= 128:
            p.add(f"{at}.key", "must be a string of 1-128 characters")
        if not isinstance(value, str) or len(value) > 256:
            p.add(f"{at}.value", "must be a string of at most 256 characters")


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
    if _too_many(p, f"{at}.{key}", v, _MAX_ITEMS, "items"):
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


def _short(v: Any) -> str:
    """A value for a message: 10**400 is not echoed in full."""
    try:
        text = repr(v)
    except ValueError:  # an int beyond Python's 4,300-digit conversion limit
        return "a number of more than 4300 digits"
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def _int(
    p: _Problems, d: dict[str, Any], key: str, at: str, *, lo: int, hi: int | None
) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, float):  # 1e32, 1.5: JSON has no integer type, Python tells them apart
        p.add(f"{at}.{key}", f"must be an integer, got {v!r}")
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        p.add(f"{at}.{key}", f"must be an integer, not {_kind(v)}")
        return None
    if v < lo or (hi is not None and v > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        p.add(f"{at}.{key}", f"must be {bound}, got {_short(v)}")
        return None
    return v


def _environment(p: _Problems, v: Any, at: str) -> tuple[tuple[str, str], ...]:
    if v is None:
        return ()
    if not isinstance(v, list):
        p.add(at, f"must be a list of {{name, value}} objects, not {_kind(v)}")
        return ()
    if _too_many(p, at, v, _MAX_ITEMS, "environment variables"):
        return ()
    out: list[tuple[str, str]] = []
    for i, item in enumerate(v):
        if not isinstance(item, dict):
            p.add(f"{at}[{i}]", "must be an object with name and value")
            continue
        name, value = item.get("name"), item.get("value", "")
        if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
            p.add(f"{at}[{i}].name", "must be a non-empty string without '='")
            continue
        if not isinstance(value, str):
            p.add(f"{at}[{i}].value", f"must be a string, not {_kind(value)}")
            continue
        out.append((name, value))
    return tuple(out)


def _labels(p: _Problems, v: Any, at: str) -> tuple[tuple[str, str], ...]:
    if v is None or _too_many(p, at, v, _MAX_ITEMS, "labels"):
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
    if _too_many(p, at, v, _MAX_ITEMS, "port mappings"):
        return ()
    out: list[PortMapping] = []
    for i, item in enumerate(v):
        here = f"{at}[{i}]"
        if not isinstance(item, dict):
            p.add(here, "must be an object")
            continue
        if _too_many(p, here, item, _MAX_FIELDS, "fields in a port mapping"):
            continue
        _warn_port_keys(p, item, here)
        cport = _int(p, item, "containerPort", here, lo=1, hi=65535)
        if "containerPort" not in item:
            p.add(f"{here}.containerPort", "is required")
        hport = _int(p, item, "hostPort", here, lo=0, hi=65535)
        proto = item.get("protocol", "tcp")
        if proto not in ("tcp", "udp"):
            p.add(f"{here}.protocol", f"must be tcp or udp, got {proto!r}")
        if cport is None:
            continue
        if network_mode in ("awsvpc", "host") and hport not in (None, cport):
            p.add(
                f"{here}.hostPort",
                f"must equal containerPort ({cport}) in {network_mode} network mode",
            )
            continue
        out.append(PortMapping(container_port=cport, host_port=hport or None, protocol=str(proto)))
    return tuple(out)


def _warn_port_keys(p: _Problems, item: dict[str, Any], here: str) -> None:
    """portMappings sub-fields ECS has for Service Connect and port ranges: accepted, unused."""
    for key in item:
        note = fields.unused_warning(f"containerDefinitions.portMappings.{key}")
        if note is None:
            p.warnings.append(f"{here}.{key}: unknown port mapping field; ignored")
        elif note and not _asks_nothing(item[key]):
            p.warnings.append(f"{here}.{key}: {note}")


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
        n = float(max(min(v, 2 * _MAX_TASK_CPU), -1))  # 10**400 does not fit a float
    elif isinstance(v, str) and len(v) <= 64:
        # ".25 vCPU" too: Fargate's own tables write the fractions that way (issue 12).
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*(vcpus?)?\s*", v, re.IGNORECASE)
        if not m:
            raise ValueError(f"must be CPU units (e.g. 256) or vCPUs (e.g. '1 vCPU'), got {v!r}")
        n = float(m.group(1)) * (1024 if m.group(2) else 1)
    elif isinstance(v, str):
        raise ValueError(
            f"must be CPU units (e.g. 256) or vCPUs (e.g. '1 vCPU'), got {v[:64]!r}..."
        )
    elif isinstance(v, float):
        raise ValueError(
            f"must be a whole number of CPU units or a string like '1 vCPU', got {v!r}"
        )
    else:
        raise ValueError(f"must be a number or a string, not {_kind(v)}")
    if n < 128 or n > _MAX_TASK_CPU:
        raise ValueError(f"must be between 128 CPU units (.125 vCPU) and 16 vCPU, got {_short(v)}")
    return int(n)


def _parse_memory(v: Any) -> int:
    """Memory in MiB: 512, "512", "0.5 GB", "2GB"."""
    if isinstance(v, int) and not isinstance(v, bool):
        n = float(max(min(v, 2 * _MAX_MEMORY_MIB), -1))  # 10**400 does not fit a float
    elif isinstance(v, str) and len(v) <= 64:
        m = re.fullmatch(
            r"\s*([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*(gb|mb|mib|gib)?\s*", v, re.IGNORECASE
        )
        if not m:
            raise ValueError(f"must be MiB (e.g. 512) or a size like '0.5 GB', got {v!r}")
        n = float(m.group(1)) * (1024 if (m.group(2) or "").lower() in ("gb", "gib") else 1)
    elif isinstance(v, str):
        raise ValueError(f"must be MiB (e.g. 512) or a size like '0.5 GB', got {v[:64]!r}...")
    elif isinstance(v, float):
        raise ValueError(f"must be a whole number of MiB or a string like '0.5 GB', got {v!r}")
    else:
        raise ValueError(f"must be a number or a string, not {_kind(v)}")
    if n < 6:
        raise ValueError(f"must be at least 6 MiB, got {_short(v)}")
    if n > _MAX_MEMORY_MIB:
        raise ValueError(
            f"must be at most {_MAX_MEMORY_MIB} MiB (120 GB, as in Fargate), got {_short(v)}"
        )
    return int(n)


def with_environment(td: TaskDefinition, extra: dict[str, str]) -> TaskDefinition:
    """Apply run-time environment overrides (ECS RunTask containerOverrides) to all containers."""
    if not extra:
        return td

    containers = []
    for c in td.containers:
        env = dict(c.environment)
        env.update(extra)
        containers.append(replace(c, environment=tuple(env.items())))
    return replace(td, containers=tuple(containers))


# -- the fields of issue 3: each parser adds located problems and returns typed values ---------
DEPENDENCY_CONDITIONS = ("START", "COMPLETE", "SUCCESS", "HEALTHY")
LOG_DRIVERS = ("json-file", "fluentd", "awsfirelens", "none")
LOG_DRIVERS_AS_JSON_FILE = ("awslogs", "splunk", "syslog", "journald", "gelf")
ULIMIT_NAMES = (
    "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
    "nproc", "rss", "rtprio", "rttime", "sigpending", "stack",
)  # fmt: skip
CAPABILITIES = (
    "AUDIT_CONTROL", "AUDIT_READ", "AUDIT_WRITE", "BLOCK_SUSPEND", "BPF",
    "CHECKPOINT_RESTORE", "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID",
    "IPC_LOCK", "IPC_OWNER", "KILL", "LEASE", "LINUX_IMMUTABLE", "MAC_ADMIN", "MAC_OVERRIDE",
    "MKNOD", "NET_ADMIN", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_RAW", "PERFMON",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_ADMIN", "SYS_BOOT", "SYS_CHROOT",
    "SYS_MODULE", "SYS_NICE", "SYS_PACCT", "SYS_PTRACE", "SYS_RAWIO", "SYS_RESOURCE",
    "SYS_TIME", "SYS_TTY_CONFIG", "SYSLOG", "WAKE_ALARM",
)  # fmt: skip
_SIGNAL_NAMES = (
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
)  # fmt: skip
# Region and account: anything without ':' (issue 12: ECS registers placeholders such as
# ${AWS_REGION}; the local store goes by name, an AWS lookup refuses them clearly).
_SECRETS_ARN = re.compile(
    r"arn:aws[a-z-]*:secretsmanager:[^:]*:[^:]*:secret:(?P<name>[A-Za-z0-9/_+=.@-]+?)"
    r"(?:-[A-Za-z0-9]{6})?(?::(?P<key>[^:]*)(?::[^:]*(?::[^:]*)?)?)?"
)
_SSM_ARN = re.compile(r"arn:aws[a-z-]*:ssm:[^:]*:[^:]*:parameter(?P<name>/.+)")
_LOCAL_NAME = re.compile(r"[A-Za-z0-9/_+=.@:-]{1,512}")


def local_secret_name(value_from: str) -> str:
    """The local secret store's name for an ECS `valueFrom`.

    - Secrets Manager ARN `arn:aws:secretsmanager:<region>:<account>:secret:<name>-<6 chars>`
      -> `<name>` (the random 6-character suffix AWS appends is dropped); with a JSON key
      (`...:<name>-AbCdEf:<json-key>::`) -> `<name>:<json-key>`, stored as its own secret.
    - SSM Parameter Store ARN `arn:aws:ssm:<region>:<account>:parameter/<path>` -> `<path>`
      (without the leading slash).
    - Anything else (a plain name such as `prod/db-password`) is used as it is.
    """
    m = _SECRETS_ARN.fullmatch(value_from)
    if m:
        name = m.group("name")
        return f"{name}:{m.group('key')}" if m.group("key") else name
    m = _SSM_ARN.fullmatch(value_from)
    if m:
        return m.group("name").lstrip("/")
    return value_from


def start_order(td: TaskDefinition) -> list[str]:
    """Container names in an order that honours dependsOn (ties in definition order); the
    task's FireLens log router goes first, as ECS starts it before the containers it serves.

    Kahn's algorithm with a heap of definition indexes, so among the containers whose
    dependencies have all started the first defined goes next: O(n log n) (issue 9: the
    earlier rescan of every container per step was cubic)."""
    import heapq

    names = [c.name for c in td.containers]
    deps = {c.name: {d.container_name for d in c.depends_on} for c in td.containers}
    routers = [c.name for c in td.containers if c.firelens is not None]
    for c in td.containers:
        lc = c.log_configuration
        if lc is not None and lc.driver == "awsfirelens":
            deps[c.name] |= set(routers) - {c.name}
    index = {n: i for i, n in enumerate(names)}
    waiting = [len(deps[n]) for n in names]  # unknown names and self count and never clear
    dependents: list[list[int]] = [[] for _ in names]
    for i, n in enumerate(names):
        for d in deps[n]:
            if d in index:
                dependents[index[d]].append(i)
    ready = [i for i in range(len(names)) if waiting[i] == 0]
    placed = [False] * len(names)
    order: list[str] = []
    first_unplaced = 0
    while len(order) < len(names):
        if ready:
            i = heapq.heappop(ready)
        else:  # a cycle: validation refuses these, so this is only a guard
            while placed[first_unplaced]:
                first_unplaced += 1
            i = first_unplaced
        if placed[i]:
            continue
        placed[i] = True
        order.append(names[i])
        for j in dependents[i]:
            waiting[j] -= 1
            if waiting[j] == 0 and not placed[j]:
                heapq.heappush(ready, j)
    return order


def stop_order(td: TaskDefinition) -> list[str]:
    """The reverse of start_order: dependents stop before what they depend on, and the
    FireLens router stops last so it still receives the others' final output."""
    return start_order(td)[::-1]


def _list_of_objects(
    p: _Problems, v: Any, at: str, *, limit: int = _MAX_ITEMS, what: str = "items"
) -> list[tuple[str, dict[str, Any]]]:
    if v is None:
        return []
    if not isinstance(v, list):
        p.add(at, f"must be a list, not {_kind(v)}")
        return []
    if _too_many(p, at, v, limit, what):
        return []
    out = []
    for i, item in enumerate(v):
        if isinstance(item, dict):
            out.append((f"{at}[{i}]", item))
        else:
            p.add(f"{at}[{i}]", f"must be an object, not {_kind(item)}")
    return out


def _env_files(p: _Problems, v: Any, at: str) -> tuple[str, ...]:
    out = []
    for here, item in _list_of_objects(
        p, v, at, limit=_MAX_ENV_FILES, what="environment files per container (as in ECS)"
    ):
        value = _str(p, item, "value", here)
        kind = item.get("type", "s3")
        if kind != "s3":
            p.add(f"{here}.type", f"must be s3, got {kind!r}")
        if value is None:
            continue
        local = value.removeprefix("file://")
        if value.startswith("arn:"):
            p.add(
                f"{here}.value",
                "nstask reads environment files from local paths "
                "(an absolute path or file:// URL), not from S3",
            )
        elif not local.startswith("/"):
            p.add(f"{here}.value", f"must be an absolute path or file:// URL, got {value!r}")
        else:
            out.append(value)
    return tuple(out)


def _secrets(p: _Problems, v: Any, at: str) -> tuple[Secret, ...]:
    out = []
    seen: set[str] = set()
    for here, item in _list_of_objects(p, v, at, what="secrets"):
        name = _str(p, item, "name", here)
        value_from = _str(p, item, "valueFrom", here)
        if name is not None and not _ENV_NAME_RE.fullmatch(name):
            p.add(f"{here}.name", "must be an environment variable name without '='")
        if name is not None and name in seen:
            p.add(f"{here}.name", f"duplicate secret {name!r}")
        if value_from is not None:
            if value_from.startswith("arn:") and local_secret_name(value_from) == value_from:
                p.add(
                    f"{here}.valueFrom",
                    f"is neither a Secrets Manager nor an SSM parameter ARN: {value_from!r}",
                )
            elif not _LOCAL_NAME.fullmatch(local_secret_name(value_from)):
                p.add(f"{here}.valueFrom", f"is not a valid secret name: {value_from!r}")
        if name is not None and value_from is not None:
            seen.add(name)
            out.append(Secret(name, value_from))
    return tuple(out)


def _depends_on(p: _Problems, v: Any, at: str) -> tuple[Dependency, ...]:
    out = []
    for here, item in _list_of_objects(p, v, at, what="dependencies"):
        target = _str(p, item, "containerName", here)
        condition = _str(p, item, "condition", here)
        if condition is not None and condition not in DEPENDENCY_CONDITIONS:
            p.add(
                f"{here}.condition",
                f"must be one of {', '.join(DEPENDENCY_CONDITIONS)}, got {condition!r}",
            )
            continue
        if target is not None and condition is not None:
            out.append(Dependency(target, condition))
    return tuple(out)


def _health_check(p: _Problems, v: Any, at: str) -> HealthCheck | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        p.add(at, f"must be an object, not {_kind(v)}")
        return None
    command = _str_list(p, v, "command", at)
    if command is None:
        if "command" not in v:
            p.add(f"{at}.command", "is required")
        return None
    if not command:
        p.add(f"{at}.command", 'must start with "CMD", "CMD-SHELL" or "NONE"')
        return None
    if command[0] == "NONE":  # Docker's way to switch off the image's HEALTHCHECK
        return None
    if command[0] not in ("CMD", "CMD-SHELL"):
        # ECS registers it and Docker never runs a check of a type it does not know: the
        # container's health stays UNKNOWN (issue 12). Kept, so the health is reported.
        p.warnings.append(
            f"{at}.command: starts with {command[0]!r}, not CMD or CMD-SHELL: the check is "
            'never run and health stays UNKNOWN, as in Docker; write ["CMD-SHELL", '
            f"{' '.join(command)!r}] to run it"
        )
    elif len(command) < 2:
        p.add(f"{at}.command", f"{command[0]} needs a command to run")
        return None
    interval = _int(p, v, "interval", at, lo=5, hi=300)
    timeout = _int(p, v, "timeout", at, lo=2, hi=60)
    retries = _int(p, v, "retries", at, lo=1, hi=10)
    start_period = _int(p, v, "startPeriod", at, lo=0, hi=300)
    return HealthCheck(
        command=command,
        interval=30 if interval is None else interval,
        timeout=5 if timeout is None else timeout,
        retries=3 if retries is None else retries,
        start_period=0 if start_period is None else start_period,
    )


def _string_map(p: _Problems, v: Any, at: str) -> tuple[tuple[str, str], ...]:
    if v is None or _too_many(p, at, v, _MAX_ITEMS, "options"):
        return ()
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        p.add(at, "must be an object of string values")
        return ()
    return tuple(v.items())


def _log_configuration(p: _Problems, v: Any, at: str) -> LogConfiguration | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        p.add(at, f"must be an object, not {_kind(v)}")
        return None
    driver = _str(p, v, "logDriver", at)
    options = _string_map(p, v.get("options"), f"{at}.options")
    secret_options = _secrets(p, v.get("secretOptions"), f"{at}.secretOptions")
    if driver is None:
        return None
    if driver in LOG_DRIVERS_AS_JSON_FILE:
        p.warnings.append(
            f"{at}.logDriver: {driver} needs an AWS or external service that "
            "nstask does not have; the output goes to json-file instead"
        )
    elif driver not in LOG_DRIVERS:
        p.add(
            f"{at}.logDriver",
            f"unknown log driver {driver!r}; expected one of "
            f"{', '.join(LOG_DRIVERS + LOG_DRIVERS_AS_JSON_FILE)}",
        )
        return None
    return LogConfiguration(driver, options, secret_options)


# Capabilities that hand a container the host: a warning names them (issue 9), as ECS accepts them.
_HOST_CAPABILITIES = {
    "SYS_ADMIN": "mounts, namespaces and most of the kernel's administration",
    "SYS_MODULE": "loading kernel modules into the host's kernel",
    "NET_ADMIN": "administration of the task's network (interfaces, routes, firewall)",
}


def _capabilities(p: _Problems, v: Any, at: str, *, adding: bool) -> tuple[str, ...]:
    """Capability names as CAP_X, or "ALL" (ECS accepts it in add and in drop)."""
    if v is None or _too_many(p, at, v, len(CAPABILITIES) + 1, "capabilities"):
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        p.add(at, "must be a list of capability names")
        return ()
    out = []
    for i, cap in enumerate(v):
        bare = cap.upper().removeprefix("CAP_")
        if bare == "ALL":
            out.append("ALL")
            if adding:
                p.warnings.append(
                    f"{at}[{i}]: ALL gives the container every capability (it can take over "
                    "the host); accepted as in ECS"
                )
        elif bare not in CAPABILITIES:
            p.add(f"{at}[{i}]", f"unknown Linux capability {cap!r}")
        else:
            out.append("CAP_" + bare)
            if adding and bare in _HOST_CAPABILITIES:
                p.warnings.append(
                    f"{at}[{i}]: {bare} gives the container {_HOST_CAPABILITIES[bare]}; "
                    "accepted as in ECS"
                )
    return tuple(out)


def _linux_parameters(p: _Problems, v: Any, at: str) -> LinuxParameters | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        p.add(at, f"must be an object, not {_kind(v)}")
        return None
    if _too_many(p, at, v, _MAX_FIELDS, "fields"):
        return None
    for key in v:
        note = fields.unused_warning(f"containerDefinitions.linuxParameters.{key}")
        if note is None and not _asks_nothing(v[key]):  # unknown keys: as before
            note = "accepted but not supported by nstask yet; ignored"
        if note and not _asks_nothing(v[key]):
            p.warnings.append(f"{at}.{key}: {note}")
    caps = v.get("capabilities") or {}
    if not isinstance(caps, dict):
        p.add(f"{at}.capabilities", "must be an object with add and drop lists")
        caps = {}
    tmpfs = []
    for here, item in _list_of_objects(p, v.get("tmpfs"), f"{at}.tmpfs", what="tmpfs mounts"):
        path = _str(p, item, "containerPath", here)
        size = _int(p, item, "size", here, lo=1, hi=_MAX_TMPFS_MIB)
        if "size" not in item:
            p.add(f"{here}.size", "is required")
        opts = _str_list(p, item, "mountOptions", here) or ()
        if path is not None and not _container_path_ok(p, path, f"{here}.containerPath"):
            pass
        elif path is not None and size is not None:
            tmpfs.append(Tmpfs(path, size, opts))
    return LinuxParameters(
        init_process_enabled=_bool(p, v, "initProcessEnabled", at, default=False),
        capabilities_add=_capabilities(p, caps.get("add"), f"{at}.capabilities.add", adding=True),
        capabilities_drop=_capabilities(
            p, caps.get("drop"), f"{at}.capabilities.drop", adding=False
        ),
        shared_memory_size=_int(p, v, "sharedMemorySize", at, lo=1, hi=_MAX_TMPFS_MIB),
        tmpfs=tuple(tmpfs),
        **_linux_extras(p, v, at),
    )


def _ulimits(p: _Problems, v: Any, at: str) -> tuple[Ulimit, ...]:
    out = []
    seen: set[str] = set()
    for here, item in _list_of_objects(
        p, v, at, limit=len(ULIMIT_NAMES), what="ulimits (one per name)"
    ):
        name = _str(p, item, "name", here)
        soft = _int(p, item, "softLimit", here, lo=0, hi=_MAX_INT32)
        hard = _int(p, item, "hardLimit", here, lo=0, hi=_MAX_INT32)
        for key in ("softLimit", "hardLimit"):
            if key not in item:
                p.add(f"{here}.{key}", "is required")
        if name is not None and name not in ULIMIT_NAMES:
            p.add(
                f"{here}.name",
                f"unknown ulimit {name!r}; expected one of {', '.join(ULIMIT_NAMES)}",
            )
            continue
        if name is not None and name in seen:
            p.add(f"{here}.name", f"duplicate ulimit {name!r}")
        if soft is not None and hard is not None and soft > hard:
            p.add(f"{here}.softLimit", f"({soft}) must not exceed hardLimit ({hard})")
            continue
        if name is not None and soft is not None and hard is not None:
            seen.add(name)
            out.append(Ulimit(name, soft, hard))
    return tuple(out)


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _ip_list(p: _Problems, v: Any, at: str) -> tuple[str, ...]:
    if v is None or _too_many(p, at, v, _MAX_DNS_SERVERS, "DNS servers"):
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        p.add(at, "must be a list of IP addresses")
        return ()
    for i, ip in enumerate(v):
        if not _is_ip(ip):
            p.add(f"{at}[{i}]", f"is not an IP address: {ip!r}")
    return tuple(v)


def _extra_hosts(p: _Problems, v: Any, at: str) -> tuple[tuple[str, str], ...]:
    out = []
    for here, item in _list_of_objects(p, v, at, what="host entries"):
        host = _str(p, item, "hostname", here)
        ip = _str(p, item, "ipAddress", here)
        if ip is not None and not _is_ip(ip):
            p.add(f"{here}.ipAddress", f"is not an IP address: {ip!r}")
        elif host is not None and ip is not None:
            out.append((host, ip))
    return tuple(out)


def _stop_signal(p: _Problems, v: Any, at: str) -> str | None:
    """stopSignal (not an ECS field; Docker's and podman's) as "SIGQUIT" or a decimal number,
    the two forms containers.stop_signal resolves; "quit" and "SIGquit" are normalised."""
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 64:
        return str(v)
    if isinstance(v, str) and v.isdigit() and 1 <= int(v) <= 64:
        return str(int(v))
    if isinstance(v, str) and v.upper().removeprefix("SIG") in _SIGNAL_NAMES:
        return "SIG" + v.upper().removeprefix("SIG")
    p.add(at, f"is not a signal name or number: {v!r}")
    return None


def _security_options(p: _Problems, v: Any, at: str) -> str | None:
    """dockerSecurityOptions, in Docker's `key=value` (or older `key:value`) form: the seccomp
    profile ("unconfined" or an absolute path to a profile file) and no-new-privileges (always
    on in nstask). AppArmor, SELinux labels and credential specs have no effect here: a warning
    names each value."""
    if v is None:
        return None
    if not isinstance(v, list):
        p.add(at, f"must be a list of strings, not {_kind(v)}")
        return None
    seccomp: str | None = None
    for i, item in enumerate(v):
        here = f"{at}[{i}]"
        if not isinstance(item, str):
            p.add(here, f"must be a string, not {_kind(item)}")
            continue
        key, value = re.split(r"[=:]", item, maxsplit=1) if re.search(r"[=:]", item) else (item, "")
        if key == "seccomp":
            if value == "unconfined" or value.startswith("/"):
                seccomp = value
            else:
                p.add(here, "seccomp must be unconfined or an absolute path to a profile file")
        elif key == "no-new-privileges":
            if value not in ("", "true"):
                p.warnings.append(
                    f"{here}: {item!r}: nstask always sets no-new-privileges "
                    "(except for privileged containers); ignored"
                )
        else:
            p.warnings.append(f"{here}: {item!r} is not supported by nstask; ignored")
    return seccomp


def _mount_points(p: _Problems, v: Any, at: str) -> tuple[MountPoint, ...]:
    out = []
    for here, item in _list_of_objects(p, v, at, what="mount points"):
        volume = _str(p, item, "sourceVolume", here)
        path = _str(p, item, "containerPath", here)
        ro = _bool(p, item, "readOnly", here, default=False)
        if volume is not None and not _NAME_RE.fullmatch(volume):
            p.add(f"{here}.sourceVolume", _VOLUME_NAME_RULE)
        elif path is not None and not _container_path_ok(p, path, f"{here}.containerPath"):
            pass
        elif volume is not None and path is not None:
            out.append(MountPoint(volume, path, ro))
    return tuple(out)


_VOLUME_NAME_RULE = "must be 1-255 letters, digits, hyphens or underscores"


def _container_path_ok(p: _Problems, path: str, at: str) -> bool:
    """A mount target: absolute, no `..` component (it could climb out of the rootfs), no NUL."""
    if not path.startswith("/"):
        p.add(at, "must be an absolute path")
    elif "\0" in path:
        p.add(at, "must not contain a NUL character")
    elif ".." in path.split("/"):
        p.add(at, "must not contain '..' components")
    else:
        return True
    return False


# Host directories a bind mount hands the task control of (a warning, as ECS accepts them).
_SENSITIVE_HOST_PATHS = {
    "/": "whole filesystem",
    "/etc": "configuration (/etc)",
    "/proc": "processes and kernel settings (/proc)",
    "/sys": "kernel and device settings (/sys)",
    "/dev": "devices (/dev)",
}


def _sensitive_host_path(path: str) -> str | None:
    import posixpath

    norm = "/" + posixpath.normpath(path).lstrip("/")
    if norm in _SENSITIVE_HOST_PATHS:
        return _SENSITIVE_HOST_PATHS[norm]
    for top in ("/proc", "/sys", "/dev"):
        if norm.startswith(top + "/"):
            return _SENSITIVE_HOST_PATHS[top]
    return None


def _volumes_from(p: _Problems, v: Any, at: str) -> tuple[VolumeFrom, ...]:
    out = []
    for here, item in _list_of_objects(p, v, at, what="volumesFrom entries"):
        source = _str(p, item, "sourceContainer", here)
        ro = _bool(p, item, "readOnly", here, default=False)
        if source is not None and not _NAME_RE.fullmatch(source):
            p.add(
                f"{here}.sourceContainer", "must be 1-255 letters, digits, hyphens or underscores"
            )
        elif source is not None:
            out.append(VolumeFrom(source, ro))
    return tuple(out)


def _firelens(p: _Problems, v: Any, at: str) -> FirelensConfiguration | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        p.add(at, f"must be an object, not {_kind(v)}")
        return None
    kind = _str(p, v, "type", at)
    if kind is not None and kind not in ("fluentbit", "fluentd"):
        p.add(f"{at}.type", f"must be fluentbit or fluentd, got {kind!r}")
        return None
    options = _string_map(p, v.get("options"), f"{at}.options")
    return FirelensConfiguration(kind, options) if kind is not None else None


def _volumes(p: _Problems, v: Any) -> tuple[Volume, ...]:
    out = []
    seen: set[str] = set()
    for here, item in _list_of_objects(p, v, "volumes", what="volumes"):
        name = _str(p, item, "name", here)
        if name is not None and not _NAME_RE.fullmatch(name):
            # A task-scoped volume is a directory named after the volume (issue 9: "/tmp/x"
            # became a bind of the host's /tmp/x, "../../.." a directory outside the state dir).
            p.add(f"{here}.name", _VOLUME_NAME_RULE)
            continue
        host = item.get("host")
        host_path = None
        if host is not None:
            if not isinstance(host, dict):
                p.add(f"{here}.host", f"must be an object, not {_kind(host)}")
                continue
            host_path = _str(p, host, "sourcePath", f"{here}.host", required=False)
            if host_path is not None and not host_path.startswith("/"):
                p.add(f"{here}.host.sourcePath", "must be an absolute path")
                continue
            if host_path is not None and "\0" in host_path:
                p.add(f"{here}.host.sourcePath", "must not contain a NUL character")
                continue
            what = None if host_path is None else _sensitive_host_path(host_path)
            if what is not None:
                p.warnings.append(
                    f"{here}.host.sourcePath: {host_path} gives the task access to the host's "
                    f"{what}; accepted as in ECS"
                )
        for other in item:  # the verdicts of agent.fields (issue 12)
            note = fields.unused_warning(f"volumes.{other}")
            if note:
                p.warnings.append(f"{here}.{other}: {note}")
        before = len(p.items)
        tmpfs_options = _docker_volume(
            p, item.get("dockerVolumeConfiguration"), f"{here}.dockerVolumeConfiguration"
        )
        if name is None or len(p.items) > before:
            continue
        if name in seen:
            p.add(f"{here}.name", f"duplicate volume name {name!r}")
            continue
        seen.add(name)
        if host_path is not None and tmpfs_options is not None:
            p.add(here, "a volume has either host or dockerVolumeConfiguration, not both")
            continue
        out.append(
            Volume(name, host_path)
            if tmpfs_options is None
            else Volume(name, host_path, tmpfs_options=tmpfs_options)
        )
    return tuple(out)


_SHELLS = frozenset({"sh", "ash", "bash", "dash", "ksh", "zsh"})


def _shell_script(
    entry_point: tuple[str, ...] | None, command: tuple[str, ...] | None
) -> str | None:
    """The script when the effective command is `<shell> [-flags] -c <script>`.

    The effective command is entryPoint followed by command, as Docker and containerd join
    them. Flags may be combined (`sh -ec`, `bash -lc`) or separate (`sh -e -c`); the shell
    may be named by path (`/bin/sh`) or through `env` (`/usr/bin/env bash -c`).
    """
    args = [*(entry_point or ()), *(command or ())]
    if args and args[0].rsplit("/", 1)[-1] == "env":
        args = args[1:]
    if not args or args[0].rsplit("/", 1)[-1] not in _SHELLS:
        return None
    i = 1
    while i < len(args):
        arg = args[i]
        if arg in ("-o", "+o"):  # takes an option name: `bash -o pipefail -c ...`
            i += 2
            continue
        if not arg.startswith(("-", "+")) or arg.startswith("--"):
            return None  # a script file or a long option: not the `-c` form
        if arg.startswith("-") and "c" in arg[1:]:
            return args[i + 1] if i + 1 < len(args) else None
        i += 1
    return None


def _warn_shell_pid1(
    p: _Problems, at: str, entry_point: tuple[str, ...] | None, command: tuple[str, ...] | None
) -> None:
    """Warn about the graceful-shutdown pitfall of the ECS blog on shutdowns: the shell that
    runs `sh -c script` is PID 1, PID 1 gets no default signal handlers, so SIGTERM is ignored
    and the stop only ends at SIGKILL after stopTimeout. `exec` in front of the command, a
    script that traps TERM, or an init process (initProcessEnabled: tini) avoid it."""
    script = _shell_script(entry_point, command)
    if script is None:
        return
    body = script.lstrip()
    if body.startswith("exec ") or ("trap" in body and "TERM" in body):
        return
    p.warnings.append(
        f"{at}: essential container runs its command through a shell (PID 1) without `exec` "
        "and without linuxParameters.initProcessEnabled: the shell ignores SIGTERM, so it "
        "will only stop at SIGKILL after stopTimeout; use `exec` or initProcessEnabled"
    )


def _cross_check(
    p: _Problems,
    containers: list[ContainerDefinition],
    volumes: tuple[Volume, ...] | None,
    task_memory: int | None,
) -> None:
    """Rules that span containers: dependencies, volumes, FireLens, memory, ports.

    `volumes` is None when the task's volumes had their own problems: mountPoints are then
    not checked against them, so one mistake does not show up twice."""
    index = {c.name: i for i, c in enumerate(containers)}
    volume_names = None if volumes is None else {v.name for v in volumes}
    for i, c in enumerate(containers):
        at = f"containerDefinitions[{i}]"
        for j, d in enumerate(c.depends_on):
            here = f"{at}.dependsOn[{j}].containerName"
            if d.container_name == c.name:
                p.add(here, "a container cannot depend on itself")
            elif d.container_name not in index:
                p.add(here, f"no container named {d.container_name!r} in this task")
            else:
                target = containers[index[d.container_name]]
                if d.condition in ("COMPLETE", "SUCCESS") and target.essential:
                    p.add(
                        f"{at}.dependsOn[{j}].condition",
                        f"{d.condition} needs a non-essential container, but "
                        f"{target.name!r} is essential",
                    )
                if d.condition == "HEALTHY" and target.health_check is None:
                    p.add(
                        f"{at}.dependsOn[{j}].condition",
                        f"HEALTHY needs a healthCheck on {target.name!r}",
                    )
        for j, m in enumerate(c.mount_points):
            if volume_names is not None and m.source_volume not in volume_names:
                p.add(
                    f"{at}.mountPoints[{j}].sourceVolume",
                    f"no volume named {m.source_volume!r} in the task's volumes",
                )
        for j, vf in enumerate(c.volumes_from):
            here = f"{at}.volumesFrom[{j}].sourceContainer"
            if vf.source_container == c.name:
                p.add(here, "a container cannot take volumes from itself")
            elif vf.source_container not in index:
                p.add(here, f"no container named {vf.source_container!r} in this task")
        seen_ports: set[tuple[int, str]] = set()
        for j, pm in enumerate(c.port_mappings):
            if (pm.container_port, pm.protocol) in seen_ports:
                p.add(
                    f"{at}.portMappings[{j}].containerPort",
                    f"duplicate mapping of {pm.container_port}/{pm.protocol}",
                )
            seen_ports.add((pm.container_port, pm.protocol))
    cycle = _find_cycle(containers)
    if cycle:
        first = index[cycle[0]]
        p.add(f"containerDefinitions[{first}].dependsOn", "dependency cycle: " + " -> ".join(cycle))
    routers = [i for i, c in enumerate(containers) if c.firelens is not None]
    for i in routers[1:]:
        p.add(
            f"containerDefinitions[{i}].firelensConfiguration",
            f"only one container may have firelensConfiguration (also "
            f"containerDefinitions[{routers[0]}])",
        )
    for i, c in enumerate(containers):
        lc = c.log_configuration
        if lc is not None and lc.driver == "awsfirelens" and not routers:
            p.add(
                f"containerDefinitions[{i}].logConfiguration.logDriver",
                "awsfirelens needs a container with firelensConfiguration in the task",
            )
        elif lc is not None and lc.driver == "awsfirelens" and c.firelens is not None:
            p.add(
                f"containerDefinitions[{i}].logConfiguration.logDriver",
                "the log router (firelensConfiguration) cannot send its own output to itself",
            )
    host_ports: dict[tuple[int, str], str] = {}
    for i, c in enumerate(containers):
        for j, pm in enumerate(c.port_mappings):
            if pm.host_port:
                key = (pm.host_port, pm.protocol)
                if key in host_ports:
                    p.add(
                        f"containerDefinitions[{i}].portMappings[{j}].hostPort",
                        f"host port {pm.host_port}/{pm.protocol} is also used by container "
                        f"{host_ports[key]!r}",
                    )
                host_ports[key] = c.name
    if task_memory is not None:
        total = sum(c.memory or c.memory_reservation or 0 for c in containers)
        if total > task_memory:
            p.add(
                "memory",
                f"the containers' memory ({total} MiB) exceeds the task's "
                f"memory ({task_memory} MiB)",
            )


def _find_cycle(containers: list[ContainerDefinition]) -> list[str]:
    """The first dependsOn cycle a depth-first search in definition order meets, as
    `[a, b, a]`; [] if none. Iterative (issue 9: recursion on the length of a dependsOn
    chain raised RecursionError)."""
    deps = {c.name: [d.container_name for d in c.depends_on] for c in containers}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for c in containers:
        if c.name in state:
            continue
        path: list[str] = [c.name]
        at: dict[str, int] = {c.name: 0}  # position of each name on the path
        todo: list[int] = [0]  # per path entry: the next dependency to look at
        state[c.name] = 1
        while path:
            n = path[-1]
            targets = deps[n]
            k = todo[-1]
            if k == len(targets):
                state[n] = 2
                del at[n]
                path.pop()
                todo.pop()
                continue
            todo[-1] = k + 1
            m = targets[k]
            if m not in deps or m == n:  # unknown targets and self-dependency: own errors
                continue
            if state.get(m) == 1:
                return [*path[at[m] :], m]
            if m not in state:
                state[m] = 1
                at[m] = len(path)
                path.append(m)
                todo.append(0)
    return []


def _repository_credentials(p: _Problems, v: Any, at: str) -> str | None:
    """repositoryCredentials {"credentialsParameter": <secret ARN or name>}: checked as a
    secret's valueFrom is (the secret must hold JSON {"username", "password"})."""
    if v is None:
        return None
    if not isinstance(v, dict):
        p.add(at, f"must be an object, not {_kind(v)}")
        return None
    param = _str(p, v, "credentialsParameter", at)
    for key in v:
        if key != "credentialsParameter":
            p.warnings.append(f"{at}.{key}: unknown field; ignored")
    if param is None:
        return None
    if param.startswith("arn:") and local_secret_name(param) == param:
        p.add(
            f"{at}.credentialsParameter",
            f"is neither a Secrets Manager nor an SSM parameter ARN: {param!r}",
        )
        return None
    if not _LOCAL_NAME.fullmatch(local_secret_name(param)):
        p.add(f"{at}.credentialsParameter", f"is not a valid secret name: {param!r}")
        return None
    return param


# -- issue 12 B: container fields as Docker and ECS apply them ------------------------------
# containerd refuses a label whose key and value together exceed 4096 bytes
# (containerd's labels.Validate); checked here so the refusal is located and comes at submit.
_MAX_LABEL_BYTES = 4096
# What sethostname(2) takes (HOST_NAME_MAX); ECS allows 255 characters, which runc cannot set.
_MAX_HOSTNAME = 64
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
# ECS's pattern for a search domain; glibc >= 2.26 reads any number of them.
_SEARCH_DOMAIN_RE = re.compile(r"[a-zA-Z0-9-.]{0,253}[a-zA-Z0-9]")
_MAX_SEARCH_DOMAINS = 32  # not ECS's
# Sysctls that belong to a namespace a container has of its own (Docker's allowed list): the
# IPC namespace's (System V shared memory, message queues, semaphores; POSIX message queues)
# and the network namespace's. Any other sysctl would change the host for everyone.
IPC_SYSCTLS = (
    "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
    "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced",
)  # fmt: skip
_SYSCTL_NAME_RE = re.compile(r"[a-z0-9_]+(?:[./][A-Za-z0-9_-]+)+")


def sysctl_namespace(name: str) -> str | None:
    """ "ipc" or "network" for a namespaced sysctl, None for a host-wide one."""
    if name in IPC_SYSCTLS or name.startswith("fs.mqueue."):
        return "ipc"
    if name.startswith("net."):
        return "network"
    return None


def _check_labels(p: _Problems, labels: tuple[tuple[str, str], ...], at: str) -> None:
    for key, value in labels:
        if not key:
            p.add(at, "a label key must not be empty")
        elif len(key.encode()) + len(value.encode()) > _MAX_LABEL_BYTES:
            p.add(
                f"{at}.{key[:40]}",
                f"key and value together must be at most {_MAX_LABEL_BYTES} bytes "
                "(containerd's limit for a label)",
            )
        elif key.startswith("nstask."):
            p.add(f"{at}.{key[:40]}", "labels starting with nstask. are nstask's own")


def _check_hostname(p: _Problems, hostname: str | None, at: str) -> None:
    if hostname is None:
        return
    if len(hostname) > _MAX_HOSTNAME:
        p.add(at, f"must be at most {_MAX_HOSTNAME} characters (the kernel's limit)")
    elif not _HOSTNAME_RE.fullmatch(hostname):
        p.add(
            at,
            "must be letters, digits, hyphens, underscores and periods, starting and "
            f"ending with a letter or digit, got {_short(hostname)}",
        )


def _container_extras(
    p: _Problems, c: dict[str, Any], at: str, network_mode: str, ports: tuple[PortMapping, ...]
) -> dict[str, Any]:
    """dnsSearchDomains, disableNetworking and systemControls, as ContainerDefinition
    keyword arguments (only those set, so a definition without them compares as before)."""
    out: dict[str, Any] = {}
    domains = _search_domains(p, c.get("dnsSearchDomains"), f"{at}.dnsSearchDomains")
    if domains and network_mode == "host":
        p.warnings.append(
            f"{at}.dnsSearchDomains: in host network mode the container uses the host's "
            "/etc/resolv.conf; ignored"
        )
    elif domains and network_mode == "awsvpc":
        p.warnings.append(
            f"{at}.dnsSearchDomains: ECS refuses this field in awsvpc network mode; "
            "nstask applies it to the container's resolv.conf"
        )
    if domains:
        out["dns_search_domains"] = domains
    disabled = _bool(p, c, "disableNetworking", at, default=False)
    if disabled:
        if network_mode == "host":
            p.add(
                f"{at}.disableNetworking",
                "cannot be true in host network mode (the container shares the host's network)",
            )
        elif ports:
            p.add(
                f"{at}.disableNetworking",
                "cannot be true with portMappings: the container has no network to serve them",
            )
        out["disable_networking"] = True
    controls = _system_controls(
        p, c.get("systemControls"), f"{at}.systemControls", network_mode, disabled
    )
    if controls:
        out["system_controls"] = controls
    policy = _restart_policy(p, c.get("restartPolicy"), f"{at}.restartPolicy")
    if policy is not None:
        out["restart_policy"] = policy
    return out


def _restart_policy(p: _Problems, v: Any, at: str) -> RestartPolicy | None:
    """restartPolicy {enabled, ignoredExitCodes (at most 50), restartAttemptPeriod
    (60-1800 s, default 300)}, as ECS takes it; None when not enabled."""
    if v is None:
        return None
    if not isinstance(v, dict):
        p.add(at, f"must be an object, not {_kind(v)}")
        return None
    enabled = _bool(p, v, "enabled", at, default=False)
    if "enabled" not in v:
        p.add(f"{at}.enabled", "is required")
    codes = v.get("ignoredExitCodes") or []
    if not isinstance(codes, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in codes
    ):
        p.add(f"{at}.ignoredExitCodes", "must be a list of integers")
        codes = []
    elif len(codes) > 50:
        p.add(f"{at}.ignoredExitCodes", f"at most 50 exit codes (as in ECS), got {len(codes)}")
        codes = []
    period = _int(p, v, "restartAttemptPeriod", at, lo=60, hi=1800)
    if not enabled:
        return None
    return RestartPolicy(tuple(codes), 300 if period is None else period)


def _search_domains(p: _Problems, v: Any, at: str) -> tuple[str, ...]:
    if v is None or _too_many(p, at, v, _MAX_SEARCH_DOMAINS, "search domains"):
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        p.add(at, "must be a list of domain names")
        return ()
    for i, d in enumerate(v):
        if not _SEARCH_DOMAIN_RE.fullmatch(d):
            p.add(f"{at}[{i}]", f"is not a domain name: {_short(d)}")
    return tuple(v)


def _system_controls(
    p: _Problems, v: Any, at: str, network_mode: str, own_netns: bool
) -> tuple[tuple[str, str], ...]:
    """[{namespace, value}]: only sysctls of a namespace the container has of its own."""
    out: dict[str, str] = {}
    for here, item in _list_of_objects(p, v, at, what="system controls"):
        name = _str(p, item, "namespace", here)
        value = _str(p, item, "value", here)
        if name is None or value is None:
            continue
        if not _SYSCTL_NAME_RE.fullmatch(name):
            p.add(f"{here}.namespace", f"is not a sysctl name: {_short(name)}")
            continue
        if "\n" in value or "\0" in value:
            p.add(f"{here}.value", "must be one line")
            continue
        kind = sysctl_namespace(name)
        if kind is None:
            p.add(
                f"{here}.namespace",
                f"{name} is not namespaced: only net.* and the IPC sysctls "
                f"({', '.join(IPC_SYSCTLS)}, fs.mqueue.*) can be set for a container",
            )
        elif kind == "network" and network_mode == "host" and not own_netns:
            p.add(
                f"{here}.namespace",
                f"{name}: net.* sysctls cannot be set in host network mode "
                "(they would change the host's network, as ECS refuses too)",
            )
        else:
            out[name] = value
    return tuple(out.items())


# linuxParameters keys parsed by _linux_extras (issue 12 B).
_LP_EXTRA = ("devices", "maxSwap", "swappiness")
_DEVICE_PERMISSIONS = {"read": "r", "write": "w", "mknod": "m"}
_MAX_DEVICES = 128  # not ECS's


def _linux_extras(p: _Problems, v: dict[str, Any], at: str) -> dict[str, Any]:
    """linuxParameters.devices, maxSwap and swappiness as LinuxParameters keyword arguments."""
    out: dict[str, Any] = {}
    devices = []
    for here, item in _list_of_objects(
        p, v.get("devices"), f"{at}.devices", limit=_MAX_DEVICES, what="devices"
    ):
        host = _str(p, item, "hostPath", here)
        target = _str(p, item, "containerPath", here, required=False) or host
        perms = item.get("permissions")
        access = "rwm"
        if perms is not None:
            if (
                not isinstance(perms, list)
                or not perms
                or not set(map(str, perms)) <= set(_DEVICE_PERMISSIONS)
            ):
                p.add(f"{here}.permissions", "must be a non-empty list of read, write, mknod")
                continue
            asked = {_DEVICE_PERMISSIONS[str(x)] for x in perms}
            access = "".join(c for c in "rwm" if c in asked)
        if host is None or target is None:
            continue
        if not host.startswith("/") or "\0" in host:
            p.add(f"{here}.hostPath", "must be an absolute path")
        elif _container_path_ok(p, target, f"{here}.containerPath"):
            devices.append(Device(host, target, access))
    if devices:
        out["devices"] = tuple(devices)
    max_swap = _int(p, v, "maxSwap", at, lo=0, hi=_MAX_INT32)
    swappiness = _int(p, v, "swappiness", at, lo=0, hi=100)
    if max_swap is not None:
        out["max_swap"] = max_swap
    if swappiness is not None and max_swap is None:
        p.warnings.append(f"{at}.swappiness: ignored without maxSwap (as in ECS)")
    elif swappiness is not None:
        out["swappiness"] = swappiness
    return out


PID_MODES = ("task", "host")
IPC_MODES = ("task", "host", "none")


def _namespace_modes(
    p: _Problems, data: dict[str, Any], containers: list[ContainerDefinition]
) -> dict[str, Any]:
    """pidMode and ipcMode (task level), as TaskDefinition keyword arguments."""
    out: dict[str, Any] = {}
    for key, field, allowed in (
        ("pidMode", "pid_mode", PID_MODES),
        ("ipcMode", "ipc_mode", IPC_MODES),
    ):
        mode = _str(p, data, key, "", required=False)
        if not mode:
            continue
        if mode not in allowed:
            p.add(key, f"must be one of {', '.join(allowed)}, got {_short(mode)}")
            continue
        out[field] = mode
        if mode == "host":
            what = (
                "processes (it can see and signal them)"
                if key == "pidMode"
                else ("IPC objects (shared memory, semaphores, message queues)")
            )
            p.warnings.append(
                f"{key}: host gives every container the host's {what}; accepted as in ECS"
            )
    if out.get("ipc_mode") in ("host", "none"):
        for i, c in enumerate(containers):
            for j, (name, _) in enumerate(c.system_controls):
                if sysctl_namespace(name) == "ipc":
                    p.add(
                        f"containerDefinitions[{i}].systemControls[{j}].namespace",
                        f"{name}: IPC sysctls cannot be set with ipcMode {out['ipc_mode']} "
                        "(as ECS refuses them with ipcMode host)",
                    )
    return out


CPU_ARCHITECTURES = ("X86_64", "ARM64")
OS_FAMILIES = (
    "LINUX", "WINDOWS_SERVER_2019_FULL", "WINDOWS_SERVER_2019_CORE", "WINDOWS_SERVER_2016_FULL",
    "WINDOWS_SERVER_2004_CORE", "WINDOWS_SERVER_2022_CORE", "WINDOWS_SERVER_2022_FULL",
    "WINDOWS_SERVER_2025_CORE", "WINDOWS_SERVER_2025_FULL", "WINDOWS_SERVER_20H2_CORE",
)  # fmt: skip


def _platform(p: _Problems, data: dict[str, Any]) -> dict[str, Any]:
    """runtimePlatform (values as ECS takes them; the host check is agent.hostfields') and
    ephemeralStorage (ECS's 21-200 GiB; not limited here: a warning says so)."""
    out: dict[str, Any] = {}
    rp = data.get("runtimePlatform")
    if rp is not None and not isinstance(rp, dict):
        p.add("runtimePlatform", f"must be an object, not {_kind(rp)}")
    elif rp:
        arch = _str(p, rp, "cpuArchitecture", "runtimePlatform", required=False)
        family = _str(p, rp, "operatingSystemFamily", "runtimePlatform", required=False)
        if arch is not None and arch not in CPU_ARCHITECTURES:
            p.add(
                "runtimePlatform.cpuArchitecture",
                f"must be one of {', '.join(CPU_ARCHITECTURES)}, got {_short(arch)}",
            )
        elif arch is not None:
            out["cpu_architecture"] = arch
        if family is not None and family not in OS_FAMILIES:
            p.add(
                "runtimePlatform.operatingSystemFamily",
                f"must be one of {', '.join(OS_FAMILIES)}, got {_short(family)}",
            )
        elif family is not None:
            out["os_family"] = family
    es = data.get("ephemeralStorage")
    if es is not None and not isinstance(es, dict):
        p.add("ephemeralStorage", f"must be an object, not {_kind(es)}")
    elif es:
        size = _int(p, es, "sizeInGiB", "ephemeralStorage", lo=21, hi=200)
        if "sizeInGiB" not in es:
            p.add("ephemeralStorage.sizeInGiB", "is required")
        elif size is not None:
            p.warnings.append(
                f"ephemeralStorage: nstask does not limit a task's storage ({size} GiB asked); "
                "its containers write to their snapshots on the host's disk"
            )
    return out


# The tmpfs options a task may set for a docker volume (`o` of the local driver); nosuid and
# nodev are always added: a task volume never holds set-uid programs or device nodes.
_TMPFS_OPTIONS = ("size", "mode", "uid", "gid", "nr_inodes", "noexec", "exec", "nosuid", "nodev")
_TMPFS_VALUE_RE = re.compile(r"[0-9]+[kmgKMG%]?")


def _docker_volume(p: _Problems, v: Any, at: str) -> tuple[str, ...] | None:
    """dockerVolumeConfiguration: scope task (shared: a warning, run as task), driver local;
    driverOpts type=tmpfs device=tmpfs o=... makes it a tmpfs the task's containers share
    (the tmpfs mount options are returned); without driverOpts: an empty task directory."""
    if v is None:
        return None
    if not isinstance(v, dict):
        p.add(at, f"must be an object, not {_kind(v)}")
        return None
    scope = v.get("scope", "task")
    if scope not in ("task", "shared"):
        p.add(f"{at}.scope", f"must be task or shared, got {_short(scope)}")
    elif scope == "shared":
        p.warnings.append(
            f"{at}.scope: shared volumes outlive the task in ECS; nstask treats the volume "
            "as task-scoped (created with the task, removed with it)"
        )
    driver = v.get("driver", "local")
    if driver != "local":
        p.add(f"{at}.driver", f"only the local driver is supported, got {_short(driver)}")
        return None
    opts = _string_map(p, v.get("driverOpts"), f"{at}.driverOpts")
    _string_map(p, v.get("labels"), f"{at}.labels")
    if not opts:
        return None
    d = dict(opts)
    unknown = sorted(set(d) - {"type", "device", "o"})
    if unknown:
        p.add(f"{at}.driverOpts", f"unsupported option(s) {', '.join(unknown)}")
        return None
    if d.get("type") != "tmpfs" or d.get("device", "tmpfs") != "tmpfs":
        p.add(
            f"{at}.driverOpts",
            "only type=tmpfs (device=tmpfs) is supported by nstask's local driver",
        )
        return None
    out: list[str] = []
    for item in filter(None, d.get("o", "").split(",")):
        key, eq, value = item.partition("=")
        if key not in _TMPFS_OPTIONS or (
            bool(eq) != (key in ("size", "mode", "uid", "gid", "nr_inodes"))
        ):
            p.add(f"{at}.driverOpts.o", f"unsupported tmpfs option {_short(item)}")
            return None
        if eq and not (_TMPFS_VALUE_RE.fullmatch(value) or (key == "mode" and value.isdigit())):
            p.add(f"{at}.driverOpts.o", f"{key}: not a number: {_short(value)}")
            return None
        out.append(item)
    return (*out, "nosuid", "nodev")
