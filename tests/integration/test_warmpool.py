"""The warm pool of network attachments through a real agent (agent.warmpool).

An agent with NSTASK_WARM_POOL_SIZE=2 keeps two netns attached to its network (eth0 with an
address of its subnet), each recorded in its state store; `nstask gc` leaves them alone; a
SIGTERM removes them (the leak check is clean); after a SIGKILL the next agent takes care of
the old ones and fills up to two again. Size 0 makes none.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from conftest import launch_agent, start_agent, stop_agent
from support import WAIT_FOREVER, Agent, busybox_task, write_taskdef


def _pool_netns(a: Agent) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return sorted(
        line.split()[0] for line in out.splitlines() if line.startswith(a.netns_prefix + "pool-")
    )


def _eth0_address(name: str) -> str:
    out = subprocess.run(
        ["ip", "-n", name, "-4", "-o", "addr", "show", "eth0"], capture_output=True, text=True
    ).stdout
    return out.split()[3] if out.split() else ""


def _rows(a: Agent) -> list[tuple[str, str, str, str]]:
    db = sqlite3.connect(f"file:{a.state_dir / 'state.db'}?mode=ro", uri=True)
    try:
        return sorted(db.execute("SELECT kind, key, task_id, state FROM resources").fetchall())
    finally:
        db.close()


def _wait_pool(a: Agent, n: int, timeout: float = 20, *, taken: str = "") -> list[str]:
    """The pool's netns once it holds n entries (`taken`: a netns a task took from it)."""
    deadline = time.monotonic() + timeout
    while True:
        names = [x for x in _pool_netns(a) if x != taken]
        rows = [r for r in _rows(a) if r[2].startswith("pool-") and r[3] == "created"]
        if len(names) == n and len(rows) == 2 * n and all(_eth0_address(x) for x in names):
            return names
        if time.monotonic() > deadline:
            raise AssertionError(f"pool: netns {names}, rows {rows}\n{a.log_tail()}")
        time.sleep(0.1)


def test_the_pool_fills_survives_gc_and_a_kill_and_drains_on_exit() -> None:
    a, proc, base = start_agent(extra_env={"NSTASK_WARM_POOL_SIZE": "2"})
    try:
        names = _wait_pool(a, 2)
        subnet = a.subnet.rsplit(".", 1)[0] + "."
        assert all(_eth0_address(n).startswith(subnet) for n in names)
        rows = _rows(a)
        for n in names:
            pool_id = n.removeprefix(a.netns_prefix)
            assert ("netns", n, pool_id, "created") in rows
            assert ("cni", f"{a.network}/{pool_id}/eth0", pool_id, "created") in rows

        # gc: the pool's netns, veths, IPAM files and cache entries are nobody's orphans.
        report = json.loads(a.cli("gc", "--dry-run", "--json", check=True).stdout)
        assert report == [] or all("pool-" not in json.dumps(o) for o in report), report
        a.cli("gc", check=True)
        assert _pool_netns(a) == names

        # SIGKILL: the entries stay on the host; the next agent removes or adopts them and
        # fills up to two again, and no third allocation is left anywhere.
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = launch_agent(a)
        again = _wait_pool(a, 2)
        time.sleep(0.5)  # a refill running past two would show now
        assert _pool_netns(a) == again
        allocations = [p.name for p in (a.ipam_dir / a.network).iterdir() if p.name[0].isdigit()]
        assert len(allocations) == 2, allocations
        assert len(list((a.cni_cache / "results").iterdir())) == 2
    finally:
        stop_agent(a, proc, base)  # SIGTERM drains the pool; the leak check must be clean


def test_size_zero_makes_no_pool() -> None:
    a, proc, base = start_agent(extra_env={"NSTASK_WARM_POOL_SIZE": "0"})
    try:
        time.sleep(1.0)
        assert _pool_netns(a) == []
        assert [r for r in _rows(a) if r[2].startswith("pool-")] == []
    finally:
        stop_agent(a, proc, base)


def test_an_awsvpc_task_takes_a_pool_entry_and_the_pool_refills(tmp_path: Path) -> None:
    """A task without port mappings adopts a pooled attachment (no netns + CNI ADD on its
    start); stopping it removes that attachment like one of its own; the pool refills."""
    a, proc, base = start_agent(extra_env={"NSTASK_WARM_POOL_SIZE": "2"})
    try:
        before = _wait_pool(a, 2)
        td = write_taskdef(tmp_path, busybox_task("pooled", ["sh", "-c", WAIT_FOREVER]))
        task_id = a.cli("run", "-d", td, check=True).stdout.strip()
        t = a.wait_status(task_id, "RUNNING")
        assert "network.pool" in t["timings"] and "network.cni" not in t["timings"], t["timings"]
        netns = Path(t["netns"]).name
        assert netns in before, (netns, before)
        assert _eth0_address(netns).split("/")[0] == t["ip"]
        rows = [r for r in _rows(a) if r[2] == task_id]
        assert {r[0] for r in rows} >= {"netns", "cni"}, rows
        # The task's network works: it reaches its gateway (the bridge).
        gateway = a.subnet.rsplit(".", 1)[0] + ".1"
        r = a.cli("exec", task_id, "--", "ping", "-c", "1", "-W", "2", gateway)
        assert r.returncode == 0, r
        after = _wait_pool(a, 2, taken=netns)
        assert netns not in after
        a.cli("stop", task_id, check=True)
        assert netns not in subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
        assert not [r for r in _rows(a) if r[2] == task_id]
        # A task with published ports never takes one.
        web = busybox_task(
            "ported", ["sh", "-c", WAIT_FOREVER], portMappings=[{"containerPort": 80}]
        )
        web["networkMode"] = "bridge"
        port_task = a.cli("run", "-d", write_taskdef(tmp_path, web), check=True).stdout.strip()
        pt = a.wait_status(port_task, "RUNNING")
        assert "network.cni" in pt["timings"] and "pool-" not in (pt["netns"] or "")
        a.cli("stop", port_task, check=True)
    finally:
        stop_agent(a, proc, base)
