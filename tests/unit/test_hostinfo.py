"""`nstask info --check` (agent.hostinfo.check): each missing or wrong prerequisite is named
with the command that fixes it; a healthy host has none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent import hostinfo
from agent.config import AgentConfig


def _healthy() -> dict[str, Any]:
    return {
        "containerd": {"address": "/run/containerd/containerd.sock", "version": "1.6.20"},
        "cni": {"plugins": ["bridge", "firewall", "host-local", "loopback", "portmap"]},
        "cgroup": {"version": "2", "controllers": ["cpu", "memory", "pids"]},
        "ipForwarding": True,
        "iptables": {"version": "iptables v1.8.9 (nf_tables)", "backend": "nf_tables"},
    }


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AgentConfig:
    shim = tmp_path / "nstask-shim-logger"
    shim.write_text("#!/bin/sh\n")
    shim.chmod(0o755)
    profile = tmp_path / "seccomp.json"
    profile.write_text("{}")
    monkeypatch.setattr(hostinfo, "SECCOMP_PROFILE", profile)
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/sbin/{name}")
    return AgentConfig(shim_path=shim)


def test_a_healthy_host_has_no_problem(host: AgentConfig) -> None:
    assert hostinfo.check(host, _healthy()) == []


@pytest.mark.parametrize(
    ("change", "problem", "fix"),
    [
        (
            lambda f: f["containerd"].update(version=None, error="connection refused"),
            "containerd does not answer on /run/containerd/containerd.sock",
            "systemctl start containerd",
        ),
        (
            lambda f: f["cni"].update(plugins=["bridge", "host-local", "loopback", "portmap"]),
            "CNI plugin 'firewall' not found",
            "apt-get install -y containernetworking-plugins",
        ),
        (
            lambda f: f["cgroup"].update(controllers=["cpu", "pids"]),
            "the cgroup memory controller is not enabled",
            "cgroup_enable=memory",
        ),
        (
            lambda f: f.update(ipForwarding=False),
            "IP forwarding is off",
            "sysctl -w net.ipv4.ip_forward=1",
        ),
        (
            lambda f: f["iptables"].update(version=None),
            "iptables is not installed",
            "apt-get install -y iptables",
        ),
    ],
)
def test_each_problem_names_its_fix(host: AgentConfig, change: Any, problem: str, fix: str) -> None:
    facts = _healthy()
    change(facts)
    (p,) = hostinfo.check(host, facts)
    assert p.what.startswith(problem) and fix in p.fix, p


def test_runc_the_seccomp_package_and_the_shim(
    host: AgentConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr(hostinfo, "SECCOMP_PROFILE", tmp_path / "none.json")
    config = AgentConfig(shim_path=tmp_path / "no-shim")
    fixes = {p.what.split(" (")[0]: p.fix for p in hostinfo.check(config, _healthy())}
    assert fixes["runc is not on PATH"] == "apt-get install -y runc"
    assert any("golang-github-containers-common" in f for f in fixes.values())
    assert any("logging shim" in w for w in fixes)
