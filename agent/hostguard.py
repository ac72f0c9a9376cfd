"""Keep tasks away from the host's loopback services (the bug class of CVE-2020-8558).

Debian's `portmap` plugin sets `net.ipv4.conf.<bridge>.route_localnet=1` on the task bridge
when it publishes a port, so that the port answers on 127.0.0.1 too, and never sets it back.
With that bit on, the host routes packets that arrive on the bridge for 127.0.0.0/8 to its own
loopback services, and a task with CAP_NET_RAW (a default capability) can talk to anything
bound to 127.0.0.1 (containerd's listeners, the agent's API, a developer's database).

Two measures, as kube-proxy and the ECS agent take them:
- an INPUT guard per bridge: packets from the bridge to 127.0.0.0/8 are dropped unless
  conntrack says they were DNATed there (a published port, an endpoint the agent DNATs to
  loopback) or belong to a connection that exists (RELATED, ESTABLISHED);
- route_localnet back to 0 once no attachment on the bridge publishes a port.

This module is the only place that runs iptables or writes that sysctl. The rules live in a
chain of our own, `NSTASK-LOCAL-<bridge>`, jumped to from filter INPUT; no other chain or rule
is touched. iptables is always called with `-w` (portmap and firewall take the same lock).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent.errors import NetworkError

__all__ = [
    "CHAIN_PREFIX",
    "bridge_of",
    "chain_name",
    "install",
    "present",
    "remove",
    "route_localnet",
    "set_route_localnet",
]

CHAIN_PREFIX = "NSTASK-LOCAL-"
MAX_CHAIN = 28  # iptables' chain name limit (XT_EXTENSION_MAXNAMELEN - 1)
LOOPBACK = "127.0.0.0/8"
_SYSCTL = "/proc/sys/net/ipv4/conf/{}/route_localnet"


def chain_name(bridge: str) -> str:
    """The guard chain of `bridge`; an interface name has at most 15 characters, so it fits."""
    name = CHAIN_PREFIX + bridge
    if not bridge or len(name) > MAX_CHAIN:
        raise NetworkError(f"bridge {bridge!r}: no guard chain name fits iptables' 28 characters")
    return name


def bridge_of(chain: str) -> str:
    return chain.removeprefix(CHAIN_PREFIX)


def _jump(bridge: str) -> list[str]:
    return [
        "-i",
        bridge,
        "-d",
        LOOPBACK,
        "-m",
        "comment",
        "--comment",
        f"nstask: loopback guard of {bridge}",
        "-j",
        chain_name(bridge),
    ]


def _rules(bridge: str) -> str:
    chain = chain_name(bridge)
    return (
        "*filter\n"
        f":{chain} - [0:0]\n"
        f"-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j RETURN\n"
        f'-A {chain} -m comment --comment "nstask: tasks do not reach host loopback" -j DROP\n'
        "COMMIT\n"
    )


def _iptables(*args: str, input: str | None = None, tool: str = "iptables") -> int:
    try:
        proc = subprocess.run(
            [tool, "-w", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except FileNotFoundError as exc:
        raise NetworkError(f"{tool} is not installed (Debian package iptables)") from exc
    except subprocess.TimeoutExpired as exc:
        raise NetworkError(f"{tool} {' '.join(args)}: no answer in 60 s (xtables lock?)") from exc
    if proc.returncode not in (0, 1):
        raise NetworkError(
            f"{tool} {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
        )
    if proc.returncode == 1 and tool == "iptables-restore":
        raise NetworkError(f"iptables-restore of the loopback guard: {proc.stderr.strip()}")
    return proc.returncode


def present(bridge: str) -> bool:
    """Whether the guard chain of `bridge` exists (with or without its INPUT jump)."""
    return _iptables("-t", "filter", "-S", chain_name(bridge)) == 0


def install(bridge: str) -> None:
    """Create or refresh the guard of `bridge` (idempotent; the interface need not exist yet).

    The chain is (re)written in one iptables-restore transaction, so an existing guard never
    stands empty; the INPUT jump goes first in INPUT, added once.
    """
    _iptables("--noflush", input=_rules(bridge), tool="iptables-restore")
    if _iptables("-t", "filter", "-C", "INPUT", *_jump(bridge)) != 0:
        _iptables("-t", "filter", "-I", "INPUT", "1", *_jump(bridge))


def remove(bridge: str) -> bool:
    """Remove the INPUT jump(s) and the chain of `bridge`; False when there was none.

    No chain means no jump: iptables refuses a jump to a missing chain and -X of a used one.
    """
    if not present(bridge):
        return False
    for _ in range(16):  # one jump, unless two installs raced each other
        if _iptables("-t", "filter", "-D", "INPUT", *_jump(bridge)) != 0:
            break
    _iptables("-t", "filter", "-F", chain_name(bridge))
    if _iptables("-t", "filter", "-X", chain_name(bridge)) != 0:
        raise NetworkError(f"cannot delete chain {chain_name(bridge)}: a rule still jumps to it")
    return True


def route_localnet(bridge: str) -> bool | None:
    """The bridge's route_localnet, or None when the interface does not exist."""
    try:
        return Path(_SYSCTL.format(bridge)).read_text().strip() == "1"
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise NetworkError(f"cannot read route_localnet of {bridge}: {exc.strerror}") from exc


def set_route_localnet(bridge: str, on: bool) -> bool:
    """Set the bridge's route_localnet; False when the interface does not exist."""
    try:
        Path(_SYSCTL.format(bridge)).write_text("1\n" if on else "0\n")
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise NetworkError(f"cannot set route_localnet of {bridge}: {exc.strerror}") from exc
    return True
