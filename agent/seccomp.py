"""The seccomp profile of a container: podman's default profile (or a user's), resolved for one
container on this host into the OCI `linux.seccomp` object runc loads.

The profile format is the one Docker and containers/common read: `defaultAction`,
`defaultErrnoRet`, either `architectures` or an `archMap` (per native architecture, the
architectures to list with it), and `syscalls` rules that hold only under conditions:
`includes` / `excludes` of capabilities (`caps`), native architectures (`arches`, in
libseccomp's names: amd64, arm64, ...) and a kernel version (`minKernel`). A rule applies when
it holds for the container: every capability of `includes.caps` is in its set and none of
`excludes.caps` is; the host's architecture is in `includes.arches` (if given) and not in
`excludes.arches`; the kernel is at least `includes.minKernel` and below `excludes.minKernel`.

Debian ships podman's profile in golang-github-containers-common. Profiles are read once per
agent and kept (keyed by the file's mtime and size, so an edited file is read again); a missing
default profile fails the container's start with the name of the package to install.
"""

from __future__ import annotations

import json
import os
import platform
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import InvalidInput, NstaskError

__all__ = ["DEFAULT_PROFILE", "PACKAGE", "Host", "default_profile", "load", "parse", "resolve"]

DEFAULT_PROFILE = Path("/usr/share/containers/seccomp.json")
PACKAGE = "golang-github-containers-common"

Profile = dict[str, Any]

# uname machine -> libseccomp's name for the native architecture (what `arches` conditions use).
_NATIVE = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "i386": "x86",
    "i686": "x86",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "s390x": "s390x",
    "ppc64le": "ppc64le",
    "ppc64": "ppc64",
    "riscv64": "riscv64",
    "mips64": "mips64",
    "loongarch64": "loong64",
}
# libseccomp native name -> the SCMP_ARCH_* constant an `archMap` entry is keyed by.
_SCMP_ARCH = {
    "amd64": "SCMP_ARCH_X86_64",
    "x86": "SCMP_ARCH_X86",
    "arm64": "SCMP_ARCH_AARCH64",
    "arm": "SCMP_ARCH_ARM",
    "s390x": "SCMP_ARCH_S390X",
    "ppc64le": "SCMP_ARCH_PPC64LE",
    "ppc64": "SCMP_ARCH_PPC64",
    "riscv64": "SCMP_ARCH_RISCV64",
    "mips64": "SCMP_ARCH_MIPS64",
    "loong64": "SCMP_ARCH_LOONGARCH64",
}


@dataclass(frozen=True)
class Host:
    """What a profile's conditions are checked against, besides the capabilities."""

    arch: str  # libseccomp's native name: amd64, arm64, ...
    kernel: tuple[int, ...]

    @classmethod
    def current(cls) -> Host:
        machine = platform.machine()
        return cls(arch=_NATIVE.get(machine, machine), kernel=_version(platform.release()))


def _version(text: str) -> tuple[int, ...]:
    """ "6.18.44-fc-v669" -> (6, 18, 44); "5.8" -> (5, 8)."""
    m = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(x) for x in m.group(0).split(".")) if m else ()


# -- reading ----------------------------------------------------------------------------------
_cache: dict[tuple[str, int, int], Profile] = {}


def default_profile(path: Path = DEFAULT_PROFILE) -> Profile:
    """The default profile, read once per agent. Missing: a host prerequisite, named."""
    if not path.exists():
        raise NstaskError(
            f"the default seccomp profile {path} is missing: install the Debian package "
            f"{PACKAGE} (scripts/bootstrap.sh does), or run the container with "
            'dockerSecurityOptions ["seccomp=unconfined"]',
            path=str(path),
            package=PACKAGE,
        )
    return load(path)


def load(path: Path) -> Profile:
    """Read and check a profile file; kept until the file changes."""
    try:
        st = os.stat(path)
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key in _cache:
            return _cache[key]
        text = Path(path).read_text()
    except OSError as e:
        raise InvalidInput(f"seccomp profile {path}: cannot be read: {e.strerror}") from None
    profile = parse(text, source=str(path))
    _cache[key] = profile
    return profile


def parse(text: str, *, source: str) -> Profile:
    """Check the parts of a profile that `resolve` reads; every problem names the place."""
    where = f"seccomp profile {source}"
    try:
        p = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInput(
            f"{where}: is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    if not isinstance(p, dict):
        raise InvalidInput(f"{where}: must be a JSON object")
    if not isinstance(p.get("defaultAction"), str):
        raise InvalidInput(f"{where}: defaultAction must be a string such as SCMP_ACT_ERRNO")
    if p.get("architectures") and p.get("archMap"):
        raise InvalidInput(f"{where}: give either architectures or archMap, not both")
    for key in ("architectures", "archMap", "syscalls", "flags"):
        if p.get(key) is not None and not isinstance(p[key], list):
            raise InvalidInput(f"{where}: {key} must be a list")
    for i, entry in enumerate(p.get("archMap") or ()):
        if not isinstance(entry, dict) or not isinstance(entry.get("architecture"), str):
            raise InvalidInput(f"{where}: archMap[{i}] needs an architecture")
    for i, rule in enumerate(p.get("syscalls") or ()):
        at = f"{where}: syscalls[{i}]"
        if not isinstance(rule, dict):
            raise InvalidInput(f"{at} must be an object")
        names = rule.get("names")
        name = rule.get("name")
        if names and name:
            raise InvalidInput(f"{at}: give either name or names, not both")
        if not names and not name:
            raise InvalidInput(f"{at}: needs names (a list of system call names)")
        if names and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise InvalidInput(f"{at}: names must be a list of strings")
        if not isinstance(rule.get("action"), str):
            raise InvalidInput(f"{at}: needs an action such as SCMP_ACT_ALLOW")
        for cond in ("includes", "excludes"):
            c = rule.get(cond)
            if c is None:
                continue
            if not isinstance(c, dict):
                raise InvalidInput(f"{at}.{cond} must be an object")
            for key in ("caps", "arches"):
                if c.get(key) is not None and not isinstance(c[key], list):
                    raise InvalidInput(f"{at}.{cond}.{key} must be a list")
            if c.get("minKernel") and not _version(str(c["minKernel"])):
                raise InvalidInput(f"{at}.{cond}.minKernel: {c['minKernel']!r} is not a version")
    return p


# -- resolving --------------------------------------------------------------------------------
def resolve(profile: Profile, *, caps: Collection[str], host: Host) -> dict[str, Any]:
    """The OCI `linux.seccomp` object for a container with these capabilities on this host."""
    out: dict[str, Any] = {"defaultAction": profile["defaultAction"]}
    if profile.get("defaultErrnoRet") is not None:
        out["defaultErrnoRet"] = profile["defaultErrnoRet"]
    arches = _architectures(profile, host)
    if arches:
        out["architectures"] = arches
    if profile.get("flags"):
        out["flags"] = list(profile["flags"])
    capset = set(caps)
    syscalls = []
    for rule in profile.get("syscalls") or ():
        if not _applies(rule, capset, host):
            continue
        call: dict[str, Any] = {
            "names": list(rule.get("names") or [rule["name"]]),
            "action": rule["action"],
        }
        if rule.get("errnoRet") is not None:
            call["errnoRet"] = rule["errnoRet"]
        if rule.get("args"):
            call["args"] = [
                {k: a[k] for k in ("index", "value", "valueTwo", "op") if k in a}
                for a in rule["args"]
            ]
        syscalls.append(call)
    out["syscalls"] = syscalls
    return out


def _architectures(profile: Profile, host: Host) -> list[str]:
    if profile.get("architectures"):
        return list(profile["architectures"])
    native = _SCMP_ARCH.get(host.arch)
    for entry in profile.get("archMap") or ():
        if entry["architecture"] == native:
            return [native, *entry.get("subArchitectures", [])]
    return []  # none listed: libseccomp filters the native architecture


def _applies(rule: dict[str, Any], caps: set[str], host: Host) -> bool:
    inc = rule.get("includes") or {}
    exc = rule.get("excludes") or {}
    if inc.get("caps") and not all(c in caps for c in inc["caps"]):
        return False
    if exc.get("caps") and any(c in caps for c in exc["caps"]):
        return False
    if inc.get("arches") and host.arch not in inc["arches"]:
        return False
    if exc.get("arches") and host.arch in exc["arches"]:
        return False
    if inc.get("minKernel") and host.kernel < _version(str(inc["minKernel"])):
        return False
    return not (exc.get("minKernel") and host.kernel >= _version(str(exc["minKernel"])))
