"""Concurrent CNI ADD/DEL through CNIRuntime, with portmap (port mappings) and firewall.

Issue 10: every ADD and DEL on the host ran under one lock. Now operations on different
attachments run in parallel; this test has 8 threads ADD and DEL 40 times each (320 pairs)
and wants no error and nothing left: no iptables rule for its subnet, no duplicated rule,
IPAM file, cache entry, veth or netns.

The worker runs inside a network namespace of the test's own standing in for the host, so
the bridge and every chain portmap and firewall make are created for the first time by
eight concurrent first ADDs (the field reports' race), without touching the host's tables.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections import Counter
from pathlib import Path

import pytest

from agent import netns

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, iptables)"),
    pytest.mark.skipif(
        not Path("/usr/lib/cni/portmap").exists(), reason="containernetworking-plugins missing"
    ),
]

THREADS, ITERATIONS = 8, 40
WORKER = Path(__file__).with_name("cni_stress_worker.py")


def _in(host: str, *cmd: str) -> str:
    return subprocess.run(
        ["nsenter", f"--net={netns.netns_path(host)}", *cmd],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def test_concurrent_add_del_with_portmap_and_firewall_leaves_nothing() -> None:
    tag = uuid.uuid4().hex[:6]
    host = f"nstask-stress-{tag}"
    prefix = f"nstask-st{tag}-"
    tmp = Path(tempfile.mkdtemp(prefix="nstask-t-stress-"))
    subnet_prefix = f"10.213.{random.randint(200, 250)}."
    network = f"nstask-t-{tag}"
    bridge = f"nstaskt{random.randint(100000, 999999)}"
    conflist = {
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [
            {
                "type": "nstask-bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet_prefix + "0/24"}]],
                    "dataDir": str(tmp / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": False},
            {"type": "firewall"},
        ],
    }
    settings = {
        "threads": THREADS,
        "iterations": ITERATIONS,
        "conflist": conflist,
        "cache_dir": str(tmp / "cache"),
        "lock_path": str(tmp / "cni.lock"),
        "netns_prefix": prefix,
    }
    netns.create_netns(host)
    try:
        proc = subprocess.run(
            [
                "nsenter",
                f"--net={netns.netns_path(host)}",
                sys.executable,
                str(WORKER),
                json.dumps(settings),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"stress: {report['completed']} ADD/DEL pairs in {report['seconds']:.1f} s,"
            f" up to {report['most_concurrent_adds']} ADDs at once"
        )
        assert report["errors"] == [], "\n".join(report["errors"][:5])
        assert report["completed"] == THREADS * ITERATIONS
        assert report["most_concurrent_adds"] > 1, "ADDs never overlapped: still serialized"

        rules = _in(host, "iptables-save")
        ours = [r for r in rules.splitlines() if r.startswith("-A") and subnet_prefix in r]
        assert ours == [], f"iptables rules for the subnet were left: {ours[:5]}"
        per_container = [r for r in rules.splitlines() if "CNI-DN-" in r or "CNI-FW-" in r]
        assert per_container == [], f"per-container chains were left: {per_container[:5]}"
        twice = [r for r, n in Counter(rules.splitlines()).items() if n > 1 and r.startswith("-A")]
        assert twice == [], f"rules added twice by racing first ADDs: {twice}"
        links = _in(host, "ip", "-o", "link", "show", "master", bridge)
        assert links.strip() == "", f"veths left on the bridge: {links}"
        ipam = tmp / "ipam" / network
        left = [p.name for p in ipam.iterdir() if p.name[0].isdigit()] if ipam.exists() else []
        assert left == [], f"IPAM allocations left: {left}"
        results = tmp / "cache" / "results"
        assert not results.exists() or list(results.iterdir()) == []
        assert not (tmp / "cni.lock.d").exists() or list((tmp / "cni.lock.d").iterdir()) == []
    finally:
        for name in netns.list_netns(prefix):
            netns.remove_netns(name)
        netns.remove_netns(host)  # takes its bridge, veths and iptables tables with it
        shutil.rmtree(tmp, ignore_errors=True)
    assert netns.list_netns(prefix) == [] and not netns.netns_exists(host)


def test_concurrent_first_ensure_bridge_all_succeed_with_one_bridge() -> None:
    """nstask-bridge's first ADDs race to create the bridge: EEXIST is success, and each
    caller confirms the bridge is there (and is a bridge) before going on."""
    bridge = f"nstaskt{random.randint(100000, 999999)}"
    links = netns.NetlinkLinks()
    barrier = threading.Barrier(8)
    indexes: list[int] = []
    errors: list[BaseException] = []

    def ensure() -> None:
        barrier.wait()
        try:
            indexes.append(links.ensure_bridge(bridge).index)
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=ensure) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        info = links.link_info(None, bridge)
        assert info is not None and info.kind == "bridge" and info.up
        assert indexes == [info.index] * 8
    finally:
        links.delete_link(bridge)
