"""Many tasks at once: N tasks of `sleep` started through `nstask run -d` at a concurrency, all
RUNNING with an address each, then all stopped; prints the time to start and to stop all of
them, the agent's RSS, and the RSS per task of our logging shim and of containerd's shim.

    .venv/bin/python bench/many.py [--tasks 250] [--concurrency 8]

It starts an agent of its own (temporary state, namespace nstask-bench-*, bridge nstaskm0,
subnet 10.213.244.0/22, no warm pool) and checks that nothing is left at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from launch import BIN, IMAGE, run, start_agent


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _processes(needle: str, also: str) -> list[int]:
    """Pids whose command line holds both strings."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd and also in cmd:
            out.append(int(p.name))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--tasks", type=int, default=250)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    tag = f"{os.getpid():x}"
    base = Path(tempfile.mkdtemp(prefix="nstask-bench-"))
    ns = f"nstask-bench-{tag}"
    env = {
        **os.environ,
        "NSTASK_SOCKET": str(base / "nstask.sock"),
        "NSTASK_NETNS_PREFIX": f"nstask-b{tag}-",
        "NSTASK_CNI_CACHE_DIR": str(base / "cni"),
        "NSTASK_IPAM_DATA_DIR": str(base / "ipam"),
        "NSTASK_WARM_POOL_SIZE": "0",
    }
    nstask = str(BIN / "nstask")
    agent = None
    ids: list[str] = []
    try:
        agent = start_agent(
            base,
            ns,
            env,
            bridge="nstaskm0",
            subnet="10.213.244.0/22",
            network=f"nstask-bench-{tag}",
        )
        td = base / "sleep.json"
        td.write_text(
            json.dumps(
                {
                    "family": "many",
                    "containerDefinitions": [
                        {"name": "sleep", "image": IMAGE, "command": ["sleep", "3600"]}
                    ],
                }
            )
        )
        rss_idle = _rss_kb(agent.pid)
        t0 = time.monotonic()
        with ThreadPoolExecutor(args.concurrency) as pool:
            procs = list(
                pool.map(lambda _: run([nstask, "run", "-d", str(td)], env=env), range(args.tasks))
            )
        failures = [p.stderr.strip()[-200:] for p in procs if p.returncode != 0]
        ids = [p.stdout.strip() for p in procs if p.returncode == 0]
        deadline = time.monotonic() + 300
        while True:
            tasks = json.loads(run([nstask, "ps", "--json"], env=env).stdout or "[]")
            running = [t for t in tasks if t["lastStatus"] == "RUNNING"]
            if len(running) >= len(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        start_s = time.monotonic() - t0
        addresses = {t["ip"] for t in running}
        ours = _processes("nstask-shim-logger", ns) or _processes("nstask-shim-logger", "many")
        theirs = _processes("containerd-shim-runc-v2", f"-namespace {ns}")
        print(f"tasks: {args.tasks} at concurrency {args.concurrency}, failures {len(failures)}")
        print(
            f"RUNNING {len(running)}, distinct addresses {len(addresses)}, "
            f"start all {start_s:.1f} s"
        )
        print(
            f"agent RSS: idle {rss_idle / 1024:.1f} MiB, with {len(running)} tasks "
            f"{_rss_kb(agent.pid) / 1024:.1f} MiB"
        )
        for name, pids in (("our logging shim", ours), ("containerd's shim", theirs)):
            total = sum(_rss_kb(p) for p in pids)
            per = total / len(pids) / 1024 if pids else 0.0
            print(
                f"{name}: {len(pids)} processes, {per:.1f} MiB each, {total / 1024:.0f} MiB in all"
            )
        t1 = time.monotonic()
        with ThreadPoolExecutor(args.concurrency) as pool:
            stops = list(pool.map(lambda i: run([nstask, "stop", "-t", "1", i], env=env), ids))
        print(
            f"stop all: {time.monotonic() - t1:.1f} s, failures "
            f"{sum(1 for p in stops if p.returncode != 0)}"
        )
        for f in failures[:5]:
            print("  failure:", f)
        left = [
            x
            for x in run(["ip", "netns", "list"]).stdout.split()
            if x.startswith(env["NSTASK_NETNS_PREFIX"])
        ]
        print(f"netns left: {len(left)}")
        return 0 if not failures and len(running) == args.tasks and not left else 1
    finally:
        if agent is not None:
            for i in ids:
                run([nstask, "stop", "-t", "0", i], env=env)
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)
        for kind in ("images",):
            for ref in run(["ctr", "-n", ns, kind, "ls", "-q"]).stdout.split():
                run(["ctr", "-n", ns, kind, "rm", "--sync", ref])
        run(["ctr", "namespaces", "rm", ns])
        subprocess.run(["ip", "link", "del", "nstaskm0"], stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
