"""The built-in, in-process plugin type `nstask-bridge`.

It does what the Fargate task network needs without a fork/exec: an idempotent bridge, a
veth pair whose peer becomes `eth0` in the task's netns, addresses and routes. Address
allocation is delegated to an IPAM binary (`host-local`) through the same exec seam as any
plugin, so allocations live where `host-local` keeps them and leak checks see them.

Link work goes through the `Links` protocol (implemented by agent.netns.NetlinkLinks), so
this package never imports pyroute2 and the plugin is unit-testable with a fake.

Config: {"type": "nstask-bridge", "bridge": "nstask0", "isGateway": true, "mtu": 1500,
         "ipam": {"type": "host-local", "ranges" | "subnet": ..., "routes": [...], "dataDir": ...}}
No NAT: there is no ipMasq; traffic leaves the bridge unmodified.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from cni.errors import (
    CODE_RUNTIME_FAILURE,
    CNIError,
    InvalidNetworkConfig,
    invalid_environment,
)
from cni.invoke import PluginExec, SubprocessExec, find_plugin, invoke

__all__ = [
    "PLUGIN_TYPE",
    "BridgePlugin",
    "LinkInfo",
    "Links",
    "NstaskBridge",
    "Route",
    "VethPair",
    "host_veth_name",
]

PLUGIN_TYPE = "nstask-bridge"
DEFAULT_BRIDGE = "nstask0"
SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
HOST_VETH_PREFIX = "nstask"


@dataclass(frozen=True)
class LinkInfo:
    """What `ip link show` tells about one link."""

    name: str
    index: int
    mac: str
    mtu: int
    kind: str
    master: int | None
    up: bool


class VethPair(NamedTuple):
    host_index: int
    host_mac: str
    peer_mac: str


class Route(NamedTuple):
    """A route in the netns: destination cidr, gateway (None: on-link), device."""

    dst: str
    gateway: str | None
    ifname: str


class Links(Protocol):
    """The link operations the plugin needs (ip-link/ip-address/ip-route, netns-aware)."""

    def ensure_bridge(
        self, name: str, *, addresses: Sequence[str] = (), mtu: int | None = None
    ) -> LinkInfo:
        """The bridge `name`, created if absent, up, with `mtu` and `addresses` on it."""
        ...

    def create_veth(
        self,
        host_name: str,
        peer_name: str,
        *,
        netns_path: str,
        peer_final_name: str = "eth0",
        master_index: int | None,
        mtu: int | None,
        addresses: Sequence[str] = (),
        routes: Sequence[Route] = (),
    ) -> VethPair:
        """The pair, the peer renamed `peer_final_name` in the netns with `addresses` and
        `routes`; on a failure, nothing of it is left."""
        ...

    def delete_link(self, name: str) -> bool: ...

    def link_info(self, netns_path: str | None, name: str) -> LinkInfo | None: ...


def host_veth_name(container_id: str, ifname: str) -> str:
    """`nstask` + 8 hex chars of a hash of (container id, ifname): stable, <= 15 chars.

    Stable so DEL finds the veth from the CNI arguments alone, even with no cached result.
    """
    digest = hashlib.sha256(f"{container_id}\0{ifname}".encode()).hexdigest()
    return f"{HOST_VETH_PREFIX}{digest[:8]}"


def _temp_peer_name(container_id: str, ifname: str) -> str:
    digest = hashlib.sha256(f"peer\0{container_id}\0{ifname}".encode()).hexdigest()
    return f"nstp{digest[:8]}"


class _Conf(NamedTuple):
    cni_version: str
    bridge: str
    is_gateway: bool
    mtu: int | None
    ipam_type: str


class BridgePlugin:
    """The plugin object: `run(command, env, config)` like a binary's main()."""

    def __init__(self, links: Links, *, exec: PluginExec | None = None) -> None:
        self.links = links
        self.exec: PluginExec = exec if exec is not None else SubprocessExec()

    def run(
        self, command: str, env: Mapping[str, str], config: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        if command == "VERSION":
            return {
                "cniVersion": config.get("cniVersion", "1.0.0"),
                "supportedVersions": SUPPORTED_VERSIONS,
            }
        if command in ("STATUS", "GC"):
            return None
        conf = _parse(config)
        if command == "ADD":
            return self._add(conf, env, config)
        if command == "DEL":
            self._del(env, config)
            return None
        if command == "CHECK":
            self._check(conf, env, config)
            return None
        raise invalid_environment(f"unknown CNI_COMMAND {command!r}")

    # -- ADD --------------------------------------------------------------------------

    def _add(
        self, conf: _Conf, env: Mapping[str, str], config: Mapping[str, Any]
    ) -> dict[str, Any]:
        """IPAM first, so that the links are made in one pass each: the bridge with its
        gateway address, then the veth pair with the address and routes in the netns."""
        cid, netns, ifname = _require(env, "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
        host = host_veth_name(cid, ifname)
        ipam = self._ipam("ADD", conf.ipam_type, env, config)
        try:
            ips = ipam.get("ips") or []
            if not ips:
                raise CNIError(CODE_RUNTIME_FAILURE, f"IPAM {conf.ipam_type} returned no address")
            gateways = []
            for ip in ips:
                iface = ipaddress.ip_interface(ip["address"])
                gateway = ip.get("gateway")
                if conf.is_gateway and gateway:
                    gateways.append(f"{gateway}/{iface.network.prefixlen}")
            bridge = self.links.ensure_bridge(conf.bridge, addresses=gateways, mtu=conf.mtu)
            routes = _routes(conf, ips, ipam.get("routes") or [], ifname)
            pair = self.links.create_veth(
                host,
                _temp_peer_name(cid, ifname),
                netns_path=netns,
                peer_final_name=ifname,
                master_index=bridge.index,
                mtu=conf.mtu,
                addresses=[ip["address"] for ip in ips],
                routes=routes,
            )
        except BaseException as exc:
            self._release(conf.ipam_type, env, config, exc)
            raise
        result_ips = []
        for ip in ips:
            entry = {"address": ip["address"], "interface": 2}
            if ip.get("gateway"):
                entry["gateway"] = ip["gateway"]
            result_ips.append(entry)
        return {
            "cniVersion": conf.cni_version,
            "interfaces": [
                {"name": conf.bridge, "mac": bridge.mac},
                {"name": host, "mac": pair.host_mac},
                {"name": ifname, "mac": pair.peer_mac, "sandbox": netns},
            ],
            "ips": result_ips,
            "routes": [_route_json(r) for r in routes],
            "dns": ipam.get("dns") or {},
        }

    def _release(
        self,
        ipam_type: str,
        env: Mapping[str, str],
        config: Mapping[str, Any],
        cause: BaseException,
    ) -> None:
        """After a failure past IPAM ADD: give the address back (create_veth has already
        removed whatever it made)."""
        try:
            self._ipam("DEL", ipam_type, env, config)
        except CNIError as err:
            cause.add_note(f"IPAM DEL during rollback failed: {err}")

    # -- DEL / CHECK ------------------------------------------------------------------

    def _del(self, env: Mapping[str, str], config: Mapping[str, Any]) -> None:
        """IPAM DEL always, then the host veth if present; a gone netns is fine.

        The veth is removed even when IPAM DEL fails, then the IPAM error is raised so the
        runtime keeps its cache entry and can retry.
        """
        cid, ifname = _require(env, "CNI_CONTAINERID", "CNI_IFNAME")
        ipam_type = _ipam_type(config)
        failure: CNIError | None = None
        try:
            self._ipam("DEL", ipam_type, env, config)
        except CNIError as err:
            failure = err
        self.links.delete_link(host_veth_name(cid, ifname))
        if failure is not None:
            raise failure

    def _check(self, conf: _Conf, env: Mapping[str, str], config: Mapping[str, Any]) -> None:
        cid, netns, ifname = _require(env, "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
        host = self.links.link_info(None, host_veth_name(cid, ifname))
        bridge = self.links.link_info(None, conf.bridge)
        if host is None or bridge is None or host.master != bridge.index:
            raise CNIError(
                CODE_RUNTIME_FAILURE, f"host veth of {cid}/{ifname} is not on {conf.bridge}"
            )
        peer = self.links.link_info(netns, ifname)
        if peer is None or not peer.up:
            raise CNIError(CODE_RUNTIME_FAILURE, f"{ifname} is missing or down in {netns}")
        want = _sandbox_mac(config.get("prevResult"), ifname)
        if want and want.lower() != peer.mac.lower():
            raise CNIError(CODE_RUNTIME_FAILURE, f"{ifname} mac is {peer.mac}, was {want}")
        self._ipam("CHECK", conf.ipam_type, env, config)

    # -- IPAM delegation --------------------------------------------------------------

    def _ipam(
        self, command: str, ipam_type: str, env: Mapping[str, str], config: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Run the IPAM binary with our CNI_* env and our config on stdin (delegation)."""
        cni_path = [p for p in env.get("CNI_PATH", "").split(":") if p]
        path = find_plugin(ipam_type, cni_path)
        child_env = dict(env)
        child_env["CNI_COMMAND"] = command
        try:
            result = invoke(self.exec, path, child_env, config, plugin=ipam_type)
        except CNIError as err:
            err.msg = f"IPAM {ipam_type} {command}: {err.msg}"
            raise
        if command == "ADD" and result is None:
            raise CNIError(CODE_RUNTIME_FAILURE, f"IPAM {ipam_type} ADD printed no result")
        return result or {}


NstaskBridge = BridgePlugin  # the plugin by its type name


def _parse(config: Mapping[str, Any]) -> _Conf:
    bridge = config.get("bridge", DEFAULT_BRIDGE)
    if not isinstance(bridge, str) or not 0 < len(bridge) <= 15:
        raise InvalidNetworkConfig(f"bridge: {bridge!r} must be an interface name (<= 15 chars)")
    is_gateway = config.get("isGateway", True)
    if not isinstance(is_gateway, bool):
        raise InvalidNetworkConfig("isGateway: must be true or false")
    mtu = config.get("mtu")
    if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool) or mtu < 68):
        raise InvalidNetworkConfig(f"mtu: {mtu!r} must be an integer >= 68")
    if config.get("ipMasq"):
        raise InvalidNetworkConfig("ipMasq: nstask-bridge does no NAT; remove ipMasq")
    return _Conf(
        cni_version=str(config.get("cniVersion", "1.0.0")),
        bridge=bridge,
        is_gateway=is_gateway,
        mtu=mtu,
        ipam_type=_ipam_type(config),
    )


def _ipam_type(config: Mapping[str, Any]) -> str:
    ipam = config.get("ipam")
    if not isinstance(ipam, Mapping) or not isinstance(ipam.get("type"), str) or not ipam["type"]:
        raise InvalidNetworkConfig("ipam.type: is required (e.g. host-local)")
    return str(ipam["type"])


def _require(env: Mapping[str, str], *keys: str) -> list[str]:
    missing = [k for k in keys if not env.get(k)]
    if missing:
        raise invalid_environment(f"missing {', '.join(missing)}")
    return [env[k] for k in keys]


def _routes(
    conf: _Conf, ips: Sequence[Mapping[str, Any]], ipam_routes: Sequence[Any], ifname: str
) -> list[Route]:
    """The default route via the gateway, then IPAM's routes (gw defaults to the gateway)."""
    gateway = next((ip.get("gateway") for ip in ips if ip.get("gateway")), None)
    routes: list[Route] = []
    if gateway and conf.is_gateway:
        routes.append(Route("0.0.0.0/0", str(gateway), ifname))
    for r in ipam_routes:
        dst = str(ipaddress.ip_network(r["dst"], strict=False))
        route = Route(dst, r.get("gw") or gateway, ifname)
        if route not in routes and not (dst == "0.0.0.0/0" and routes and routes[0].dst == dst):
            routes.append(route)
    return routes


def _route_json(route: Route) -> dict[str, str]:
    body = {"dst": route.dst}
    if route.gateway:
        body["gw"] = route.gateway
    return body


def _sandbox_mac(prev: Any, ifname: str) -> str:
    if not isinstance(prev, Mapping):
        return ""
    for iface in prev.get("interfaces") or []:
        if isinstance(iface, Mapping) and iface.get("name") == ifname and iface.get("sandbox"):
            return str(iface.get("mac", ""))
    return ""
