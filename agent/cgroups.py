"""The task's own cgroup: ECS task-level cpu and memory as limits on a parent of every
container's cgroup, as the ECS agent does with its per-task cgroup, and the agent's pids limit
(a fork bomb in one task cannot exhaust the host's process table).

Containers get `cgroupsPath` `/nstask/<task id>/<container id>`; runc creates and removes
the leaves, nstask creates the task level (with its limits) before the first container and
removes it, in every hierarchy, after the last one. cgroup v1 (the dev machines) and v2.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from agent.errors import Busy, NstaskError

ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000


def is_v2(root: Path = ROOT) -> bool:
    return (root / "cgroup.controllers").exists()


def task_path(task_id: str) -> str:
    """The task's cgroup, relative to each hierarchy's root."""
    return f"/nstask/{task_id}"


def _hierarchies(root: Path) -> list[Path]:
    if is_v2(root):
        return [root]
    out = []
    for p in sorted(root.iterdir()):
        # Skip symlinked aliases (cpu -> cpu,cpuacct) so each hierarchy is listed once.
        if p.is_dir() and not p.is_symlink() and (p / "cgroup.procs").exists():
            out.append(p)
    return out


def create(
    task_id: str,
    *,
    memory_mib: int | None,
    cpu_units: int | None,
    pids_limit: int | None = None,
    root: Path = ROOT,
) -> None:
    """Create the task cgroup in the memory and cpu hierarchies (and pids, with a limit) and
    set its limits. The pids limit counts every process and thread of the task's containers:
    runc puts their cgroups under this one."""
    rel = task_path(task_id).lstrip("/")
    try:
        if is_v2(root):
            d = root / rel
            d.mkdir(parents=True, exist_ok=True)
            _enable_v2_controllers(root, rel)
            if memory_mib:
                (d / "memory.max").write_text(str(memory_mib * 1024 * 1024))
            if cpu_units:
                (d / "cpu.max").write_text(f"{cpu_units * CFS_PERIOD_US // 1024} {CFS_PERIOD_US}")
            if pids_limit:
                (d / "pids.max").write_text(str(pids_limit))
            return
        mem = _v1_dir(root, "memory") / rel
        cpu = _v1_dir(root, "cpu") / rel
        mem.mkdir(parents=True, exist_ok=True)
        cpu.mkdir(parents=True, exist_ok=True)
        if memory_mib:
            (mem / "memory.limit_in_bytes").write_text(str(memory_mib * 1024 * 1024))
        if cpu_units:
            (cpu / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (cpu / "cpu.cfs_quota_us").write_text(str(cpu_units * CFS_PERIOD_US // 1024))
        if pids_limit:
            pids = _v1_dir(root, "pids") / rel
            pids.mkdir(parents=True, exist_ok=True)
            (pids / "pids.max").write_text(str(pids_limit))
    except OSError as e:
        raise NstaskError(f"task cgroup {task_path(task_id)}: {e.strerror} ({e.filename})") from e


def _v1_dir(root: Path, controller: str) -> Path:
    for name in (controller, f"{controller},cpuacct", f"cpu,{controller}"):
        if (root / name).is_dir():
            return root / name
    raise NstaskError(f"cgroup v1 hierarchy for {controller} not found under {root}")


def _enable_v2_controllers(root: Path, rel: str) -> None:
    parts = rel.split("/")
    for i in range(len(parts)):
        parent = root.joinpath(*parts[:i])
        with contextlib.suppress(OSError):
            (parent / "cgroup.subtree_control").write_text("+memory +cpu +pids")


def remove(task_id: str, *, root: Path = ROOT) -> None:
    """Remove the task level in every hierarchy (runc leaves its parents behind). Absent is
    fine. The shared /nstask level stays, as /docker does: removing it when it looks empty
    races with runc creating another task's cgroup under it."""
    rel = task_path(task_id).lstrip("/")
    for h in _hierarchies(root):
        d = h / rel
        if d.is_dir():
            # Leaves runc may have left (a container that was never deleted cleanly).
            for leaf in sorted(d.iterdir(), reverse=True):
                if leaf.is_dir():
                    with contextlib.suppress(OSError):
                        os.rmdir(leaf)
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise Busy(f"cannot remove task cgroup {d}: {e.strerror}") from e


def leftovers(prefix: str = "", *, root: Path = ROOT) -> list[str]:
    """Task cgroups on the host (for leak checks): paths under /nstask in any hierarchy."""
    out = []
    for h in _hierarchies(root):
        base = h / "nstask"
        if base.is_dir():
            out += [str(p) for p in base.iterdir() if p.is_dir() and p.name.startswith(prefix)]
    return out
