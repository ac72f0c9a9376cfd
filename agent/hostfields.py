"""What some task definition fields need from this host (issue 12 B): the device nodes of
linuxParameters.devices, swap accounting for maxSwap, the CPU architecture of
runtimePlatform. Checked at submit (a clear, located refusal before anything is created)
and read again when a container's spec is built."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.errors import InvalidInput, NstaskError
from agent.taskdef import TaskDefinition

log = structlog.get_logger("nstask.engine")

# Where cgroup v1 keeps the memory+swap limit, and cgroup v2 the swap limit: without either
# the kernel does no swap accounting (Debian boots v1 without swapaccount=1 this way).
_MEMSW_FILES = (
    "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes",
    "/sys/fs/cgroup/unified/memory.swap.max",
)


@dataclass(frozen=True)
class DeviceNode:
    kind: str  # "c" or "b"
    major: int
    minor: int
    mode: int  # permission bits of the host's node
    uid: int
    gid: int


def device_node(path: str, *, at: str = "") -> DeviceNode:
    """The host's character or block device at `path` (symlinks followed, as Docker does)."""
    where = f"{at}: " if at else ""
    try:
        st = os.stat(path)
    except OSError as e:
        raise InvalidInput(f"{where}host device {path}: {e.strerror}", path=path) from None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise InvalidInput(f"{where}{path} is not a character or block device", path=path)
    return DeviceNode(
        kind, os.major(st.st_rdev), os.minor(st.st_rdev), stat.S_IMODE(st.st_mode), st.st_uid,
        st.st_gid,
    )  # fmt: skip


def swap_accounting(files: tuple[str, ...] = _MEMSW_FILES) -> bool:
    """Whether the kernel accounts swap per cgroup, so a swap limit can be set."""
    return any(Path(f).exists() for f in files)


def check(td: TaskDefinition) -> None:
    """At submit: every device exists on the host; maxSwap on a host without swap
    accounting is logged as a warning (the limit is left unset, see spec.with_swap)."""
    check_platform(td)
    for i, c in enumerate(td.containers):
        lp = c.linux_parameters
        if lp is None:
            continue
        at = f"containerDefinitions[{i}].linuxParameters"
        for j, d in enumerate(lp.devices):
            device_node(d.host_path, at=f"{at}.devices[{j}].hostPath")
        if lp.max_swap is not None and (c.memory is None or not swap_accounting()):
            why = (
                "needs the container's memory (a hard limit)"
                if c.memory is None
                else "needs swap accounting, which this host's kernel does not do "
                "(no memory.memsw.* in the memory cgroup; boot with swapaccount=1)"
            )
            what = (
                "swap is switched off for the container (swappiness 0)"
                if lp.max_swap == 0
                else "no swap limit is set; the container may use the host's swap"
            )
            log.warning(
                "field_not_enforced", field=f"{at}.maxSwap", warning=f"maxSwap {why}; {what}"
            )


# platform.machine() values -> ECS's cpuArchitecture
_ARCHITECTURES = {"x86_64": "X86_64", "amd64": "X86_64", "aarch64": "ARM64", "arm64": "ARM64"}


def host_architecture() -> tuple[str | None, str]:
    """ECS's name for this host's CPU architecture (None: neither), and the kernel's."""
    machine = os.uname().machine
    return _ARCHITECTURES.get(machine.lower()), machine


def check_platform(td: TaskDefinition) -> None:
    """runtimePlatform: nstask runs containers on this host's CPU and kernel only (no
    emulation), so another architecture or a Windows family is refused at submit."""
    if td.os_family is not None and td.os_family != "LINUX":
        raise InvalidInput(
            f"runtimePlatform.operatingSystemFamily: {td.os_family} tasks cannot run here: "
            "nstask runs Linux containers only"
        )
    if td.cpu_architecture is None:
        return
    arch, machine = host_architecture()
    if td.cpu_architecture != arch:
        raise InvalidInput(
            f"runtimePlatform.cpuArchitecture: the task needs {td.cpu_architecture}, but "
            f"this host is {arch or 'neither X86_64 nor ARM64'} ({machine}); nstask runs "
            "containers on the host's own CPU"
        )


# -- dockerVolumeConfiguration tmpfs volumes -------------------------------------------------
def mount_tmpfs(path: Path, options: tuple[str, ...]) -> None:
    """A tmpfs at `path` (a task volume directory): the containers that mount the volume
    bind this one mount, so they share it. Removed with the task directory (unmount_under)."""
    import subprocess

    if path.is_mount():
        return  # a start taken up again after a crash: already there
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "nstask-volume", str(path)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise InvalidInput(
            f"volume {path.name}: cannot mount its tmpfs ({','.join(options)}): "
            f"{proc.stderr.strip() or 'mount failed'}"
        )


def mounts_under(path: Path, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points at or below `path`, deepest first."""
    root = os.path.realpath(path)
    out = []
    try:
        with open(mountinfo) as f:
            for line in f:
                point = line.split()[4].encode().decode("unicode_escape")
                if point == root or point.startswith(root + "/"):
                    out.append(point)
    except OSError:
        return []
    return sorted(out, key=len, reverse=True)


def unmount_under(path: Path) -> None:
    """Unmount everything mounted in a task directory before it is removed (its tmpfs
    volumes); lazily, as a container that still holds one is killed by then anyway."""
    import subprocess

    for point in mounts_under(path):
        proc = subprocess.run(["umount", "-l", point], capture_output=True, text=True)
        if proc.returncode != 0 and point in mounts_under(path):
            raise NstaskError(f"cannot unmount {point}: {proc.stderr.strip()}")
