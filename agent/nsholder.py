"""The task's PID and IPC namespace holder, for pidMode/ipcMode `task` (issue 12 B).

ECS shares these namespaces between the containers of a task through a pause container;
nstask starts one small host process instead: `unshare` makes the namespaces and runs the
host's tini as PID 1 of the new PID namespace (it reaps the orphans the containers leave to
it), with `sleep infinity` as its child. Every container of the task joins the namespaces of
that PID 1 by path (/proc/<pid>/ns/pid, /proc/<pid>/ns/ipc). A PID namespace lives only as
long as its PID 1, so no container could hold it for the others.

The holder is found by the key in its environment (NSTASK_NSHOLDER=<key>), not by a pid
that could be reused: removal (teardown, recovery, gc) kills what carries the key. It is
removed after the containers' processes (teardown order), and `unshare --kill-child` takes
tini with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from agent.errors import InvalidInput, NstaskError

ENV_KEY = "NSTASK_NSHOLDER"
TINI = "/usr/bin/tini-static"
UNSHARE = "/usr/bin/unshare"
SLEEP = "/bin/sleep"


def key_of(namespace: str, task_id: str) -> str:
    """Named by the agent's containerd namespace too: `nstask gc` of one agent judges only
    its own holders (several agents share the host)."""
    return f"{prefix_of(namespace)}{task_id}"


def prefix_of(namespace: str) -> str:
    return f"nstask-nsholder-{namespace}-"


def keys(prefix: str) -> set[str]:
    """The keys of the running holders whose key starts with `prefix` (for gc)."""
    needle = f"{ENV_KEY}={prefix}".encode()
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes()
        except OSError:
            continue
        for item in env.split(b"\0"):
            if item.startswith(needle):
                out.add(item.decode(errors="replace").partition("=")[2])
    return out


def spawn(key: str, *, pid: bool, ipc: bool, timeout: float = 5.0) -> int:
    """Start the holder; returns the host pid of the namespaces' PID 1 (tini)."""
    for binary, package in ((TINI, "tini"), (UNSHARE, "util-linux"), (SLEEP, "coreutils")):
        if not Path(binary).exists():
            raise InvalidInput(
                f"pidMode/ipcMode task needs {binary} (Debian package {package}) on the host"
            )
    flags = ["--fork", "--kill-child", *(["--pid"] if pid else []), *(["--ipc"] if ipc else [])]
    # posix_spawn, not Popen: the holder outlives this call (and the agent); a Popen object
    # would warn when collected while it runs. Python's fds are close-on-exec (PEP 446).
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        pid_ = os.posix_spawn(
            UNSHARE,
            [UNSHARE, *flags, TINI, "-s", "--", SLEEP, "infinity"],
            {ENV_KEY: key, "PATH": "/usr/bin:/bin"},
            file_actions=[(os.POSIX_SPAWN_DUP2, devnull, fd) for fd in (0, 1, 2)],
            setsid=True,
        )
    finally:
        os.close(devnull)
    deadline = time.monotonic() + timeout
    while True:
        children = _children(pid_)
        if children:
            return children[0]
        done, _ = os.waitpid(pid_, os.WNOHANG)
        if done or time.monotonic() > deadline:
            remove(key)
            raise NstaskError(f"the namespace holder {key} did not start")
        time.sleep(0.005)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def find(key: str) -> list[int]:
    """The processes carrying `key` in their environment (the holder: unshare and tini;
    sleep gets tini's environment too)."""
    needle = f"{ENV_KEY}={key}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            out.append(int(d.name))
    return out


def remove(key: str, *, timeout: float = 5.0) -> None:
    """Kill the holder and wait until it is gone. tini (and sleep) first: `unshare`, the
    agent's child while this agent started it, then exits by itself and is reaped here, so
    no zombie is left (killed first, tini would be left to the host's PID 1 to reap)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = find(key)
        if not pids:
            return
        mine = [p for p in pids if _parent(p) == os.getpid()]
        for p in [p for p in pids if p not in mine] or mine:
            _kill(p)
        for p in mine:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p, os.WNOHANG)
        if time.monotonic() > deadline:
            raise NstaskError(f"the namespace holder {key} (pids {pids}) did not exit")
        time.sleep(0.01)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def namespace_path(init_pid: int, kind: str) -> str:
    """The path a container's OCI spec joins: kind "pid" or "ipc"."""
    return f"/proc/{init_pid}/ns/{kind}"
