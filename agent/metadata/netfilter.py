"""The iptables rules that make 169.254.170.2:80 reach this agent, one set per bridge.

ECS DNATs 169.254.170.2:80 to 127.0.0.1:51679 and turns route_localnet on, which opens the
host's loopback to tasks unless guarded (agent.hostguard). nstask needs neither: it DNATs to
the bridge's own gateway address, where the agent's metadata listener is bound, so nothing
of the host's loopback is involved and every agent (bridge) has its own target:

  nat PREROUTING  -i <bridge> -d 169.254.170.2/32 -p tcp --dport 80 -j NSTASK-MD-<bridge>
      NSTASK-MD-<bridge>:  -j DNAT --to-destination <gateway>:<metadata port>
  filter INPUT    -d <gateway>/32 -p tcp --dport <metadata port> -j NSTASK-MDIN-<bridge>
      NSTASK-MDIN-<bridge>: -i lo -j RETURN            (the host itself; host-mode tasks)
                            -i <bridge> + conntrack DNAT to it from 169.254.170.2 -j RETURN
                            -j DROP                    (direct hits, other agents' bridges)
  and, only with metadata_host_mode (one agent per host):
  nat OUTPUT      -d 169.254.170.2/32 -p tcp --dport 80 -j NSTASK-MDH-<bridge>
      NSTASK-MDH-<bridge>: -j DNAT --to-destination <gateway>:<metadata port>

Each chain is rewritten in one iptables-restore transaction (never seen half-written); the
jumps are added once. The chains are named by the bridge, so a restarted agent finds and
refreshes them, and `nstask gc` removes those of a bridge that is gone. iptables is called
with `-w`, as the CNI plugins and agent.hostguard call it.
"""

from __future__ import annotations

import subprocess

from agent.errors import NetworkError

__all__ = ["ENDPOINT", "chains", "install", "present", "remove"]

ENDPOINT = "169.254.170.2"
ENDPOINT_PORT = 80
MAX_CHAIN = 28
NAT_PREFIX = "NSTASK-MD-"
INPUT_PREFIX = "NSTASK-MDIN-"
HOST_PREFIX = "NSTASK-MDH-"


def _chain(prefix: str, bridge: str) -> str:
    name = prefix + bridge
    if not bridge or len(name) > MAX_CHAIN:
        raise NetworkError(f"bridge {bridge!r}: no metadata chain name fits 28 characters")
    return name


def chains(bridge: str) -> dict[str, tuple[str, str]]:
    """role -> (table, chain) of the bridge's chains."""
    return {
        "nat": ("nat", _chain(NAT_PREFIX, bridge)),
        "input": ("filter", _chain(INPUT_PREFIX, bridge)),
        "host": ("nat", _chain(HOST_PREFIX, bridge)),
    }


def _run(*args: str, input: str | None = None, tool: str = "iptables") -> int:
    try:
        proc = subprocess.run(
            [tool, "-w", *args], input=input, capture_output=True, text=True, timeout=60
        )
    except FileNotFoundError as exc:
        raise NetworkError(f"{tool} is not installed (Debian package iptables)") from exc
    except subprocess.TimeoutExpired as exc:
        raise NetworkError(f"{tool} {' '.join(args)}: no answer in 60 s (xtables lock?)") from exc
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and tool == "iptables-restore"):
        raise NetworkError(
            f"{tool} {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
        )
    return proc.returncode


def _comment(bridge: str) -> list[str]:
    return ["-m", "comment", "--comment", f"nstask: metadata endpoint of {bridge}"]


def _jumps(bridge: str, gateway: str, port: int) -> dict[str, tuple[str, str, list[str]]]:
    """role -> (table, parent chain, the jump's match and target)."""
    c = chains(bridge)
    dst = ["-d", f"{ENDPOINT}/32", "-p", "tcp", "--dport", str(ENDPOINT_PORT)]
    return {
        "nat": ("nat", "PREROUTING", ["-i", bridge, *dst, *_comment(bridge), "-j", c["nat"][1]]),
        "input": (
            "filter",
            "INPUT",
            [
                "-d",
                f"{gateway}/32",
                "-p",
                "tcp",
                "--dport",
                str(port),
                *_comment(bridge),
                "-j",
                c["input"][1],
            ],
        ),
        "host": ("nat", "OUTPUT", [*dst, *_comment(bridge), "-j", c["host"][1]]),
    }


def _rules(bridge: str, gateway: str, port: int, *, host_mode: bool) -> tuple[str, str]:
    """(nat, filter) iptables-restore input for the bridge's chains."""
    c = chains(bridge)
    target = f"-j DNAT --to-destination {gateway}:{port}"
    nat = ["*nat", f":{c['nat'][1]} - [0:0]", f"-A {c['nat'][1]} -p tcp {target}"]
    if host_mode:
        nat += [f":{c['host'][1]} - [0:0]", f"-A {c['host'][1]} -p tcp {target}"]
    nat.append("COMMIT")
    inp = c["input"][1]
    filt = [
        "*filter",
        f":{inp} - [0:0]",
        f"-A {inp} -i lo -j RETURN",
        f"-A {inp} -i {bridge} -m conntrack --ctstate DNAT --ctorigdst {ENDPOINT}/32 -j RETURN",
        f'-A {inp} -m comment --comment "nstask: only through {ENDPOINT}" -j DROP',
        "COMMIT",
    ]
    return "\n".join(nat) + "\n", "\n".join(filt) + "\n"


def present(bridge: str) -> list[str]:
    """The bridge's metadata chains that exist."""
    return [
        chain for table, chain in chains(bridge).values() if _run("-t", table, "-S", chain) == 0
    ]


def install(bridge: str, gateway: str, port: int, *, host_mode: bool = False) -> None:
    """Create or refresh the bridge's chains and jumps (idempotent; the bridge need not
    exist yet). Without host_mode, a host chain left by an earlier run is removed."""
    nat, filt = _rules(bridge, gateway, port, host_mode=host_mode)
    _run("--noflush", input=nat, tool="iptables-restore")
    _run("--noflush", input=filt, tool="iptables-restore")
    jumps = _jumps(bridge, gateway, port)
    roles = ["nat", "input", *(["host"] if host_mode else [])]
    for role in roles:
        table, parent, spec = jumps[role]
        if _run("-t", table, "-C", parent, *spec) == 0:
            continue
        # An earlier run's jump (another gateway or port): replaced, not left beside it.
        for words in _jump_lines(table, parent, chains(bridge)[role][1]):
            _run("-t", table, "-D", parent, *words)
        _run("-t", table, "-I", parent, "1", *spec)
    if not host_mode:
        _remove_chain(*chains(bridge)["host"], parent="OUTPUT")


def _jump_lines(table: str, parent: str, chain: str) -> list[list[str]]:
    """The rules of `parent` that jump to `chain`, as argument lists for -D."""
    import shlex

    out = subprocess.run(
        ["iptables", "-w", "-t", table, "-S", parent], capture_output=True, text=True, timeout=60
    ).stdout
    found = []
    for line in out.splitlines():
        words = shlex.split(line)
        if words[:2] == ["-A", parent] and words[-2:] == ["-j", chain]:
            found.append(words[2:])
    return found


def _remove_chain(table: str, chain: str, *, parent: str) -> bool:
    if _run("-t", table, "-S", chain) != 0:
        return False
    for words in _jump_lines(table, parent, chain):
        _run("-t", table, "-D", parent, *words)
    _run("-t", table, "-F", chain)
    if _run("-t", table, "-X", chain) != 0:
        raise NetworkError(f"cannot delete chain {chain}: a rule still jumps to it")
    return True


def remove(bridge: str) -> list[str]:
    """Remove the bridge's jumps and chains; returns the chains removed."""
    parents = {"nat": "PREROUTING", "input": "INPUT", "host": "OUTPUT"}
    return [
        chain
        for role, (table, chain) in chains(bridge).items()
        if _remove_chain(table, chain, parent=parents[role])
    ]


def bridge_of(chain: str) -> str | None:
    for prefix in (INPUT_PREFIX, HOST_PREFIX, NAT_PREFIX):
        if chain.startswith(prefix):
            return chain.removeprefix(prefix)
    return None
