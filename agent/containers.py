"""The containers step: what one container of a task is made of on the host.

From the validated definition, the image's config, the task's network and the resolved
environment, this builds the container's files (hosts, resolv.conf, hostname), its mounts
(task volumes, host volumes, volumesFrom, tmpfs), and its OCI runtime spec.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import hostfields, seccomp, secrets, spec, terminal, users
from agent.errors import InvalidInput
from agent.images import ImageConfig
from agent.taskdef import ContainerDefinition, TaskDefinition

TINI = "/usr/bin/tini-static"


@dataclass(frozen=True)
class TaskContext:
    """What every container of a task shares."""

    task_id: str
    task_dir: Path
    network_mode: str
    netns: str | None
    ip: str | None
    dns_servers: tuple[str, ...]
    cgroup_parent: str
    # pidMode/ipcMode task: the host pid of the namespaces' PID 1 (agent.nsholder)
    holder_init: int | None = None


def volume_dir(task_dir: Path, name: str) -> Path:
    """A task-scoped (empty) volume: a directory of the task, removed with it.

    The name is checked again here (validation refuses it first): `task_dir / "/tmp/x"` is
    /tmp/x and `../..` climbs out of the task directory (issue 9)."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", name):
        raise InvalidInput(f"volume name {name!r}: must be 1-255 letters, digits, - or _")
    return task_dir / "volumes" / name


def prepare_volumes(td: TaskDefinition, task_dir: Path) -> None:
    if any(c.firelens is not None for c in td.containers):
        firelens_socket(task_dir).parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    for v in td.volumes:
        if v.host_path is None:
            volume_dir(task_dir, v.name).mkdir(parents=True, exist_ok=True, mode=0o755)
            if v.tmpfs_options is not None:  # dockerVolumeConfiguration tmpfs (issue 12 B)
                hostfields.mount_tmpfs(volume_dir(task_dir, v.name), v.tmpfs_options)
        elif not Path(v.host_path).exists():
            raise InvalidInput(f"volume {v.name}: host path {v.host_path} does not exist")


def mounts_for(
    td: TaskDefinition,
    cdef: ContainerDefinition,
    task_dir: Path,
    seen: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """mountPoints, then volumesFrom (the source container's mounts, read-only if asked)."""
    volumes = {v.name: v for v in td.volumes}
    out: list[dict[str, Any]] = []
    for mp in cdef.mount_points:
        v = volumes[mp.source_volume]
        source = v.host_path if v.host_path is not None else str(volume_dir(task_dir, v.name))
        out.append(spec.bind_mount(source, mp.container_path, read_only=mp.read_only))
    for vf in cdef.volumes_from:
        if vf.source_container in seen:
            continue
        for m in mounts_for(td, td.container(vf.source_container), task_dir, seen | {cdef.name}):
            if vf.read_only:
                m = {**m, "options": [o for o in m["options"] if o != "rw"] + ["ro"]}
            out.append(m)
    return out


def read_environment_files(td: TaskDefinition) -> dict[str, list[tuple[str, str]]]:
    """Every environment file of the task, read once (blocking: run it in a thread)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for i, c in enumerate(td.containers):
        for j, path in enumerate(c.environment_files):
            if path in out:
                continue
            try:
                out[path] = secrets.read_env_file(path)
            except InvalidInput as e:
                raise InvalidInput(
                    f"containerDefinitions[{i}].environmentFiles[{j}]: {e.message}", path=path
                ) from None
    return out


def resolve_environment(
    cdef: ContainerDefinition,
    store: secrets.SecretLookup,
    env_files: dict[str, list[tuple[str, str]]],
) -> list[str]:
    """ECS precedence: environment files, then `environment`, then secrets. Secret values
    exist only in the returned list (and the container's spec), never in logs or state.
    `env_files` holds the files' contents, read once at submit."""
    env: dict[str, str] = {}
    for path in cdef.environment_files:
        env.update(env_files[path])
    env.update(dict(cdef.environment))
    for s in cdef.secrets:
        env[s.name] = store.value_of(s.value_from)
    return [f"{k}={v}" for k, v in env.items()]


def stop_signal(cdef: ContainerDefinition, image: ImageConfig) -> int:
    """The definition's stopSignal, else the image's STOPSIGNAL, else SIGTERM."""
    raw = cdef.stop_signal or image.stop_signal or "SIGTERM"
    if raw.isdigit():
        return int(raw)
    name = raw.upper() if raw.upper().startswith("SIG") else "SIG" + raw.upper()
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise InvalidInput(f"container {cdef.name}: unknown stop signal {raw!r}") from None


def write_files(ctx: TaskContext, cdef: ContainerDefinition, index: int) -> dict[str, str]:
    """/etc/hosts, /etc/resolv.conf, /etc/hostname for one container (host mode: none)."""
    if ctx.network_mode == "host":
        return {}
    hostname = cdef.hostname or ctx.task_id[:12]
    d = ctx.task_dir / f"c{index}"
    d.mkdir(parents=True, exist_ok=True, mode=0o755)
    ip = None if cdef.disable_networking else ctx.ip  # its own netns: only lo
    (d / "hosts").write_text(spec.hosts_file(hostname, ip, cdef.extra_hosts))
    servers = cdef.dns_servers or ctx.dns_servers
    resolv = spec.resolv_conf(servers)
    (d / "resolv.conf").write_text(spec.with_search_domains(resolv, cdef.dns_search_domains))
    (d / "hostname").write_text(hostname + "\n")
    return {
        "/etc/hosts": str(d / "hosts"),
        "/etc/resolv.conf": str(d / "resolv.conf"),
        "/etc/hostname": str(d / "hostname"),
    }


def exec_user(
    cdef: ContainerDefinition, image: ImageConfig, mounts: list[Any]
) -> users.ExecUser | None:
    """The definition's user (else the image's USER) resolved from the image's /etc/passwd
    and /etc/group, read through the container's prepared rootfs `mounts` (issue 12); None
    when no user is set. Blocking (reads two small files)."""
    user = cdef.user or image.user
    if not user:
        return None
    passwd = users.read_image_file(mounts, "/etc/passwd")
    group = users.read_image_file(mounts, "/etc/group")
    try:
        return users.resolve(user, passwd, group, image=cdef.image)
    except InvalidInput as e:
        raise InvalidInput(f"container {cdef.name}: {e.message}") from None


def seccomp_profile(cdef: ContainerDefinition) -> seccomp.Profile | None:
    """The default profile, unless the container is privileged (no filter, as Docker does) or
    asks otherwise in dockerSecurityOptions (seccomp=unconfined, or a profile file)."""
    if cdef.privileged or cdef.seccomp == "unconfined":
        return None
    if cdef.seccomp is None:
        return seccomp.default_profile()
    return seccomp.load(Path(cdef.seccomp))


def build_spec(
    ctx: TaskContext,
    td: TaskDefinition,
    cdef: ContainerDefinition,
    index: int,
    containerd_id: str,
    image: ImageConfig,
    env: list[str],
    *,
    user: users.ExecUser | None = None,
) -> dict[str, Any]:
    """The container's OCI spec. `user`: the definition's (or image's) user resolved from the
    image's files (agent.users); None: only a numeric user (or none) is applied."""
    args = spec.resolve_args(
        image_entrypoint=image.entrypoint,
        image_cmd=image.cmd,
        entry_point=cdef.entry_point,
        command=cdef.command,
    )
    if not args:
        raise InvalidInput(
            f"container {cdef.name}: no command: the image {cdef.image} has no ENTRYPOINT or "
            "CMD and the definition gives no entryPoint or command"
        )
    hostname = cdef.hostname or ctx.task_id[:12]
    if ctx.network_mode == "host" and not cdef.hostname:
        hostname = os.uname().nodename
    lp = cdef.linux_parameters
    init = TINI if lp is not None and lp.init_process_enabled else None
    if init is not None and not Path(TINI).exists():
        raise InvalidInput(
            f"container {cdef.name}: initProcessEnabled needs {TINI} "
            "(Debian package tini) on the host"
        )
    tmpfs = [
        spec.tmpfs_mount(t.container_path, t.size, t.mount_options)
        for t in (lp.tmpfs if lp is not None else ())
    ]
    if cdef.firelens is not None:
        # The log router listens on /var/run/fluent/fluent.sock; the app containers' shims
        # reach it through the host side of this directory.
        tmpfs.append(
            spec.bind_mount(
                str(firelens_socket(ctx.task_dir).parent), FIRELENS_SOCKET_DIR, read_only=False
            )
        )
    return spec.compose(
        spec.with_process_args(args),
        spec.with_env([*image.env, f"HOSTNAME={hostname}", *env]),
        spec.with_cwd(cdef.working_directory or image.workdir),
        spec.with_user(cdef.user or image.user)
        if user is None
        else spec.with_exec_user(user.uid, user.gid, user.additional_gids, user.home),
        spec.with_hostname(hostname),
        spec.with_netns(ctx.netns),
        spec.with_own_netns(cdef.disable_networking),
        spec.with_readonly_rootfs(cdef.readonly_root_filesystem),
        spec.with_bind_files(write_files(ctx, cdef, index)),
        spec.with_mounts([*mounts_for(td, cdef, ctx.task_dir), *tmpfs]),
        spec.with_shm_size(lp.shared_memory_size if lp is not None else None),
        spec.with_cgroup(f"{ctx.cgroup_parent}/{containerd_id}"),
        spec.with_limits(
            memory_mib=cdef.memory,
            reservation_mib=cdef.memory_reservation,
            cpu_units=cdef.cpu,
        ),
        spec.with_capabilities(
            add=lp.capabilities_add if lp is not None else (),
            drop=lp.capabilities_drop if lp is not None else (),
            privileged=cdef.privileged,
        ),
        spec.with_privileged(cdef.privileged),
        spec.with_seccomp(seccomp_profile(cdef)),
        spec.with_rlimits([(u.name, u.soft, u.hard) for u in cdef.ulimits]),
        spec.with_labels(dict(cdef.labels)),
        spec.with_init(init),
        terminal.with_terminal(cdef.pseudo_terminal),
        spec.with_sysctls(cdef.system_controls),
        spec.with_devices(device_entries(cdef)),
        *namespace_modes(ctx, td),
        spec.with_swap(
            memory_mib=cdef.memory,
            max_swap_mib=lp.max_swap if lp is not None else None,
            swappiness=lp.swappiness if lp is not None else None,
            accounting=hostfields.swap_accounting(),
        ),
    )


def namespace_modes(ctx: TaskContext, td: TaskDefinition) -> list[spec.SpecOpt]:
    """pidMode and ipcMode: the host's namespaces, or the task's (its holder's)."""
    init = ctx.holder_init
    return [
        spec.with_namespace_mode(kind, mode, None if init is None else task_ns_path(init, kind))
        for kind, mode in (("pid", td.pid_mode), ("ipc", td.ipc_mode))
    ]


def task_ns_path(init: int, kind: str) -> str:
    from agent import nsholder

    return nsholder.namespace_path(init, kind)


def device_entries(cdef: ContainerDefinition) -> list[dict[str, Any]]:
    """linuxParameters.devices with the host's node numbers, read now (agent.hostfields)."""
    out = []
    for d in cdef.linux_parameters.devices if cdef.linux_parameters is not None else ():
        node = hostfields.device_node(d.host_path, at=f"container {cdef.name}")
        out.append(
            {
                "path": d.container_path,
                "type": node.kind,
                "major": node.major,
                "minor": node.minor,
                "fileMode": node.mode,
                "uid": node.uid,
                "gid": node.gid,
                "access": d.permissions,
            }
        )
    return out


def container_labels(cdef: ContainerDefinition, task_id: str) -> dict[str, str]:
    """The containerd container's labels: the definition's dockerLabels (as the ECS agent
    gives them to the Docker container), then nstask's own, which validation keeps apart."""
    return {**dict(cdef.labels), "nstask.task": task_id, "nstask.container": cdef.name}


# -- logging ---------------------------------------------------------------------------------
# Drivers ECS has that need an AWS service: accepted, logged as a warning by validation, and
# run as json-file so the output is still kept.
JSON_FILE_FALLBACK = ("awslogs", "splunk", "syslog", "journald", "gelf")
FIRELENS_SOCKET_DIR = "/var/run/fluent"  # where FireLens's router finds its socket


def firelens_socket(task_dir: Path) -> Path:
    """The host side of the unix socket the task's log router listens on."""
    return task_dir / "firelens" / "fluent.sock"


def log_uri(
    shim: Path,
    *,
    task_id: str,
    family: str,
    task_dir: Path,
    cdef: ContainerDefinition,
    log_path: str,
    options_file: Path,
    secret_options: dict[str, str] | None = None,
    ecs_metadata: dict[str, str] | None = None,
) -> tuple[str | None, dict[str, str]]:
    """containerd's binary:// URI for the container's output: nstask's shim with the
    driver of the definition's logConfiguration; None for logDriver none.

    The driver's options (and the resolved secretOptions) are not in the URI: containerd
    puts the URI's pairs in the shim's argv, which any local user reads in /proc/PID/cmdline.
    They are returned instead, for `write_log_options` to put in `options_file` (mode 0600),
    which the URI names and the shim reads before it signals readiness."""
    from urllib.parse import urlencode

    lc = cdef.log_configuration
    driver = lc.driver if lc is not None else "json-file"
    options = dict(lc.options) if lc is not None else {}
    options.update(secret_options or {})
    query: dict[str, str] = {
        "path": log_path,
        "task": task_id,
        "container": cdef.name,
        "family": family,
    }
    if driver in ("json-file", *JSON_FILE_FALLBACK):
        query["driver"] = "json-file"
        if driver != "json-file":
            options = {}
    elif driver == "fluentd":
        query["driver"] = "fluentd"
    elif driver == "awsfirelens":
        # FireLens: the app's shim forwards to the task's router over its unix socket; the
        # logConfiguration options become record fields (the router's output settings).
        query["driver"] = "fluentd"
        options = {f"label.{k}": v for k, v in options.items()}
        options["fluentd-address"] = f"unix://{firelens_socket(task_dir)}"
        options["tag"] = f"{cdef.name}-firelens-{task_id}"
        options["fluentd-async"] = "true"
        # ecs_cluster, ecs_task_arn, ecs_task_definition ("family:revision"), as FireLens adds
        # them unless the router's enable-ecs-log-metadata is "false" (the caller decides).
        options.update({f"label.{k}": v for k, v in (ecs_metadata or {}).items()})
    elif driver == "none":
        return None, {}
    if options:
        query["options-file"] = str(options_file)
    return f"binary://{shim}?{urlencode(query)}", options


def log_options_file(task_dir: Path, index: int) -> Path:
    """Where a container's log options wait for its shim: in the task directory, which no
    container sees (they get only their own files and volumes from it)."""
    return task_dir / "shim" / f"c{index}.options"


def write_log_options(path: Path, options: dict[str, str]) -> None:
    """NUL-separated key/value pairs (the shim parses them without importing anything),
    created 0600 in a 0700 directory, owned by root: only root and the shim read them."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    for k, v in options.items():
        if "\0" in k or "\0" in v:
            raise InvalidInput(f"log option {k!r}: holds a NUL character")
    data = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in options.items())
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def resolve_log_secrets(cdef: ContainerDefinition, store: secrets.SecretLookup) -> dict[str, str]:
    """logConfiguration.secretOptions, resolved from the secret sources."""
    lc = cdef.log_configuration
    if lc is None:
        return {}
    return {s.name: store.value_of(s.value_from) for s in lc.secret_options}
