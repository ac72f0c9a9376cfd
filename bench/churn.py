"""Churn soak: start and remove many short tasks at a fixed concurrency, then check that
nothing is left and that the agent's memory did not grow without bound.

    .venv/bin/python bench/churn.py --tasks 1000 --concurrency 8 [--socket PATH]

Each task is `nstask run --rm` of one busybox container running `true` on the task network.
Talks to the agent on --socket (default: NSTASK_SOCKET or /run/nstask/nstask.sock); the agent
must be running. Prints tasks/s, failures, and the agent's RSS at start and end; exits 1 on
any failure or leak.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cni.builtin import host_veth_name

NSTASK = str(Path(sys.executable).parent / "nstask")
IMAGE = "nstask.local/busybox:latest"


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.path_ = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path_)


def api(sock: str, path: str) -> object:
    conn = _Unix(sock)
    conn.request("GET", path)
    return json.loads(conn.getresponse().read())


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def leftovers(sock: str) -> list[str]:
    info = api(sock, "/v1/version")
    assert isinstance(info, dict)
    found = []
    tasks = api(sock, "/v1/tasks?all=1")
    assert isinstance(tasks, list)
    found += [f"task record {t['id']}" for t in tasks if t["family"] == "churn"]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [
        f"netns {line.split()[0]}"
        for line in netns.splitlines()
        if line.startswith(info["netnsPrefix"])
        and len(line.split()[0]) == len(info["netnsPrefix"]) + 32
    ]
    # The agent's warm pool (attachments made ahead of tasks) is not a leftover.
    pool = set(info.get("warmPool", []))
    pool_veths = {host_veth_name(i, "eth0") for i in pool}
    links = subprocess.run(
        ["ip", "-o", "link", "show", "master", info["bridge"]], capture_output=True, text=True
    ).stdout
    found += [
        f"veth {name}"
        for name in (line.split(":")[1].strip() for line in links.splitlines())
        if name.split("@")[0] not in pool_veths
    ]
    ipam = Path(info["ipamDataDir"]) / info["network"]
    if ipam.is_dir():
        found += [
            f"IP {p.name}"
            for p in ipam.iterdir()
            if p.name != "lock"
            and not p.name.startswith("last_reserved_ip")
            and p.read_text().split("\n", 1)[0].strip() not in pool
        ]
    results = Path(info["cniCacheDir"]) / "results"
    if results.is_dir():
        found += [
            f"CNI cache {p.name}"
            for p in results.iterdir()
            if p.name.startswith(info["network"] + "-")
            and not any(f"-{i}-" in p.name for i in pool)
        ]
    ns = info["namespace"]
    for kind in ("containers", "leases"):
        out = subprocess.run(
            ["ctr", "-n", ns, kind, "ls", "-q"], capture_output=True, text=True
        ).stdout.split()
        found += [f"containerd {kind[:-1]} {x}" for x in out]
    snaps = subprocess.run(
        ["ctr", "-n", ns, "snapshots", "ls"], capture_output=True, text=True
    ).stdout.splitlines()[1:]
    found += [f"active snapshot {s.split()[0]}" for s in snaps if "Active" in s]
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--socket", default=os.environ.get("NSTASK_SOCKET", "/run/nstask/nstask.sock"))
    args = ap.parse_args()
    env = {**os.environ, "NSTASK_SOCKET": args.socket}
    info = api(args.socket, "/v1/version")
    assert isinstance(info, dict)
    pid = int(info["pid"])
    td = Path(tempfile.mkdtemp(prefix="nstask-churn-")) / "churn.json"
    td.write_text(
        json.dumps(
            {
                "family": "churn",
                "containerDefinitions": [
                    {"name": "true", "image": IMAGE, "essential": True, "command": ["true"]}
                ],
            }
        )
    )
    rss_start = rss_kib(pid)

    def one(_: int) -> int:
        return subprocess.run(
            [NSTASK, "run", "--rm", str(td)], env=env, capture_output=True
        ).returncode

    t0 = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as pool:
        codes = list(pool.map(one, range(args.tasks)))
    took = time.monotonic() - t0
    rss_end = rss_kib(pid)
    failed = sum(1 for c in codes if c != 0)
    left = leftovers(args.socket)
    td.unlink()
    td.parent.rmdir()
    print(
        f"tasks: {args.tasks} at concurrency {args.concurrency} in {took:.1f} s "
        f"= {args.tasks / took:.1f} tasks/s"
    )
    print(f"failed: {failed}")
    print(f"agent RSS: {rss_start / 1024:.1f} MiB at start, {rss_end / 1024:.1f} MiB at end")
    print(f"leftovers: {len(left)}" + "".join(f"\n  {x}" for x in left[:20]))
    return 1 if failed or left else 0


if __name__ == "__main__":
    sys.exit(main())
