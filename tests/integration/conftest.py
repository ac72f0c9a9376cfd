"""Fixtures for integration tests: root, a real containerd, runc, CNI plugins and netns.

The session runs one agent of its own beside any user's agent: its own state dir, socket,
containerd namespace, bridge, subnet, CNI cache and IPAM dir, all named nstask-test-*/nstaskt*.
When the session ends, the agent is stopped and a leak check asserts that nothing of ours is
left: no netns, veth, IPAM allocation, CNI cache entry, containerd container, task, active
snapshot or lease.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import CTR_SOCK, NSTASK, REPO, TEST_IMAGE, Agent, ctr, leaks


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (run `make test` as root)")


_GIVEN_SUBNETS: set[str] = set()


def _free_subnet() -> str:
    """A test subnet no bridge on the host routes yet, and not given to another agent of this
    session: two agents on one subnet see each other's firewall rules in their leak checks."""
    for _ in range(200):
        subnet = f"10.213.{random.randrange(100, 199)}.0/24"
        if subnet in _GIVEN_SUBNETS:
            continue
        routes = subprocess.run(
            ["ip", "-4", "route", "show", subnet], capture_output=True, text=True
        ).stdout
        if not routes.strip():
            _GIVEN_SUBNETS.add(subnet)
            return subnet
    raise RuntimeError("no free 10.213.100-198.0/24 test subnet on this host")


def start_agent(
    *,
    conflist_for: Callable[[Agent], dict[str, object]] | None = None,
    cni_path: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> tuple[Agent, subprocess.Popen[bytes], Path]:
    """Start an agent with names of its own; returns it, its process and its base dir."""
    tag = f"{random.randrange(16**6):06x}"
    base = Path(tempfile.mkdtemp(prefix=f"nstask-test-{tag}-"))
    a = Agent(
        socket=str(base / "run" / "nstask.sock"),
        namespace=f"nstask-test-{tag}",
        bridge=f"nstaskt{random.randrange(10**6):06d}",
        subnet=_free_subnet(),
        network=f"nstask-test-{tag}",
        netns_prefix=f"nstask-t{tag}-",
        state_dir=base / "state",
        cni_cache=base / "cni",
        ipam_dir=base / "ipam",
        pid=0,
        log_path=base / "agent.log",
    )
    try:
        subprocess.run(
            [
                sys.executable,
                str(REPO / "scripts" / "make_test_image.py"),
                "--ref",
                TEST_IMAGE,
                "--address",
                CTR_SOCK,
                "--namespace",
                a.namespace,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    except BaseException:  # containerd away, say: leave neither the directory nor the image
        _remove_everything(a)
        shutil.rmtree(base, ignore_errors=True)
        raise
    env = {
        **os.environ,
        "NSTASK_NETNS_PREFIX": a.netns_prefix,
        "NSTASK_CNI_CACHE_DIR": str(a.cni_cache),
        "NSTASK_IPAM_DATA_DIR": str(a.ipam_dir),
        "NSTASK_STOP_TIMEOUT": "10",
        # Never real AWS from a test, whatever credentials the host has: tests that want AWS
        # (moto on loopback) set the order and the endpoints in extra_env.
        "NSTASK_SECRET_SOURCES": "local",
        # Not the host's /etc/nstask/agent.toml (a `make install` may have put one there).
        "NSTASK_CONFIG": "none",
    }
    if cni_path:
        env["NSTASK_CNI_PATH"] = cni_path
    env.update(extra_env or {})
    args = [
        NSTASK,
        "--socket",
        a.socket,
        "agent",
        "--state-dir",
        str(a.state_dir),
        "--run-dir",
        str(base / "run"),
        "--namespace",
        a.namespace,
        "--bridge",
        a.bridge,
        "--subnet",
        a.subnet,
        "--network-name",
        a.network,
    ]
    if conflist_for is not None:
        conflist = base / "network.conflist"
        conflist.write_text(json.dumps(conflist_for(a)))
        args += ["--conflist", str(conflist)]
        a.own_conflist = True
    a.launch = (args, env)
    try:
        return a, launch_agent(a), base
    except BaseException:
        # An agent that never came up leaves its namespace and directories: remove them.
        _remove_everything(a)
        shutil.rmtree(base, ignore_errors=True)
        raise


def launch_agent(a: Agent) -> subprocess.Popen[bytes]:
    """Start (or start again) the agent process of `a` and wait until its API answers."""
    args, env = a.launch
    with open(a.log_path, "ab") as log:
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=log, start_new_session=True)
    a.pid = proc.pid
    deadline = time.monotonic() + 20
    while a.cli("ps").returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"test agent did not start:\n{a.log_tail()}")
        time.sleep(0.05)
    return proc


def stop_agent(a: Agent, proc: subprocess.Popen[bytes], base: Path) -> None:
    """Stop the tasks tests left, stop the agent, check for leaks, remove the rest."""
    try:
        try:
            for task_id in a.cli("ps", "-q", timeout=30).stdout.split():
                a.cli("stop", "-t", "0", task_id, timeout=60)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        left = leaks(a)
        bridge = subprocess.run(["ip", "link", "show", a.bridge], capture_output=True)
        if bridge.returncode == 0 and not a.own_conflist:
            left.append(f"bridge {a.bridge} (the agent stopped with no task on it)")
    finally:
        _remove_everything(a)
        shutil.rmtree(base, ignore_errors=True)
    assert not left, f"the test agent left resources behind: {left}"


@pytest.fixture(scope="session")
def agent() -> Iterator[Agent]:
    a, proc, base = start_agent()
    try:
        yield a
    finally:
        stop_agent(a, proc, base)


def _remove_everything(a: Agent) -> None:
    """After the leak check: remove the test namespace, bridge and image content."""
    subprocess.run(["ip", "link", "del", a.bridge], stderr=subprocess.DEVNULL)
    for kind in ("tasks", "containers"):
        for line in ctr(a.namespace, kind, "ls", "-q").split():
            subprocess.run(
                ["ctr", "-n", a.namespace, kind, "rm", line],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
    for lease in ctr(a.namespace, "leases", "ls", "-q").split():
        subprocess.run(
            ["ctr", "-n", a.namespace, "leases", "rm", lease],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    for img in ctr(a.namespace, "images", "ls", "-q").split():
        subprocess.run(
            ["ctr", "-n", a.namespace, "images", "rm", "--sync", img],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    subprocess.run(
        ["ctr", "namespaces", "rm", a.namespace],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
