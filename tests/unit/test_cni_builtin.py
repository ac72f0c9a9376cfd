"""The built-in nstask-bridge plugin against a fake Links and a fake IPAM exec (no root)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from cni.builtin import BridgePlugin, LinkInfo, Route, VethPair, host_veth_name
from cni.errors import CNIError, InvalidNetworkConfig


class FakeLinks:
    def __init__(self) -> None:
        self.ops: list[tuple[Any, ...]] = []
        self.links: dict[tuple[str | None, str], LinkInfo] = {}
        self.fail_on: str | None = None

    def _maybe_fail(self, op: str) -> None:
        if self.fail_on == op:
            raise CNIError(999, f"{op} failed")

    def ensure_bridge(self, name: str, *, addresses: Any = (), mtu: int | None = None) -> LinkInfo:
        self.ops.append(("ensure_bridge", name, list(addresses), mtu))
        self._maybe_fail("ensure_bridge")
        info = LinkInfo(name, 3, "aa:aa:aa:aa:aa:aa", 1500, "bridge", None, True)
        self.links[(None, name)] = info
        return info

    def create_veth(
        self,
        host_name: str,
        peer_name: str,
        *,
        netns_path: str,
        peer_final_name: str = "eth0",
        master_index: int | None,
        mtu: int | None,
        addresses: Any = (),
        routes: Any = (),
    ) -> VethPair:
        self.ops.append(
            (
                "create_veth",
                host_name,
                netns_path,
                peer_final_name,
                master_index,
                list(addresses),
                list(routes),
            )
        )
        self._maybe_fail("create_veth")  # as NetlinkLinks: a failure leaves nothing
        self.links[(None, host_name)] = LinkInfo(
            host_name, 9, "bb:bb:bb:bb:bb:bb", 1500, "veth", 3, True
        )
        self.links[(netns_path, peer_final_name)] = LinkInfo(
            peer_final_name, 2, "cc:cc:cc:cc:cc:cc", 1500, "veth", None, True
        )
        return VethPair(9, "bb:bb:bb:bb:bb:bb", "cc:cc:cc:cc:cc:cc")

    def delete_link(self, name: str) -> bool:
        self.ops.append(("delete_link", name))
        return self.links.pop((None, name), None) is not None

    def link_info(self, netns_path: str | None, name: str) -> LinkInfo | None:
        return self.links.get((netns_path, name))


class FakeIpam:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def run(
        self,
        path: str,
        env: dict[str, str],
        stdin: bytes,
        *,
        cancel: threading.Event | None = None,
    ) -> tuple[int, bytes, bytes]:
        conf = json.loads(stdin)
        self.calls.append((os.path.basename(path), env["CNI_COMMAND"], conf))
        if env["CNI_COMMAND"] == "ADD":
            result = {
                "cniVersion": "1.0.0",
                "ips": [{"address": "10.213.201.5/24", "gateway": "10.213.201.1"}],
                "routes": [{"dst": "169.254.170.2/32"}],
                "dns": {"nameservers": ["10.213.201.1"]},
            }
            return 0, json.dumps(result).encode(), b""
        return 0, b"", b""


@pytest.fixture
def cni_path(tmp_path: Path) -> str:
    (tmp_path / "host-local").write_text("#!/bin/sh\n")
    (tmp_path / "host-local").chmod(0o755)
    return str(tmp_path)


CONF = {
    "cniVersion": "1.0.0",
    "name": "tasknet",
    "type": "nstask-bridge",
    "bridge": "nstaskt1",
    "mtu": 1400,
    "ipam": {"type": "host-local", "subnet": "10.213.201.0/24"},
}


def env(cni_path: str, command: str = "ADD") -> dict[str, str]:
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "task1",
        "CNI_NETNS": "/run/netns/t",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "",
        "CNI_PATH": cni_path,
    }


def test_host_veth_name_is_stable_short_and_prefixed() -> None:
    name = host_veth_name("task1", "eth0")
    assert name == host_veth_name("task1", "eth0")
    assert name != host_veth_name("task1", "eth1") != host_veth_name("task2", "eth0")
    assert name.startswith("nstask") and len(name) == 14
    int(name[6:], 16)


def test_add_wires_the_netns_and_returns_a_1_0_result(cni_path: str) -> None:
    links, ipam = FakeLinks(), FakeIpam()
    result = BridgePlugin(links, exec=ipam).run("ADD", env(cni_path), CONF)
    assert result is not None
    host = host_veth_name("task1", "eth0")

    assert result["interfaces"] == [
        {"name": "nstaskt1", "mac": "aa:aa:aa:aa:aa:aa"},
        {"name": host, "mac": "bb:bb:bb:bb:bb:bb"},
        {"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "sandbox": "/run/netns/t"},
    ]
    assert result["ips"] == [
        {"address": "10.213.201.5/24", "gateway": "10.213.201.1", "interface": 2}
    ]
    assert result["routes"] == [
        {"dst": "0.0.0.0/0", "gw": "10.213.201.1"},
        {"dst": "169.254.170.2/32", "gw": "10.213.201.1"},
    ]
    assert result["dns"] == {"nameservers": ["10.213.201.1"]}
    # IPAM first, then the bridge with its gateway, then the pair with address and routes.
    assert links.ops[0] == ("ensure_bridge", "nstaskt1", ["10.213.201.1/24"], 1400)
    veth = links.ops[1]
    assert veth[:6] == ("create_veth", host, "/run/netns/t", "eth0", 3, ["10.213.201.5/24"])
    assert Route("0.0.0.0/0", "10.213.201.1", "eth0") in veth[6]
    assert ipam.calls[0][:2] == ("host-local", "ADD")
    assert ipam.calls[0][2]["ipam"]["subnet"] == "10.213.201.0/24"  # delegated full config


def test_not_gateway_means_no_bridge_address_and_no_default_route(cni_path: str) -> None:
    links = FakeLinks()
    result = BridgePlugin(links, exec=FakeIpam()).run(
        "ADD", env(cni_path), {**CONF, "isGateway": False}
    )
    assert result is not None
    assert links.ops[0] == ("ensure_bridge", "nstaskt1", [], 1400)
    assert {"dst": "0.0.0.0/0", "gw": "10.213.201.1"} not in result["routes"]


@pytest.mark.parametrize("step", ["ensure_bridge", "create_veth"])
def test_failure_after_ipam_add_releases_address(cni_path: str, step: str) -> None:
    links, ipam = FakeLinks(), FakeIpam()
    links.fail_on = step
    with pytest.raises(CNIError, match=f"{step} failed"):
        BridgePlugin(links, exec=ipam).run("ADD", env(cni_path), CONF)
    assert [c[1] for c in ipam.calls] == ["ADD", "DEL"]
    # No delete of the host-side name: it may be another container's link that made the
    # create fail, and create_veth removes what it made itself.
    assert not any(op[0] == "delete_link" for op in links.ops)
    assert (None, host_veth_name("task1", "eth0")) not in links.links


def test_del_releases_address_and_removes_veth_even_when_absent(cni_path: str) -> None:
    links, ipam = FakeLinks(), FakeIpam()
    e = env(cni_path, "DEL")
    e["CNI_NETNS"] = ""  # the netns is already gone
    assert BridgePlugin(links, exec=ipam).run("DEL", e, CONF) is None
    assert [c[1] for c in ipam.calls] == ["DEL"]
    assert links.ops == [("delete_link", host_veth_name("task1", "eth0"))]


def test_check_compares_with_prev_result(cni_path: str) -> None:
    links, ipam = FakeLinks(), FakeIpam()
    plugin = BridgePlugin(links, exec=ipam)
    result = plugin.run("ADD", env(cni_path), CONF)
    plugin.run("CHECK", env(cni_path, "CHECK"), {**CONF, "prevResult": result})
    assert ipam.calls[-1][1] == "CHECK"
    links.links[("/run/netns/t", "eth0")] = LinkInfo(
        "eth0", 2, "dd:dd:dd:dd:dd:dd", 1500, "veth", None, True
    )
    with pytest.raises(CNIError, match="mac is dd:dd"):
        plugin.run("CHECK", env(cni_path, "CHECK"), {**CONF, "prevResult": result})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ipam": {}}, "ipam.type"),
        ({"mtu": 10}, "mtu"),
        ({"ipMasq": True}, "no NAT"),
        ({"bridge": "x" * 16}, "bridge"),
    ],
)
def test_bad_config_is_code_7(cni_path: str, change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidNetworkConfig, match=message):
        BridgePlugin(FakeLinks(), exec=FakeIpam()).run("ADD", env(cni_path), {**CONF, **change})


def test_version_lists_supported_versions(cni_path: str) -> None:
    out = BridgePlugin(FakeLinks(), exec=FakeIpam()).run("VERSION", {}, {"cniVersion": "1.0.0"})
    assert out is not None and "1.0.0" in out["supportedVersions"]
