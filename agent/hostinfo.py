"""What `nstask version`, `nstask info` and `nstask info --check` report about this host.

Plain facts read from the host (files under /proc and /sys, `runc --version`, `iptables
--version`, dpkg) and one gRPC Version call to containerd; no agent is needed. Each check of
`info --check` names what is missing or wrong and the command that fixes it.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import AgentConfig

# The CNI binaries the built-in network runs: host-local for addresses, the chained plugins.
REQUIRED_PLUGINS = ("host-local", "loopback")
SECCOMP_PROFILE = Path("/usr/share/containers/seccomp.json")
APT = "apt-get install -y"


@dataclass(frozen=True)
class Problem:
    what: str
    fix: str

    def to_json(self) -> dict[str, str]:
        return {"problem": self.what, "fix": self.fix}


def _run(argv: list[str], timeout: float = 5) -> str | None:
    """The command's stdout, or None when it is missing or fails."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def containerd_version(address: str, timeout: float = 5) -> tuple[str | None, str]:
    """(server version, "") or (None, why not) from containerd's Version service."""
    import asyncio

    from agent.containerd import Containerd
    from agent.errors import NstaskError

    async def ask() -> str:
        client = Containerd(address=address, namespace="nstask")
        try:
            ver = await asyncio.wait_for(client.version(), timeout)
            return str(ver.version)
        finally:
            await client.close()

    if not os.path.exists(address):
        return None, f"no socket at {address}"
    try:
        return asyncio.run(ask()), ""
    except NstaskError as e:
        return None, e.message
    except (TimeoutError, OSError) as e:
        return None, str(e) or type(e).__name__


def runc_version() -> str | None:
    out = _run(["runc", "--version"])
    if not out:
        return None
    first = out.splitlines()[0]
    return first.removeprefix("runc version ").strip()


def package_version(name: str) -> str | None:
    out = _run(["dpkg-query", "-W", "-f", "${Version}", name])
    return out.strip() or None if out is not None else None


def cni_plugins(cni_path: tuple[str, ...]) -> dict[str, str]:
    """Plugin name -> its path, the first found along cni_path (as CNI_PATH is searched)."""
    found: dict[str, str] = {}
    for d in cni_path:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            path = os.path.join(d, name)
            if name not in found and os.path.isfile(path) and os.access(path, os.X_OK):
                found[name] = path
    return found


def cni_version(plugins: dict[str, str]) -> str | None:
    """The plugins' own version (`CNI bridge plugin v1.1.1`), else the Debian package's."""
    for name in ("bridge", "host-local", "loopback"):
        if name in plugins:
            try:
                out = subprocess.run(
                    [plugins[name]], capture_output=True, text=True, timeout=5, env={}
                )
            except (OSError, subprocess.TimeoutExpired):
                continue
            words = (out.stdout + out.stderr).split()
            for w in words:
                if w.startswith("v") and w[1:2].isdigit():
                    return w.removeprefix("v")
            break
    return package_version("containernetworking-plugins")


def versions(config: AgentConfig, nstask_version: str) -> dict[str, Any]:
    ctr, why = containerd_version(config.containerd_address)
    return {
        "nstask": nstask_version,
        "containerd": ctr,
        **({"containerdError": why} if ctr is None else {}),
        "runc": runc_version(),
        "cniPlugins": cni_version(cni_plugins(config.cni_path)),
        "python": platform.python_version(),
    }


def cgroup_info() -> dict[str, Any]:
    """cgroup version (1, 2, or 1 with the unified hierarchy beside it) and the controllers."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        return {
            "version": "2",
            "controllers": (root / "cgroup.controllers").read_text().split(),
        }
    controllers: list[str] = []
    try:
        for line in Path("/proc/cgroups").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 4 and parts[3] == "1":
                controllers.append(parts[0])
    except OSError:
        pass
    version = "1 (hybrid)" if (root / "unified").is_dir() else "1"
    return {"version": version, "controllers": controllers}


def iptables_backend() -> tuple[str | None, str | None]:
    """(`iptables --version` text, backend nf_tables | legacy)."""
    out = _run(["iptables", "--version"])
    if not out:
        return None, None
    text = out.strip()
    backend = "nf_tables" if "nf_tables" in text else "legacy"
    return text, backend


def ip_forwarding() -> bool | None:
    try:
        return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    except OSError:
        return None


def info(config: AgentConfig) -> dict[str, Any]:
    ctr, why = containerd_version(config.containerd_address)
    ipt, backend = iptables_backend()
    plugins = cni_plugins(config.cni_path)
    return {
        "kernel": platform.release(),
        "os": _os_name(),
        "cgroup": cgroup_info(),
        "containerd": {
            "address": config.containerd_address,
            "namespace": config.namespace,
            "version": ctr,
            **({"error": why} if ctr is None else {}),
        },
        "snapshotter": config.snapshotter,
        "runtime": config.runtime,
        "runc": runc_version(),
        "cni": {"path": list(config.cni_path), "plugins": sorted(plugins)},
        "iptables": {"version": ipt, "backend": backend},
        "ipForwarding": ip_forwarding(),
        "bridge": config.bridge,
        "subnet": config.subnet,
        "stateDir": str(config.state_dir),
        "socket": str(config.socket),
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.partition("=")[2].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def check(config: AgentConfig, facts: dict[str, Any] | None = None) -> list[Problem]:
    """Each prerequisite that is missing or wrong, with the command that fixes it."""
    facts = facts if facts is not None else info(config)
    problems: list[Problem] = []
    ctr = facts["containerd"]
    if ctr["version"] is None:
        problems.append(
            Problem(
                f"containerd does not answer on {ctr['address']} ({ctr.get('error', '')})",
                "start it: `systemctl start containerd` (no systemd: `setsid containerd "
                f"--address {ctr['address']} &`, or `scripts/bootstrap.sh`); install it with "
                f"`{APT} containerd`",
            )
        )
    if shutil.which("runc") is None:
        problems.append(Problem("runc is not on PATH", f"{APT} runc"))
    plugins = set(facts["cni"]["plugins"])
    wanted = [*REQUIRED_PLUGINS, *config.chained_plugins] if config.conflist_file is None else []
    for name in wanted:
        if name not in plugins:
            where = ":".join(config.cni_path)
            problems.append(
                Problem(
                    f"CNI plugin {name!r} not found in {where}",
                    f"{APT} containernetworking-plugins",
                )
            )
    if "memory" not in facts["cgroup"]["controllers"]:
        problems.append(
            Problem(
                "the cgroup memory controller is not enabled (task memory limits need it)",
                "boot the kernel with `cgroup_enable=memory` (e.g. in GRUB_CMDLINE_LINUX of "
                "/etc/default/grub, then `update-grub` and reboot)",
            )
        )
    if facts["ipForwarding"] is False:
        problems.append(
            Problem(
                "IP forwarding is off (net.ipv4.ip_forward=0): tasks cannot reach beyond the host",
                "sysctl -w net.ipv4.ip_forward=1 (and `net.ipv4.ip_forward=1` in "
                "/etc/sysctl.d/99-nstask.conf to keep it)",
            )
        )
    if facts["iptables"]["version"] is None:
        problems.append(Problem("iptables is not installed", f"{APT} iptables"))
    if not SECCOMP_PROFILE.exists():
        problems.append(
            Problem(
                f"the default seccomp profile {SECCOMP_PROFILE} is missing",
                f"{APT} golang-github-containers-common",
            )
        )
    shim = config.shim_path
    if shim is None:
        from agent.config import default_shim_path

        shim = default_shim_path()
    if not os.access(shim, os.X_OK):
        problems.append(
            Problem(
                f"the logging shim {shim} is missing",
                "reinstall nstask (`make install`, or `scripts/bootstrap.sh`)",
            )
        )
    return problems
