"""agent.netns against the real kernel: netns, bridge, veth, addresses, routes (root)."""

from __future__ import annotations

import os
import random
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agent import netns
from agent.errors import NetworkError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, links)"),
]


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def ns_name() -> Iterator[str]:
    name = f"nstask-t-{uuid.uuid4().hex[:10]}"
    yield name
    netns.remove_netns(name)
    assert not os.path.exists(f"/run/netns/{name}")


@pytest.fixture
def bridge() -> Iterator[str]:
    name = f"nstaskt{random.randint(10000, 99999)}"
    yield name
    netns.NetlinkLinks().delete_link(name)


@pytest.fixture
def links() -> netns.NetlinkLinks:
    return netns.NetlinkLinks()


def test_create_netns_is_idempotent_and_brings_lo_up(ns_name: str) -> None:
    path = netns.create_netns(ns_name)
    assert path == f"/run/netns/{ns_name}"
    assert netns.create_netns(ns_name) == path
    assert netns.netns_exists(ns_name)
    assert ns_name in netns.list_netns("nstask-t-")
    assert "state UNKNOWN" in ip("-n", ns_name, "link", "show", "lo")  # lo is up
    assert "127.0.0.1/8" in ip("-n", ns_name, "addr", "show", "lo")


def test_remove_netns_twice_is_fine(ns_name: str) -> None:
    netns.create_netns(ns_name)
    netns.remove_netns(ns_name)
    netns.remove_netns(ns_name)
    assert not netns.netns_exists(ns_name)
    assert ns_name not in netns.list_netns("nstask-t-")


def test_stale_mount_point_is_replaced(ns_name: str) -> None:
    os.makedirs("/run/netns", exist_ok=True)
    open(f"/run/netns/{ns_name}", "w").close()  # what a crash mid-create leaves
    assert not netns.netns_exists(ns_name)
    netns.create_netns(ns_name)
    assert netns.netns_exists(ns_name)


def test_bad_netns_name_is_refused() -> None:
    with pytest.raises(NetworkError):
        netns.netns_path("../etc")


def test_bridge_and_veth_into_netns(ns_name: str, bridge: str, links: netns.NetlinkLinks) -> None:
    path = netns.create_netns(ns_name)
    info = links.ensure_bridge(bridge, addresses=["10.213.251.1/24"], mtu=1400)
    assert links.ensure_bridge(bridge, addresses=["10.213.251.1/24"], mtu=1400) == info
    index = info.index
    host = netns.host_veth_name(ns_name, "eth0")
    default = netns.Route("0.0.0.0/0", "10.213.251.1", "eth0")
    args: dict[str, Any] = {
        "netns_path": path,
        "peer_final_name": "eth0",
        "master_index": index,
        "mtu": 1400,
        "addresses": ["10.213.251.7/24"],
        "routes": [default],
    }
    try:
        pair = links.create_veth(host, "nstpeer0", **args)
        assert links.create_veth(host, "nstpeer0", **args) == pair  # a repeat is success

        peer = links.link_info(path, "eth0")
        host_info = links.link_info(None, host)
        assert peer is not None and host_info is not None
        assert (peer.mac, peer.mtu, peer.up) == (pair.peer_mac, 1400, True)
        assert (host_info.index, host_info.master, host_info.kind) == (
            pair.host_index,
            index,
            "veth",
        )
        assert [link.name for link in links.list_links("nstask", master=bridge)] == [host]
        assert "default via 10.213.251.1 dev eth0" in ip("-n", ns_name, "route")
        assert "10.213.251.1/24" in ip("addr", "show", bridge)
        ping = subprocess.run(
            ["ip", "netns", "exec", ns_name, "busybox", "ping", "-c1", "-W2", "10.213.251.1"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        assert links.delete_link(host) in (True, False)
    assert links.link_info(None, host) is None
    assert links.delete_link(host) is False
    assert links.link_info(path, "eth0") is None  # deleting one end removes the pair


def test_the_bridge_keeps_its_mac_when_ports_come_and_go(
    bridge: str, links: netns.NetlinkLinks
) -> None:
    """Left to the kernel, a bridge takes its lowest port MAC: a task starting would change
    the gateway's MAC under every other task (stale ARP entries, traffic to the gateway and
    the metadata endpoint hanging). ensure_bridge pins it, also on a bridge made by others."""
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    port = f"{bridge[:11]}p"
    try:
        mac = links.ensure_bridge(bridge).mac
        subprocess.run(
            ["ip", "link", "add", port, "address", "02:00:00:00:00:01", "type", "veth"],
            check=True,
        )
        subprocess.run(["ip", "link", "set", port, "master", bridge, "up"], check=True)
        info = links.link_info(None, bridge)
        assert info is not None and info.mac == mac != "02:00:00:00:00:01"
        subprocess.run(["ip", "link", "del", port], check=True)
        info = links.link_info(None, bridge)
        assert info is not None and info.mac == mac
    finally:
        subprocess.run(["ip", "link", "del", port], capture_output=True, check=False)


def test_veth_name_taken_by_someone_else_is_refused(
    ns_name: str, bridge: str, links: netns.NetlinkLinks
) -> None:
    path = netns.create_netns(ns_name)
    links.ensure_bridge(bridge)
    with pytest.raises(NetworkError, match="not this container's veth"):
        links.create_veth(bridge, "nstpeer0", netns_path=path, master_index=None, mtu=None)
    assert links.link_info(path, "nstpeer0") is None
    assert links.link_info(None, bridge) is not None  # the other link is left alone


def test_errors_name_the_object_and_operation(ns_name: str, links: netns.NetlinkLinks) -> None:
    path = netns.create_netns(ns_name)
    with pytest.raises(NetworkError, match="nstask-t-absent: not a network namespace"):
        links.create_veth("nstaskzz9", "nstpeer9", netns_path="/run/netns/nstask-t-absent")
    assert links.link_info(None, "nstaskzz9") is None
    assert links.link_info(path, "eth9") is None
    assert links.link_info("/run/netns/nstask-t-absent", "eth0") is None
