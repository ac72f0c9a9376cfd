"""The worker of test_cni_stress: many concurrent ADD/DEL through one CNIRuntime.

Run by the test inside a network namespace of its own (`nsenter --net=...`), so the
bridge, the veths and every iptables chain portmap and firewall create are the worker's
own, made for the first time by concurrent first ADDs: the races FACTS.md reports happen
on first creation. Prints one JSON report on stdout.

    python cni_stress_worker.py <json settings>
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
import traceback
from typing import Any

from agent import netns
from cni.builtin import BridgePlugin
from cni.runtime import CNIRuntime


def main(settings: dict[str, Any]) -> dict[str, Any]:
    threads, iterations = int(settings["threads"]), int(settings["iterations"])
    rt = CNIRuntime(
        conflist=settings["conflist"],
        cache_dir=settings["cache_dir"],
        lock_path=settings["lock_path"],
        builtins={"nstask-bridge": BridgePlugin(netns.NetlinkLinks())},
    )
    errors: list[str] = []
    done = [0] * threads
    most = [0]
    inside = [0]
    guard = threading.Lock()
    start = threading.Barrier(threads)
    # "serialize": one lock around every operation, as before issue 10 (for comparisons).
    one_at_a_time = threading.Lock() if settings.get("serialize") else None

    def worker(i: int) -> None:
        path = netns.create_netns(f"{settings['netns_prefix']}{i}")
        cid = f"nstask-stress-{i}"
        start.wait()  # every first ADD at once, on a bridge and chains that do not exist yet
        for n in range(iterations):
            ports = [{"hostPort": 20000 + i * 100 + n % 50, "containerPort": 80, "protocol": "tcp"}]
            try:
                with guard:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                try:
                    with one_at_a_time or contextlib.nullcontext():
                        rt.add(cid, path, capability_args={"portMappings": ports})
                finally:
                    with guard:
                        inside[0] -= 1
                with one_at_a_time or contextlib.nullcontext():
                    rt.delete(cid, path)
                done[i] += 1
            except Exception:
                errors.append(f"thread {i} iteration {n}: {traceback.format_exc()}")
                try:
                    rt.delete(cid, path)
                except Exception:
                    errors.append(f"thread {i} cleanup DEL: {traceback.format_exc()}")

    t0 = time.monotonic()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    took = time.monotonic() - t0
    return {
        "errors": errors,
        "completed": sum(done),
        "seconds": took,
        "most_concurrent_adds": most[0],
    }


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
