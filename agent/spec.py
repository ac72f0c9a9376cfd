"""The OCI runtime spec of a container, built by nstask itself.

A spec is a plain dict; each setting is a small function `(spec) -> None` and `compose`
applies them in order, as containerd's `oci.Compose` does. The defaults follow what Docker
gives a container: its default capability set, no_new_privileges, a seccomp profile (agent/
seccomp.py), the masked and read-only /proc and /sys paths, and the usual /dev, /proc, /sys
mounts.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from agent import seccomp
from agent.errors import InvalidInput

Spec = dict[str, Any]
SpecOpt = Callable[[Spec], None]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Docker's default capability set (moby's oci/caps/defaults.go lists the same 14).
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

MASKED_PATHS = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

DEFAULT_NOFILE = 1024


def compose(*opts: SpecOpt) -> Spec:
    spec = base_spec()
    for opt in opts:
        opt(spec)
    return spec


def base_spec() -> Spec:
    """The defaults every container starts from."""
    caps = list(DEFAULT_CAPABILITIES)
    nofile = _clamp_to_hard_limit(DEFAULT_NOFILE)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": [],
            "env": [f"PATH={DEFAULT_PATH}"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "",
        "mounts": [
            {
                "destination": "/proc",
                "type": "proc",
                "source": "proc",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": [
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["ro", "nosuid", "noexec", "nodev"],
            },
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        },
    }


def _clamp_to_hard_limit(value: int) -> int:
    """A container rlimit above the host's hard limit fails at runc create (no CAP_SYS_RESOURCE)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


def with_process_args(args: Sequence[str]) -> SpecOpt:
    def opt(spec: Spec) -> None:
        spec["process"]["args"] = list(args)

    return opt


def with_env(env: Iterable[str]) -> SpecOpt:
    """Later values win, as with `docker run -e` over the image's ENV."""

    def opt(spec: Spec) -> None:
        merged: dict[str, str] = {}
        for item in [*spec["process"]["env"], *env]:
            key, _, _ = item.partition("=")
            merged[key] = item
        spec["process"]["env"] = list(merged.values())

    return opt


def with_cwd(cwd: str | None) -> SpecOpt:
    def opt(spec: Spec) -> None:
        if cwd:
            spec["process"]["cwd"] = cwd

    return opt


def parse_user(user: str) -> tuple[int, int]:
    """Numeric `uid` or `uid:gid`, or root. Names are resolved from the image's files by
    agent.users at container create (issue 12); here they are refused."""
    uid, _, gid = user.partition(":")
    uid = "0" if uid == "root" else uid
    gid = "0" if gid == "root" else gid
    if not (uid.isascii() and uid.isdigit()) or (gid and not (gid.isascii() and gid.isdigit())):
        raise InvalidInput(
            f"user {user!r}: only numeric uid[:gid] (or root) here; names need the image's "
            "/etc/passwd (agent.users)"
        )
    return int(uid), int(gid or uid)


def with_user(user: str | None) -> SpecOpt:
    """The process's user (see parse_user); unset: root, or the image's numeric USER."""

    def opt(spec: Spec) -> None:
        if not user:
            return
        uid, gid = parse_user(user)
        spec["process"]["user"] = {"uid": uid, "gid": gid}

    return opt


def with_exec_user(uid: int, gid: int, additional_gids: tuple[int, ...], home: str) -> SpecOpt:
    """A user resolved from the image's /etc/passwd and /etc/group (agent.users, issue 12):
    uid, primary gid, supplementary groups, and HOME when the environment has none."""

    def opt(spec: Spec) -> None:
        user: dict[str, Any] = {"uid": uid, "gid": gid}
        if additional_gids:
            user["additionalGids"] = list(additional_gids)
        spec["process"]["user"] = user
        env = spec["process"].setdefault("env", [])
        if not any(e.startswith("HOME=") for e in env):
            env.append(f"HOME={home}")

    return opt


def with_hostname(name: str) -> SpecOpt:
    def opt(spec: Spec) -> None:
        spec["hostname"] = name

    return opt


def with_netns(path: str | None) -> SpecOpt:
    """Join the task's network namespace by path; None shares the host's network."""

    def opt(spec: Spec) -> None:
        if path is not None:
            spec["linux"]["namespaces"].append({"type": "network", "path": path})

    return opt


def with_readonly_rootfs(readonly: bool) -> SpecOpt:
    def opt(spec: Spec) -> None:
        spec["root"]["readonly"] = readonly

    return opt


def with_bind_files(files: dict[str, str]) -> SpecOpt:
    """Bind-mount task files (hosts, resolv.conf, hostname) over the image's."""

    def opt(spec: Spec) -> None:
        for dest, src in sorted(files.items()):
            spec["mounts"].append(
                {
                    "destination": dest,
                    "type": "bind",
                    "source": src,
                    "options": ["rbind", "rprivate", "ro"],
                }
            )

    return opt


def with_cgroup(path: str) -> SpecOpt:
    def opt(spec: Spec) -> None:
        spec["linux"]["cgroupsPath"] = path

    return opt


def with_limits(
    *,
    memory_mib: int | None,
    reservation_mib: int | None,
    cpu_units: int | None,
) -> SpecOpt:
    """A container's ECS limits as cgroup settings (the task's own cpu and memory are set on
    the task cgroup, agent/cgroups.py).

    memory -> hard limit; memoryReservation -> soft limit; container cpu units -> CPU shares
    (as the ECS agent maps them, at least 2).
    """

    def opt(spec: Spec) -> None:
        res = spec["linux"]["resources"]
        mem: dict[str, int] = {}
        if memory_mib:
            mem["limit"] = memory_mib * 1024 * 1024
        if reservation_mib:
            mem["reservation"] = reservation_mib * 1024 * 1024
        if mem:
            res["memory"] = mem
        if cpu_units is not None:
            res["cpu"] = {"shares": max(cpu_units, 2)}

    return opt


def with_labels(labels: dict[str, str]) -> SpecOpt:
    def opt(spec: Spec) -> None:
        if labels:
            spec.setdefault("annotations", {}).update(labels)

    return opt


ALL_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip

INIT_PATH = "/nstask/init"

RLIMITS = {
    "core": "RLIMIT_CORE", "cpu": "RLIMIT_CPU", "data": "RLIMIT_DATA",
    "fsize": "RLIMIT_FSIZE", "locks": "RLIMIT_LOCKS", "memlock": "RLIMIT_MEMLOCK",
    "msgqueue": "RLIMIT_MSGQUEUE", "nice": "RLIMIT_NICE", "nofile": "RLIMIT_NOFILE",
    "nproc": "RLIMIT_NPROC", "rss": "RLIMIT_RSS", "rtprio": "RLIMIT_RTPRIO",
    "rttime": "RLIMIT_RTTIME", "sigpending": "RLIMIT_SIGPENDING", "stack": "RLIMIT_STACK",
}  # fmt: skip


def host_capabilities(status: str = "/proc/self/status") -> tuple[str, ...]:
    """The capabilities this process may hand on (its bounding set): a container can get no
    capability its runtime lacks, and root here lacks some (CAP_SYS_RESOURCE on these
    machines)."""
    try:
        with open(status) as f:
            line = next(x for x in f if x.startswith("CapBnd:"))
    except (OSError, StopIteration):
        return ALL_CAPABILITIES
    mask = int(line.split()[1], 16)
    return tuple(c for i, c in enumerate(ALL_CAPABILITIES) if mask >> i & 1)


def with_capabilities(
    *, add: Sequence[str] = (), drop: Sequence[str] = (), privileged: bool = False
) -> SpecOpt:
    """Docker's default set, then linuxParameters.capabilities drop and add ("ALL" allowed)."""

    def opt(spec: Spec) -> None:
        available = host_capabilities()
        caps = list(available) if privileged else list(DEFAULT_CAPABILITIES)
        if "ALL" in drop:
            caps = []
        caps = [c for c in caps if c not in drop]
        for c in available if "ALL" in add else add:
            if c not in available:
                raise InvalidInput(
                    f"capability {c} cannot be granted: the agent itself does not have it "
                    "on this host"
                )
            if c not in caps:
                caps.append(c)
        for kind in ("bounding", "effective", "permitted"):
            spec["process"]["capabilities"][kind] = list(caps)

    return opt


def with_privileged(privileged: bool) -> SpecOpt:
    """Only when asked: no masked or read-only /proc paths, /sys writable, every device."""

    def opt(spec: Spec) -> None:
        if not privileged:
            return
        spec["linux"]["maskedPaths"] = []
        spec["linux"]["readonlyPaths"] = []
        spec["linux"]["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
        spec["process"]["noNewPrivileges"] = False
        for m in spec["mounts"]:
            if m["destination"] in ("/sys", "/sys/fs/cgroup"):
                m["options"] = [o for o in m["options"] if o != "ro"] + ["rw"]

    return opt


def with_seccomp(profile: seccomp.Profile | None, *, host: seccomp.Host | None = None) -> SpecOpt:
    """A seccomp profile resolved for this container: its rules that depend on capabilities
    follow the capability set chosen before this option (so it composes after
    with_capabilities). None: no filter (privileged, or seccomp=unconfined)."""

    def opt(spec: Spec) -> None:
        if profile is None:
            spec["linux"].pop("seccomp", None)
            return
        caps = spec["process"]["capabilities"]["effective"]
        spec["linux"]["seccomp"] = seccomp.resolve(
            profile, caps=caps, host=host or seccomp.Host.current()
        )

    return opt


def with_rlimits(limits: Sequence[tuple[str, int, int]]) -> SpecOpt:
    """ECS ulimits (name, soft, hard) as rlimits; a limit above the host's hard limit cannot
    be set here (no CAP_SYS_RESOURCE), so it is refused with a clear error before runc."""

    def opt(spec: Spec) -> None:
        by_type = {r["type"]: r for r in spec["process"]["rlimits"]}
        for name, soft, hard in limits:
            rtype = RLIMITS[name]
            host_hard = resource.getrlimit(getattr(resource, rtype))[1]
            if host_hard != resource.RLIM_INFINITY and hard > host_hard:
                raise InvalidInput(
                    f"ulimit {name}: hard limit {hard} is above this host's hard limit "
                    f"{host_hard}, which nstask cannot raise"
                )
            by_type[rtype] = {"type": rtype, "soft": soft, "hard": hard}
        spec["process"]["rlimits"] = list(by_type.values())

    return opt


def with_init(init_binary: str | None) -> SpecOpt:
    """initProcessEnabled: tini as PID 1, forwarding signals to the process it starts."""

    def opt(spec: Spec) -> None:
        if init_binary is None:
            return
        spec["mounts"].append(
            {
                "destination": INIT_PATH,
                "type": "bind",
                "source": init_binary,
                "options": ["rbind", "rprivate", "ro"],
            }
        )
        spec["process"]["args"] = [INIT_PATH, "--", *spec["process"]["args"]]

    return opt


def with_mounts(mounts: Sequence[dict[str, Any]]) -> SpecOpt:
    """Volume binds and tmpfs mounts, in the order given (after the defaults)."""

    def opt(spec: Spec) -> None:
        spec["mounts"].extend(mounts)

    return opt


def with_shm_size(mib: int | None) -> SpecOpt:
    def opt(spec: Spec) -> None:
        if not mib:
            return
        for m in spec["mounts"]:
            if m["destination"] == "/dev/shm":
                m["options"] = [o for o in m["options"] if not o.startswith("size=")]
                m["options"].append(f"size={mib}m")

    return opt


def bind_mount(source: str, destination: str, *, read_only: bool) -> dict[str, Any]:
    return {
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": ["rbind", "rprivate", "ro" if read_only else "rw"],
    }


def tmpfs_mount(destination: str, size_mib: int, options: Sequence[str]) -> dict[str, Any]:
    return {
        "destination": destination,
        "type": "tmpfs",
        "source": "tmpfs",
        "options": [*options, f"size={size_mib}m"],
    }


def resolve_args(
    *,
    image_entrypoint: Sequence[str] | None,
    image_cmd: Sequence[str] | None,
    entry_point: Sequence[str] | None,
    command: Sequence[str] | None,
) -> list[str]:
    """Docker's rule: entryPoint replaces ENTRYPOINT (and drops CMD); command replaces CMD."""
    if entry_point is not None:
        args = [*entry_point, *(command or [])]
    else:
        args = [*(image_entrypoint or []), *(command if command is not None else image_cmd or [])]
    return args


def hosts_file(hostname: str, ip: str | None, extra: Sequence[tuple[str, str]] = ()) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if ip:
        lines.append(f"{ip}\t{hostname}")
    else:
        lines.append(f"127.0.1.1\t{hostname}")
    lines += [f"{addr}\t{name}" for name, addr in extra]
    return "\n".join(lines) + "\n"


def resolv_conf(dns_servers: Sequence[str], host_resolv: str = "/etc/resolv.conf") -> str:
    """The task's resolv.conf: given servers, else the host's minus loopback ones (as Docker does:
    a loopback resolver of the host is unreachable from the task's netns)."""
    servers = list(dns_servers)
    other: list[str] = []
    if not servers and os.path.exists(host_resolv):
        with open(host_resolv) as f:
            for line in f:
                parts = line.split()
                if not parts or parts[0].startswith("#"):
                    continue
                if parts[0] == "nameserver" and len(parts) > 1:
                    if not parts[1].startswith("127.") and parts[1] != "::1":
                        servers.append(parts[1])
                elif parts[0] in ("search", "options"):
                    other.append(line.strip())
    return "".join(f"nameserver {s}\n" for s in servers) + "".join(f"{o}\n" for o in other)


# -- issue 12 B: container fields --------------------------------------------------------------
def with_sysctls(controls: Sequence[tuple[str, str]]) -> SpecOpt:
    """systemControls as linux.sysctl: runc writes them in the container's own namespaces
    (validation lets only the network and IPC namespaces' sysctls through). In awsvpc mode the
    network ones land in the task's netns, which all its containers share: as in ECS, the
    container started last decides a value set by several."""

    def opt(spec: Spec) -> None:
        if controls:
            spec["linux"].setdefault("sysctl", {}).update(dict(controls))

    return opt


def with_own_netns(own: bool) -> SpecOpt:
    """disableNetworking: a new network namespace of the container's own instead of the
    task's (or the host's); runc brings up its lo and nothing else."""

    def opt(spec: Spec) -> None:
        if not own:
            return
        namespaces = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
        spec["linux"]["namespaces"] = [*namespaces, {"type": "network"}]

    return opt


def with_search_domains(resolv: str, domains: Sequence[str]) -> str:
    """resolv.conf text with its search line replaced by dnsSearchDomains (as Docker's
    --dns-search does); unchanged without domains."""
    if not domains:
        return resolv
    kept = [
        line for line in resolv.splitlines() if line.split()[:1] not in (["search"], ["domain"])
    ]
    return "".join(f"{line}\n" for line in kept) + "search " + " ".join(domains) + "\n"


def with_devices(devices: Sequence[dict[str, Any]]) -> SpecOpt:
    """linuxParameters.devices: each a node in linux.devices (runc makes it in the
    container's /dev) and a cgroup device rule allowing only the permissions asked.
    An item: {path, type, major, minor, fileMode, uid, gid, access}."""

    def opt(spec: Spec) -> None:
        for d in devices:
            node = {k: d[k] for k in ("path", "type", "major", "minor", "fileMode", "uid", "gid")}
            spec["linux"].setdefault("devices", []).append(node)
            rule = {"allow": True, "type": d["type"], "major": d["major"], "minor": d["minor"]}
            spec["linux"]["resources"]["devices"].append({**rule, "access": d["access"]})

    return opt


def with_swap(
    *, memory_mib: int | None, max_swap_mib: int | None, swappiness: int | None, accounting: bool
) -> SpecOpt:
    """maxSwap and swappiness as Docker sets them for ECS: the memory+swap limit is the
    container's memory plus maxSwap (maxSwap 0: no swap). Without a memory limit or without
    the kernel's swap accounting no limit can be set: maxSwap 0 then still keeps the
    container off swap through swappiness 0 (agent.hostfields warns at submit)."""

    def opt(spec: Spec) -> None:
        if max_swap_mib is None:
            return
        mem = spec["linux"]["resources"].setdefault("memory", {})
        if memory_mib and accounting:
            mem["swap"] = (memory_mib + max_swap_mib) * 1024 * 1024
        if swappiness is not None:
            mem["swappiness"] = swappiness
        elif max_swap_mib == 0 and not (memory_mib and accounting):
            mem["swappiness"] = 0

    return opt


def with_namespace_mode(kind: str, mode: str | None, path: str | None = None) -> SpecOpt:
    """pidMode / ipcMode: "host" leaves the container in the host's namespace (with the
    host's /dev/shm for IPC, as Docker does); "task" joins the task's namespace at `path`
    (agent.nsholder); ipcMode "none": an IPC namespace of its own without /dev/shm."""

    def opt(spec: Spec) -> None:
        if mode is None:
            return
        others = [n for n in spec["linux"]["namespaces"] if n["type"] != kind]
        if mode == "host":
            spec["linux"]["namespaces"] = others
        elif mode == "task":
            if path is None:
                raise InvalidInput(f"{kind} mode task: the task's namespace holder is missing")
            spec["linux"]["namespaces"] = [*others, {"type": kind, "path": path}]
        if kind == "ipc" and mode in ("host", "none"):
            mounts = [m for m in spec["mounts"] if m["destination"] != "/dev/shm"]
            if mode == "host":
                mounts.append(bind_mount("/dev/shm", "/dev/shm", read_only=False))
            spec["mounts"] = mounts

    return opt
