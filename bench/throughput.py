"""Throughput: N tasks at concurrency C through `nstask run --rm`, and the same through
`ctr run --rm --cni`, in one invocation.

Both run a one-container task of the same busybox image running `true`, on a network of
bridge + host-local + portmap + firewall (nstask's own bridge plugin for nstask; the Debian
`bridge` plugin for ctr, set up as bench/launch.py sets it up and removed at the end). Prints
tasks/s of each, the ratio, failures, what each left behind, and the agent's RSS after the
first 100 tasks and at the end, and the agent's CPU time per task. The two sides run in
alternating rounds (--round tasks each), so a change in the machine's load is shared.

    .venv/bin/python bench/throughput.py [--tasks 100] [--concurrency 8] [--no-ctr]

It starts an agent of its own (temporary state, namespace nstask-bench-*, bridge nstaskb0,
subnet 10.213.250.0/24, its default warm pool).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from launch import BIN, CTR_SOCK, IMAGE, _ctr_network, run, start_agent

CNI_CONF_DIR = Path("/etc/cni/net.d")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _ctr_cmd(ctr: list[str], prefix: str) -> Callable[[int], list[str]]:
    return lambda i: [*ctr, "run", "--rm", "--cni", IMAGE, f"{prefix}{i}", "true"]


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _host_busy() -> float:
    """CPU seconds the whole host spent busy so far (all cores; /proc/stat minus idle, iowait)."""
    cols = [int(c) for c in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(cols[:8]) - cols[3] - cols[4]) / os.sysconf("SC_CLK_TCK")


def _many(
    n: int,
    concurrency: int,
    cmd_for: Callable[[int], list[str]],
    env: dict[str, str],
    on_done: Callable[[int], None] | None = None,
) -> tuple[float, list[str]]:
    """Run n commands, `concurrency` at a time; returns (seconds, failure messages)."""
    failures: list[str] = []
    done = [0]
    guard = threading.Lock()

    def one(i: int) -> None:
        proc = run(cmd_for(i), env=env)
        with guard:
            if proc.returncode != 0:
                failures.append(f"#{i} exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
            done[0] += 1
            count = done[0]
        if on_done is not None:
            on_done(count)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(n)))
    return time.perf_counter() - t0, failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--tasks", type=int, default=100, help="tasks of each (default 100)")
    ap.add_argument("--concurrency", type=int, default=8, help="at once (default 8)")
    ap.add_argument("--no-ctr", action="store_true", help="nstask only")
    ap.add_argument(
        "--round", type=int, default=50, help="tasks per side per alternating round (50)"
    )
    args = ap.parse_args()
    tag = f"{os.getpid():x}"
    base = Path(tempfile.mkdtemp(prefix="nstask-bench-"))
    ns = f"nstask-bench-{tag}"
    prefix = f"nstask-b{tag}-"
    env = {
        **os.environ,
        "NSTASK_SOCKET": str(base / "nstask.sock"),
        "NSTASK_NETNS_PREFIX": prefix,
        "NSTASK_CNI_CACHE_DIR": str(base / "cni"),
        "NSTASK_IPAM_DATA_DIR": str(base / "ipam"),
    }
    network = f"nstask-bench-{tag}"
    created: list[Path] = []
    agent = None
    try:
        if not args.no_ctr and CNI_CONF_DIR.is_dir() and any(CNI_CONF_DIR.iterdir()):
            print(f"bench: {CNI_CONF_DIR} already holds configurations; move them aside first.")
            return 2
        if not args.no_ctr:
            _ctr_network(created, base)
        agent = start_agent(
            base, ns, env, bridge="nstaskb0", subnet="10.213.250.0/24", network=network
        )
        td = base / "true.json"
        td.write_text(
            json.dumps(
                {
                    "family": "bench",
                    "containerDefinitions": [
                        {"name": "true", "image": IMAGE, "essential": True, "command": ["true"]}
                    ],
                }
            )
        )
        # One warm-up of each (bridge creation, first chains, page cache), not counted.
        run([str(BIN / "nstask"), "run", "--rm", str(td)], env=env, check=True)
        ctr = ["ctr", "--address", CTR_SOCK, "-n", ns]
        if not args.no_ctr:
            run([*ctr, "run", "--rm", "--cni", IMAGE, f"{ns}-warm", "true"], check=True)
        rss: dict[str, float] = {}
        agent_pid = agent.pid
        cpu0 = _cpu_seconds(agent_pid)
        ours = theirs = 0.0
        busy = {"nstask": 0.0, "ctr": 0.0}
        our_failures: list[str] = []
        their_failures: list[str] = []
        # Alternating rounds, so that a change in what else the machine does (other
        # processes, a page cache flush) falls on both alike, not on one side's whole run.
        done = 0
        while done < args.tasks:
            batch = min(args.round, args.tasks - done)

            def note_rss(count: int, before: int = done) -> None:
                if before + count == min(100, args.tasks):
                    rss["after 100"] = _rss_mb(agent_pid)

            b0 = _host_busy()
            took, failed = _many(
                batch,
                args.concurrency,
                lambda i: [str(BIN / "nstask"), "run", "--rm", str(td)],
                env,
                note_rss,
            )
            busy["nstask"] += _host_busy() - b0
            ours += took
            our_failures += failed
            if not args.no_ctr:
                b0 = _host_busy()
                took, failed = _many(batch, args.concurrency, _ctr_cmd(ctr, f"{ns}-{done}-"), env)
                busy["ctr"] += _host_busy() - b0
                theirs += took
                their_failures += failed
            done += batch
        rss["end"] = _rss_mb(agent_pid)
        agent_cpu = _cpu_seconds(agent_pid) - cpu0
        our_left = _nstask_leftovers(env, base / "ipam" / network, prefix)
        print(
            f"tasks: {args.tasks} of each, concurrency {args.concurrency}, "
            f"alternating rounds of {args.round}"
        )
        print(
            f"nstask run --rm      {args.tasks / ours:6.1f} tasks/s  ({ours:.1f} s), "
            f"failures {len(our_failures)}, left {our_left or 'nothing'}"
        )
        for f in our_failures[:5]:
            print(f"  {f}")
        print("agent RSS: " + ", ".join(f"{k} {v:.1f} MB" for k, v in rss.items()))
        print(f"agent CPU: {agent_cpu * 1000 / args.tasks:.1f} ms per task (user + system)")
        print(
            "host CPU per task (all processes, kernel included): "
            + ", ".join(f"{k} {v * 1000 / args.tasks:.0f} ms" for k, v in busy.items() if v)
        )
        if args.no_ctr:
            return 1 if our_failures or our_left else 0
        their_left = _ctr_leftovers(ns, base / "ctr-ipam")
        print(
            f"ctr run --rm --cni   {args.tasks / theirs:6.1f} tasks/s  ({theirs:.1f} s), "
            f"failures {len(their_failures)}, left {their_left or 'nothing'}"
        )
        for f in their_failures[:5]:
            print(f"  {f}")
        print(f"ratio nstask/ctr (tasks/s): {theirs / ours:.2f}x")
        return 1 if our_failures or our_left or their_failures else 0
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)
        for p in reversed(created):
            if p.is_symlink() or p.is_file():
                p.unlink()
        run(["ip", "link", "del", "nstaskb0"])
        run(["ip", "link", "del", "nstask-bench0"])
        for kind in ("tasks", "containers"):
            for c in run(["ctr", "-n", ns, kind, "ls", "-q"]).stdout.split():
                run(["ctr", "-n", ns, kind, "rm", c])
        for img in run(["ctr", "-n", ns, "images", "ls", "-q"]).stdout.split():
            run(["ctr", "-n", ns, "images", "rm", "--sync", img])
        run(["ctr", "namespaces", "rm", ns])
        shutil.rmtree(base, ignore_errors=True)


def _nstask_leftovers(env: dict[str, str], ipam: Path, prefix: str) -> list[str]:
    """Tasks, netns and IPAM allocations left, the agent's warm pool (pool-*) aside."""
    left = [
        f"task {t}" for t in run([str(BIN / "nstask"), "ps", "-a", "-q"], env=env).stdout.split()
    ]
    netns = run(["ip", "netns", "list"]).stdout.splitlines()
    left += [f"netns {n.split()[0]}" for n in netns if n.startswith(prefix) and "-pool-" not in n]
    for p in ipam.iterdir() if ipam.is_dir() else []:
        if p.name[0].isdigit() and not p.read_text().startswith("pool-"):
            left.append(f"IPAM allocation {p.name}")
    return left


def _ctr_leftovers(ns: str, ipam: Path) -> list[str]:
    left = [
        f"container {c}" for c in run(["ctr", "-n", ns, "containers", "ls", "-q"]).stdout.split()
    ]
    for d in ipam.iterdir() if ipam.is_dir() else []:
        left += [f"IPAM allocation {p.name}" for p in d.iterdir() if p.name[0].isdigit()]
    return left


if __name__ == "__main__":
    sys.exit(main())
