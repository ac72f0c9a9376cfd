"""The cni package end to end: real netns, nstask-bridge + host-local, portmap, firewall (root).

Each test has its own bridge `nstaskt<digits>`, subnet 10.213.<200-250>.0/24, CNI cache,
host-local dataDir and lock file, and checks at the end that no allocation, veth, cache entry
or iptables rule of its own is left.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent import netns
from cni.builtin import BridgePlugin, host_veth_name
from cni.errors import CNIError
from cni.runtime import CNIRuntime

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, iptables)"),
    pytest.mark.skipif(
        not Path("/usr/lib/cni/host-local").exists(), reason="containernetworking-plugins missing"
    ),
]

FAILING_PLUGIN = """#!/bin/sh
# Fails ADD with a CNI error; DEL/CHECK succeed (DEL must tolerate anything).
if [ "$CNI_COMMAND" = ADD ]; then
  echo '{"cniVersion": "1.0.0", "code": 100, "msg": "nstask test failure", "details": "on purpose"}'
  exit 1
fi
exit 0
"""


@dataclass
class Net:
    """One test network and everything it may create."""

    tmp: Path
    bridge: str
    third_octet: int
    network: str
    netns_names: list[str] = field(default_factory=list)

    @property
    def subnet(self) -> str:
        return f"10.213.{self.third_octet}.0/24"

    @property
    def gateway(self) -> str:
        return f"10.213.{self.third_octet}.1"

    @property
    def ipam_dir(self) -> Path:
        return self.tmp / "ipam" / self.network

    def conflist(self, *extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": self.network,
            "plugins": [
                {
                    "type": "nstask-bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet}]],
                        "dataDir": str(self.tmp / "ipam"),
                    },
                },
                # snat off: no masquerade rule of any kind (tests do no hairpin traffic)
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": False},
                *extra,
                {"type": "firewall"},
            ],
        }

    def runtime(self, conflist: dict[str, Any], cni_path: list[str] | None = None) -> CNIRuntime:
        return CNIRuntime(
            conflist=conflist,
            cache_dir=str(self.tmp / "cache"),
            cni_path=cni_path or ["/usr/lib/cni", "/opt/cni/bin"],
            lock_path=str(self.tmp / "cni.lock"),
            builtins={"nstask-bridge": BridgePlugin(netns.NetlinkLinks())},
        )

    def new_netns(self) -> tuple[str, str]:
        name = f"nstask-t-{uuid.uuid4().hex[:10]}"
        self.netns_names.append(name)
        return name, netns.create_netns(name)

    def allocations(self) -> list[str]:
        if not self.ipam_dir.exists():
            return []
        return sorted(p.name for p in self.ipam_dir.iterdir() if p.name[0].isdigit())

    def cache_entries(self) -> list[str]:
        results = self.tmp / "cache" / "results"
        return sorted(p.name for p in results.iterdir()) if results.exists() else []


def iptables_rules_mentioning(text: str) -> list[str]:
    out = []
    for table in ("nat", "filter"):
        dump = subprocess.run(
            ["iptables-save", "-t", table], capture_output=True, text=True, check=True
        ).stdout
        out += [line for line in dump.splitlines() if text in line]
    return out


def in_netns(name: str, *cmd: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", name, *cmd], capture_output=True, text=True, timeout=timeout
    )


def ping(name: str | None, address: str) -> bool:
    cmd = ["busybox", "ping", "-c1", "-W2", address]
    proc = (
        in_netns(name, *cmd)
        if name
        else subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    )
    return proc.returncode == 0


def ipv4(result: dict[str, Any]) -> str:
    return str(result["ips"][0]["address"]).split("/")[0]


@pytest.fixture
def net() -> Iterator[Net]:
    tmp = Path(tempfile.mkdtemp(prefix="nstask-t-cni-"))
    n = Net(
        tmp=tmp,
        bridge=f"nstaskt{random.randint(100000, 999999)}",
        third_octet=random.randint(200, 250),
        network=f"nstask-t-{uuid.uuid4().hex[:8]}",
    )
    links = netns.NetlinkLinks()
    try:
        yield n
        # What every test must leave: no veth on the bridge, no allocation, no cache entry.
        assert links.list_links("nstask", master=n.bridge) == []
        assert n.allocations() == []
        assert n.cache_entries() == []
        assert iptables_rules_mentioning(n.network) == []
        assert iptables_rules_mentioning(f"10.213.{n.third_octet}.") == []
    finally:
        for name in n.netns_names:
            netns.remove_netns(name)
        links.delete_link(n.bridge)
        shutil.rmtree(tmp, ignore_errors=True)


def test_two_tasks_reach_each_other_and_the_host(net: Net) -> None:
    rt = net.runtime(net.conflist())
    (a_name, a_path), (b_name, b_path) = net.new_netns(), net.new_netns()
    a = rt.add("task-a", a_path)
    b = rt.add("task-b", b_path)
    try:
        assert ipv4(a) != ipv4(b)
        assert a["ips"][0]["gateway"] == net.gateway
        sandbox = [i for i in a["interfaces"] if i.get("sandbox")]
        assert sandbox == [{"name": "eth0", "mac": sandbox[0]["mac"], "sandbox": a_path}]
        assert net.allocations() == sorted([ipv4(a), ipv4(b)])
        assert len(net.cache_entries()) == 2

        assert ping(a_name, ipv4(b)), "netns a cannot reach b"
        assert ping(b_name, ipv4(a)), "netns b cannot reach a"
        assert ping(None, ipv4(a)), "the host cannot reach a"
        rules = iptables_rules_mentioning(f"{ipv4(a)}/32")
        assert any("CNI-FORWARD" in r for r in rules), "firewall plugin added no rule for a"
    finally:
        rt.delete("task-a", a_path)
        rt.delete("task-b", b_path)
    assert netns.NetlinkLinks().link_info(None, host_veth_name("task-a", "eth0")) is None
    assert iptables_rules_mentioning(f"{ipv4(a)}/32") == []


def test_port_mapping_is_applied_and_removed(net: Net) -> None:
    rt = net.runtime(net.conflist())
    name, path = net.new_netns()
    host_port = random.randint(20000, 29999)
    mapping = {"hostPort": host_port, "containerPort": 8080, "protocol": "tcp"}
    server = subprocess.Popen(
        ["ip", "netns", "exec", name, "busybox", "nc", "-l", "-p", "8080", "-e", "echo", "hi"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        result = rt.add("task-pm", path, capability_args={"portMappings": [mapping]})
        dnat = [r for r in iptables_rules_mentioning(f"{ipv4(result)}:8080") if "DNAT" in r]
        assert dnat, "portmap wrote no DNAT rule to the task"
        # The host connects to its own bridge address at the host port; the OUTPUT chain
        # DNATs it into the task's netns.
        reply = b""
        deadline = time.monotonic() + 5
        while not reply and time.monotonic() < deadline:
            try:
                with socket.create_connection((net.gateway, host_port), timeout=2) as conn:
                    reply = conn.recv(16)
            except OSError:
                time.sleep(0.05)
        assert reply == b"hi\n"
        rt.delete("task-pm", path)
        assert iptables_rules_mentioning(f"{ipv4(result)}:8080") == []
    finally:
        server.kill()
        server.wait()


def test_delete_removes_allocation_veth_and_cache(net: Net) -> None:
    rt = net.runtime(net.conflist())
    _, path = net.new_netns()
    rt.add("task-del", path)
    veth = host_veth_name("task-del", "eth0")
    assert netns.NetlinkLinks().link_info(None, veth) is not None
    assert len(net.allocations()) == 1
    assert net.cache_entries() == [f"{net.network}-task-del-eth0"]

    rt.delete("task-del", path)
    rt.delete("task-del", path)  # a second DEL is harmless

    assert netns.NetlinkLinks().link_info(None, veth) is None
    assert netns.NetlinkLinks().link_info(path, "eth0") is None
    assert net.allocations() == [] and net.cache_entries() == []


def test_plugin_failing_mid_list_leaves_nothing(net: Net) -> None:
    bindir = net.tmp / "bin"
    bindir.mkdir()
    failing = bindir / "nstask-fail"
    failing.write_text(FAILING_PLUGIN)
    failing.chmod(0o755)
    rt = net.runtime(net.conflist({"type": "nstask-fail"}), cni_path=[str(bindir), "/usr/lib/cni"])
    _, path = net.new_netns()
    mapping = {"hostPort": random.randint(20000, 29999), "containerPort": 80, "protocol": "tcp"}

    with pytest.raises(CNIError) as info:
        rt.add("task-fail", path, capability_args={"portMappings": [mapping]})

    err = info.value
    assert (err.plugin, err.command, err.code) == ("nstask-fail", "ADD", 100)
    assert "nstask test failure" in str(err)
    assert netns.NetlinkLinks().link_info(None, host_veth_name("task-fail", "eth0")) is None
    assert netns.NetlinkLinks().link_info(path, "eth0") is None
    assert net.allocations() == []
    assert net.cache_entries() == []
    assert iptables_rules_mentioning("task-fail") == []


def test_delete_after_netns_is_gone(net: Net) -> None:
    rt = net.runtime(net.conflist())
    name, path = net.new_netns()
    rt.add("task-gone", path)
    netns.remove_netns(name)

    rt.delete("task-gone", path)

    assert netns.NetlinkLinks().link_info(None, host_veth_name("task-gone", "eth0")) is None
    assert net.allocations() == [] and net.cache_entries() == []
    assert iptables_rules_mentioning("task-gone") == []


def test_gc_releases_attachments_not_in_the_valid_list(net: Net) -> None:
    rt = net.runtime(net.conflist())
    _, keep_path = net.new_netns()
    _, stale_path = net.new_netns()
    keep = rt.add("task-keep", keep_path)
    rt.add("task-stale", stale_path)

    removed = rt.gc([("task-keep", "eth0")])

    assert [e.container_id for e in removed] == ["task-stale"]
    assert net.allocations() == [ipv4(keep)]
    assert net.cache_entries() == [f"{net.network}-task-keep-eth0"]
    rt.delete("task-keep", keep_path)


def test_version_reports_each_plugin(net: Net) -> None:
    versions = net.runtime(net.conflist()).version()
    assert set(versions) == {"nstask-bridge", "portmap", "firewall"}
    assert all("1.0.0" in v["supportedVersions"] for v in versions.values())
    assert json.dumps(versions)  # plain data, printable by the CLI


def test_check_passes_then_notices_a_missing_interface(net: Net) -> None:
    # portmap 1.1.1 CHECK looks for ip6tables rules that an IPv4-only ADD never made
    # (containernetworking/plugins#819), so this list leaves portmap out.
    conflist = net.conflist()
    conflist["plugins"] = [p for p in conflist["plugins"] if p["type"] != "portmap"]
    rt = net.runtime(conflist)
    _, path = net.new_netns()
    rt.add("task-chk", path)
    try:
        rt.check("task-chk", path)
        netns.NetlinkLinks().delete_link("eth0", netns_path=path)
        with pytest.raises(CNIError) as info:
            rt.check("task-chk", path)
        assert info.value.plugin == "nstask-bridge"
    finally:
        rt.delete("task-chk", path)
