"""The task network: a named netns per task, wired by a CNI list run through the cni package.

The default list is awsvpc-like: nstask's built-in in-process bridge plugin (veth into the
task's netns as eth0, on bridge `nstask0`, addresses from the `host-local` IPAM binary), then
Debian's `portmap` and `firewall` plugins. A user can name any other conflist instead.
Blocking work (netlink, plugin processes, the CNI locks) runs in worker threads; attaches of
different tasks run in parallel (cni.lock). Cancelling an `attach` kills the plugin running.

Where the list publishes ports (portmap), the bridge gets the loopback guard of
agent.hostguard before the first ADD, and route_localnet (which portmap turns on) is put back
to 0 after a DEL once no cached attachment of the network publishes a port. The guard goes
with the bridge: at agent exit with the bridge, or by `nstask gc` when the bridge is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from agent import faults, hostguard, netns
from agent.config import AgentConfig
from cni.builtin import BridgePlugin
from cni.cache import CacheEntry
from cni.invoke import SubprocessExec
from cni.runtime import CNIRuntime

BUILTIN_TYPE = "nstask-bridge"
# Bridge plugins whose host interface portmap turns route_localnet on for, and their default.
_BRIDGE_TYPES = {BUILTIN_TYPE: "nstask0", "bridge": "cni0"}

log = structlog.get_logger("nstask.network")


def _socket(protocol: str) -> socket.socket:
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    return socket.socket(socket.AF_INET, kind)


def host_port_free(port: int, protocol: str) -> bool:
    """Whether a host process could bind the port (portmap's DNAT would shadow it)."""
    with _socket(protocol) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_host_port(protocol: str) -> int:
    """A port the kernel considers free now, from its ephemeral range (as Docker picks)."""
    with _socket(protocol) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def default_conflist(config: AgentConfig) -> dict[str, Any]:
    plugins: list[dict[str, Any]] = [
        {
            "type": BUILTIN_TYPE,
            "bridge": config.bridge,
            "isGateway": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": config.subnet}]],
                # The metadata endpoint by its own /32 via the gateway, as ECS routes it
                # (agent.metadata.netfilter DNATs it on the bridge).
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "169.254.170.2/32"}],
                "dataDir": str(config.ipam_data_dir),
            },
        }
    ]
    for name in config.chained_plugins:
        if name == "portmap":
            plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
        else:
            plugins.append({"type": name})
    return {"cniVersion": "1.0.0", "name": config.network_name, "plugins": plugins}


def guarded_bridges(conflist: Mapping[str, Any]) -> tuple[str, ...]:
    """The bridges a list needs the loopback guard on: those of its bridge plugins, when the
    list also runs portmap (the plugin that turns route_localnet on). A user's conflist names
    its own bridge; that one is guarded the same way."""
    plugins = [p for p in conflist.get("plugins") or [] if isinstance(p, Mapping)]
    if not any(p.get("type") == "portmap" for p in plugins):
        return ()
    out: list[str] = []
    for p in plugins:
        default = _BRIDGE_TYPES.get(str(p.get("type")))
        if default is not None:
            name = p.get("bridge", default)
            if isinstance(name, str) and name and name not in out:
                out.append(name)
    return tuple(out)


def _publishes_ports(capability_args: Mapping[str, Any]) -> bool:
    return bool(capability_args.get("portMappings"))


class TaskNetwork:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        if config.conflist_file is not None:
            conflist: Any = json.loads(config.conflist_file.read_text())
        else:
            conflist = default_conflist(config)
        plugin_exec = SubprocessExec()
        self.runtime = CNIRuntime(
            conflist=conflist,
            cache_dir=str(config.cni_cache_dir),
            cni_path=list(config.cni_path),
            lock_path=str(config.cni_lock),
            exec=plugin_exec,
            builtins={BUILTIN_TYPE: BridgePlugin(netns.NetlinkLinks(), exec=plugin_exec)},
        )

        # Fault points (crash tests) are a task's: an attach for the warm pool passes them by.
        self._quiet = threading.local()
        self.runtime.after_plugin = lambda plugin: (
            None if getattr(self._quiet, "on", False) else faults.point(f"cni.{plugin}")
        )
        self.bridges = guarded_bridges(conflist if isinstance(conflist, Mapping) else {})
        # Guards this agent installed (a set, so an attach runs iptables only the first time),
        # and attaches under way: a DEL must not put route_localnet back to 0 while an ADD with
        # ports runs (its cache entry is written only when it has finished), nor gc remove a
        # guard whose bridge the first ADD is about to create.
        self._lock = threading.Lock()
        self._guarded: set[str] = set()
        self._attaching = 0
        self._attaching_ports = 0

    @property
    def name(self) -> str:
        return self.runtime.network

    async def create_netns(self, name: str) -> str:
        return await asyncio.to_thread(netns.create_netns, name)

    async def remove_netns(self, name: str) -> None:
        await asyncio.to_thread(netns.remove_netns, name)

    async def attach(
        self,
        task_id: str,
        netns_path: str,
        *,
        port_mappings: Sequence[dict[str, Any]] = (),
        fault_points: bool = True,
    ) -> str | None:
        """CNI ADD for the task; returns its IPv4 address (without prefix length).

        Cancelling the awaiting task kills the plugin process that runs (its process group),
        stops the chain and re-raises CancelledError once the worker thread has let go
        (within about 0.1 s). What was added stays in the result cache: the caller's DEL
        (the task's teardown) removes it.
        """
        caps = {"portMappings": list(port_mappings)} if port_mappings else {}
        cancel = threading.Event()
        work = asyncio.ensure_future(
            asyncio.to_thread(self._add, task_id, netns_path, caps, cancel, fault_points)
        )
        try:
            result = await asyncio.shield(work)
        except asyncio.CancelledError:
            cancel.set()
            # Wait for the thread, so no plugin of this ADD runs once we have returned; a
            # builtin plugin or a netlink call in progress finishes first (milliseconds).
            with contextlib.suppress(BaseException):
                await asyncio.wait({work}, timeout=10)
            if work.done() and not work.cancelled():
                work.exception()  # retrieved: PluginCancelled is the expected outcome
            raise
        for ip in result.get("ips", []):
            addr = str(ip.get("address", ""))
            if "." in addr:
                return addr.split("/", 1)[0]
        return None

    def _add(
        self,
        task_id: str,
        netns_path: str,
        caps: dict[str, Any],
        cancel: threading.Event | None = None,
        fault_points: bool = True,
    ) -> dict[str, Any]:
        self._quiet.on = not fault_points
        with self._lock:
            self._attaching += 1
            self._attaching_ports += bool(caps)
        try:
            with self._lock:
                # Before the first ADD that can turn route_localnet on.
                for bridge in self.bridges:
                    if bridge not in self._guarded:
                        hostguard.install(bridge)
                        self._guarded.add(bridge)
            return self.runtime.add(
                task_id,
                netns_path,
                "eth0",
                args={"IgnoreUnknown": "1"},
                capability_args=caps,
                cancel=cancel,
            )
        finally:
            with self._lock:
                self._attaching -= 1
                self._attaching_ports -= bool(caps)

    def settle_route_localnet(self) -> list[str]:
        """Put route_localnet back to 0 on each guarded bridge when no cached attachment of the
        network publishes a port and no ADD is under way. Worked out from the CNI result cache
        (on disk), so a restarted agent gets it right. Returns the bridges set back."""
        with self._lock:
            if self._attaching_ports:
                return []
            if any(_publishes_ports(e.capability_args) for e in self._entries()):
                return []
            out = []
            for bridge in self.bridges:
                if hostguard.route_localnet(bridge):
                    hostguard.set_route_localnet(bridge, False)
                    out.append(bridge)
            return out

    def _entries(self) -> list[CacheEntry]:
        return self.runtime.cache.entries(self.name)

    def stale_guards(self) -> list[str]:
        """Guard chains of our bridges whose bridge is gone (an agent that died after its
        bridge went, or a bridge someone deleted), for `nstask gc` and a later agent."""
        links = netns.NetlinkLinks()
        return [
            hostguard.chain_name(b)
            for b in self.bridges
            if links.link_info(None, b) is None and hostguard.present(b)
        ]

    def remove_stale_guard(self, chain: str) -> bool:
        """Remove the guard `chain` if its bridge is (still) gone and no ADD is under way."""
        bridge = hostguard.bridge_of(chain)
        if bridge not in self.bridges:
            return False
        with self._lock:
            if self._attaching or netns.NetlinkLinks().link_info(None, bridge) is not None:
                return False
            self._guarded.discard(bridge)
            return hostguard.remove(bridge)

    def _remove_guard(self, bridge: str) -> None:
        with self._lock:
            if bridge in self.bridges and not self._attaching:
                self._guarded.discard(bridge)
                if hostguard.remove(bridge):
                    log.info("loopback_guard_removed", bridge=bridge)

    async def remove_bridge_if_unused(self) -> bool:
        """On agent exit: remove our bridge when no task is attached to it (tasks that keep
        running keep it), so a host with no tasks holds nothing of nstask's; its loopback guard
        goes with it. A user's conflist names a bridge that is not ours to remove: its guard
        goes when no attachment of the network is left in the CNI cache."""
        links = netns.NetlinkLinks()

        def remove() -> bool:
            if self.config.conflist_file is not None:
                if not self._entries():
                    for bridge in self.bridges:
                        self._remove_guard(bridge)
                return False
            bridge = self.config.bridge
            if links.link_info(None, bridge) is None:
                self._remove_guard(bridge)
                return False
            if links.list_links(master=bridge):
                return False
            removed = links.delete_link(bridge)
            if removed or links.link_info(None, bridge) is None:
                self._remove_guard(bridge)
            return removed

        return await asyncio.to_thread(remove)

    async def detach(self, task_id: str, netns_path: str | None, *, ifname: str = "eth0") -> None:
        """CNI DEL in reverse with the cached result, also when the netns is already gone."""
        await asyncio.to_thread(
            self.runtime.delete, task_id, netns_path, ifname, args={"IgnoreUnknown": "1"}
        )
        reset = await asyncio.to_thread(self.settle_route_localnet)
        if reset:
            log.info("route_localnet_reset", bridges=reset, note="no task publishes a port")
