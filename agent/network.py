"""The task network: a named netns per task, wired by a CNI list run through the cni package.

The default list is awsvpc-like: nstask's built-in in-process bridge plugin (veth into the
task's netns as eth0, on bridge `nstask0`, addresses from the `host-local` IPAM binary), then
Debian's `portmap` and `firewall` plugins. A user can name any other conflist instead.
Blocking work (netlink, plugin processes, the host-wide CNI lock) runs in worker threads.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Sequence
from typing import Any

from agent import faults, netns
from agent.config import AgentConfig
from cni.builtin import BridgePlugin
from cni.invoke import SubprocessExec
from cni.runtime import CNIRuntime

BUILTIN_TYPE = "nstask-bridge"


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
                "routes": [{"dst": "0.0.0.0/0"}],
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

        self.runtime.after_plugin = lambda plugin: faults.point(f"cni.{plugin}")

    @property
    def name(self) -> str:
        return self.runtime.network

    async def create_netns(self, name: str) -> str:
        return await asyncio.to_thread(netns.create_netns, name)

    async def remove_netns(self, name: str) -> None:
        await asyncio.to_thread(netns.remove_netns, name)

    async def attach(
        self, task_id: str, netns_path: str, *, port_mappings: Sequence[dict[str, Any]] = ()
    ) -> str | None:
        """CNI ADD for the task; returns its IPv4 address (without prefix length)."""
        caps = {"portMappings": list(port_mappings)} if port_mappings else {}
        result = await asyncio.to_thread(
            self.runtime.add,
            task_id,
            netns_path,
            "eth0",
            args={"IgnoreUnknown": "1"},
            capability_args=caps,
        )
        for ip in result.get("ips", []):
            addr = str(ip.get("address", ""))
            if "." in addr:
                return addr.split("/", 1)[0]
        return None

    async def remove_bridge_if_unused(self) -> bool:
        """On agent exit: remove our bridge when no task is attached to it (tasks that keep
        running keep it), so a host with no tasks holds nothing of nstask's."""
        if self.config.conflist_file is not None:
            return False
        links = netns.NetlinkLinks()

        def remove() -> bool:
            if links.link_info(None, self.config.bridge) is None:
                return False
            if links.list_links(master=self.config.bridge):
                return False
            return links.delete_link(self.config.bridge)

        return await asyncio.to_thread(remove)

    async def detach(self, task_id: str, netns_path: str | None, *, ifname: str = "eth0") -> None:
        """CNI DEL in reverse with the cached result, also when the netns is already gone."""
        await asyncio.to_thread(
            self.runtime.delete, task_id, netns_path, ifname, args={"IgnoreUnknown": "1"}
        )
