"""Helpers for integration tests: root, a real containerd, runc, CNI plugins and netns.

The session runs one agent of its own beside any user's agent: its own state dir, socket,
containerd namespace, bridge, subnet, CNI cache and IPAM dir, all named nstask-test-*/nstaskt*.
When the session ends, the agent is stopped and a leak check asserts that nothing of ours is
left: no netns, veth, IPAM allocation, CNI cache entry, containerd container, task, active
snapshot or lease.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NSTASK = str(BIN / "nstask")
CTR_SOCK = os.environ.get("NSTASK_CONTAINERD_ADDRESS", "/run/containerd/containerd.sock")
TEST_IMAGE = "nstask.local/busybox:latest"


def ctr(namespace: str, *args: str) -> str:
    return subprocess.run(
        ["ctr", "--address", CTR_SOCK, "-n", namespace, *args],
        text=True,
        check=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=30,
    ).stdout


@dataclass
class Agent:
    """A running test agent and the names of everything it may create."""

    socket: str
    namespace: str
    bridge: str
    subnet: str
    network: str
    netns_prefix: str
    state_dir: Path
    cni_cache: Path
    ipam_dir: Path
    pid: int
    log_path: Path
    own_conflist: bool = False
    launch: tuple[list[str], dict[str, str]] = ([], {})

    def env(self) -> dict[str, str]:
        return {**os.environ, "NSTASK_SOCKET": self.socket}

    def cli(
        self, *args: str, check: bool = False, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [NSTASK, *args],
            text=True,
            env=self.env(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=timeout,
            input=input,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"nstask {' '.join(args)} -> {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}\n"
                f"agent log tail:\n{self.log_tail()}"
            )
        return proc

    def inspect(self, task_id: str) -> dict[str, Any]:
        return dict(json.loads(self.cli("inspect", task_id, check=True).stdout))

    def wait_status(self, task_id: str, status: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            t = self.inspect(task_id)
            if t["lastStatus"] == status:
                return t
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} is {t['lastStatus']}, not {status}: {t}")
            time.sleep(0.05)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return ""


def write_taskdef(tmp_path: Path, definition: dict[str, object], name: str = "task.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(definition))
    return str(path)


def busybox_task(family: str, command: list[str], **container: object) -> dict[str, object]:
    return {
        "family": family,
        "containerDefinitions": [
            {
                "name": family,
                "image": TEST_IMAGE,
                "essential": True,
                "command": command,
                **container,
            }
        ],
    }


def warm_pool(a: Agent) -> tuple[set[str], set[str]]:
    """The ids and IPv4 addresses of the agent's warm pool entries (agent.warmpool): what its
    state store records under a `pool-` task id. Empty once the agent has stopped."""
    if not _alive(a.pid) or not (a.state_dir / "state.db").exists():
        return set(), set()
    import sqlite3

    db = sqlite3.connect(f"file:{a.state_dir / 'state.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT task_id FROM resources WHERE task_id LIKE 'pool-%'").fetchall()
    finally:
        db.close()
    ids = {r[0] for r in rows}
    ips = set()
    net_dir = a.ipam_dir / a.network
    for p in net_dir.iterdir() if net_dir.is_dir() else []:
        if p.name[0].isdigit() and p.read_text().split("\n", 1)[0].strip() in ids:
            ips.add(p.name)
    return ids, ips


def _not_the_pool(a: Agent, found: list[str], ids: set[str], ips: set[str]) -> list[str]:
    from cni.builtin import host_veth_name

    pool = {f"netns {a.netns_prefix}{i}" for i in ids}
    pool |= {f"CNI cache entry {a.network}-{i}-eth0" for i in ids}
    pool |= {f"IPAM allocation {ip}" for ip in ips}
    veths = {host_veth_name(i, "eth0") for i in ids}
    return [
        item
        for item in found
        if item not in pool
        and not (item.startswith("link ") and item[5:].split("@")[0] in veths)
        and not (item.startswith("iptables ") and any(f"{ip}/32" in item for ip in ips))
    ]


def leaks(a: Agent) -> list[str]:
    """Everything of this test agent's still on the host (its warm pool, while it runs, is
    not a leak: it is the agent's, recorded, and drained at its exit)."""
    pool_before = warm_pool(a)
    found: list[str] = []
    netns = subprocess.run(["ip", "netns", "list"], text=True, stdout=subprocess.PIPE).stdout
    found += [
        f"netns {line.split()[0]}" for line in netns.splitlines() if line.startswith(a.netns_prefix)
    ]
    links = subprocess.run(
        ["ip", "-o", "link", "show", "master", a.bridge],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ).stdout
    found += [f"link {line.split(':')[1].strip()}" for line in links.splitlines()]
    net_dir = a.ipam_dir / a.network
    if net_dir.is_dir():
        found += [
            f"IPAM allocation {p.name}"
            for p in net_dir.iterdir()
            if p.name not in ("lock",) and not p.name.startswith("last_reserved_ip")
        ]
    results = a.cni_cache / "results"
    if results.is_dir():
        # `.nstask-*`: a cache entry being written (atomically, by rename) by the running
        # agent's warm pool refill: transient while the agent runs, a leak once it stopped.
        writing = _alive(a.pid)
        found += [
            f"CNI cache entry {p.name}"
            for p in results.iterdir()
            if not (writing and p.name.startswith(".nstask-"))
        ]
    # iptables rules of the portmap/firewall plugins for this network's addresses. The
    # metadata endpoint's chains (agent.metadata.netfilter) live while the agent runs, and go
    # with its bridge: they count once the agent has stopped, whatever they hold.
    from agent.metadata import netfilter

    md_chains = {chain for _, chain in netfilter.chains(a.bridge).values()}
    alive = _alive(a.pid)
    net_prefix = a.subnet.rsplit(".", 1)[0] + "."
    for table in ("filter", "nat"):
        rules = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True)
        for line in rules.stdout.splitlines():
            words = line.split()
            metadata = any(c in words for c in md_chains) or any(
                line.startswith(f":{c} ") for c in md_chains
            )
            if metadata and not alive:
                found.append(f"iptables {table} (metadata endpoint): {line}")
            elif (
                not metadata and line.startswith("-A") and (net_prefix in line or a.network in line)
            ):
                found.append(f"iptables {table}: {line}")
    # The pool may be filling meanwhile: an entry recorded before or after the listing is
    # the pool's (the agent records an entry before it creates it).
    pool_after = warm_pool(a)
    found = _not_the_pool(a, found, pool_before[0] | pool_after[0], pool_before[1] | pool_after[1])
    # The loopback guard of the agent's bridge (agent.hostguard): it lives while the agent
    # runs (also before its bridge exists), so it counts only once the agent has stopped.
    if not _alive(a.pid):
        from agent.hostguard import chain_name

        chain = chain_name(a.bridge)
        listed = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout
        found += [
            f"iptables guard: {line}"
            for line in listed.splitlines()
            if line.split()[:2] in (["-N", chain], ["-A", chain]) or line.endswith(f"-j {chain}")
        ]
    # Task cgroups of this agent's tasks that are not running (all hierarchies).
    running = set(a.cli("ps", "-q").stdout.split())
    for task_id in set(a.cli("ps", "-a", "-q").stdout.split()) - running:
        found += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob(f"*/nstask/{task_id}")]
    found += [
        f"containerd container {c}" for c in ctr(a.namespace, "containers", "ls", "-q").split()
    ]
    found += [
        f"containerd task {t.split()[0]}" for t in ctr(a.namespace, "tasks", "ls").splitlines()[1:]
    ]
    found += [
        f"containerd active snapshot {s.split()[0]}"
        for s in ctr(a.namespace, "snapshots", "ls").splitlines()[1:]
        if "Committed" not in s
    ]
    found += [
        f"containerd lease {lease}" for lease in ctr(a.namespace, "leases", "ls", "-q").split()
    ]
    # pidMode/ipcMode task namespace holders (agent.nsholder) of tasks that are not running.
    from agent import nsholder

    prefix = nsholder.prefix_of(a.namespace)
    found += [
        f"namespace holder {key}"
        for key in nsholder.keys(prefix)
        if key.removeprefix(prefix) not in running
    ]
    return found


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return pid > 0 and stat.rsplit(")", 1)[-1].split()[0] != "Z"


# A container command that runs until SIGTERM and then exits 0.
WAIT_FOREVER = "trap 'exit 0' TERM; while true; do sleep 0.1; done"


def fetch(url: str, timeout: float = 10) -> str:
    """GET a page from a task (its address, or a published port on loopback), retrying
    while the server starts."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def static_fixture_image(
    agent: Agent,
    workdir: Path,
    ref: str,
    source: Path,
    binary: str,
    *,
    applets: tuple[str, ...] = ("sh",),
    dirs: tuple[str, ...] = (),
) -> str:
    """An image of busybox plus one static test program built from `source` with gcc (the
    test log router, the syscall probe): packed and imported into the agent's namespace."""
    import shutil

    if shutil.which("gcc") is None:
        raise AssertionError(f"gcc is needed to build {source.name} (Debian package gcc)")
    rootfs = workdir / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    for sub in ("proc", "sys", "dev", "etc", "tmp", *dirs):
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in applets:
        (rootfs / "bin" / applet).symlink_to("busybox")
    out = rootfs / "bin" / binary
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(source)], check=True)
    archive = workdir / f"{binary}.tar"
    agent.cli("image", "pack", str(rootfs), ref, "-o", str(archive), check=True)
    agent.cli("image", "import", str(archive), check=True)
    return ref


def bridge_conflist(a: Agent, *chained: dict[str, object]) -> dict[str, object]:
    """A conflist of the test's own for agent `a` (its network, bridge, subnet and IPAM dir):
    the built-in bridge plugin, then `chained` plugins."""
    return {
        "cniVersion": "1.0.0",
        "name": a.network,
        "plugins": [
            {
                "type": "nstask-bridge",
                "bridge": a.bridge,
                "isGateway": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": a.subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(a.ipam_dir),
                },
            },
            *chained,
        ],
    }
