"""Parse and validate a CNI network configuration list, and build each plugin's stdin.

This layer never executes anything (libcni's first layer). A bad list is refused here with a
message that names the file and the field, e.g. `mynet.conflist: plugins[1].type: is required`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni.errors import InvalidNetworkConfig

__all__ = [
    "SUPPORTED_VERSIONS",
    "NetworkConfigList",
    "PluginConfig",
    "build_plugin_config",
    "load_conflist",
    "parse_conflist",
    "version_at_least",
]

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


@dataclass(frozen=True)
class PluginConfig:
    """One entry of `plugins[]`: its type, declared capabilities and the raw object."""

    type: str
    raw: Mapping[str, Any]
    capabilities: frozenset[str] = frozenset()


@dataclass(frozen=True)
class NetworkConfigList:
    """A validated conflist. `raw` is the document as given (it goes into the cache)."""

    name: str
    cni_version: str
    plugins: tuple[PluginConfig, ...]
    disable_check: bool = False
    disable_gc: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def bytes(self) -> bytes:
        """The list as JSON bytes, as stored in the result cache."""
        return json.dumps(self.raw, sort_keys=True).encode()


def version_at_least(version: str, minimum: str) -> bool:
    """Compare dotted CNI versions numerically ("1.1.0" >= "1.0.0")."""
    return _version_tuple(version) >= _version_tuple(minimum)


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (0,)


def load_conflist(path: str | Path) -> NetworkConfigList:
    """Read a .conflist (or a single-plugin .conf) file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InvalidNetworkConfig(f"{p}: cannot read: {exc.strerror}") from exc
    return parse_conflist(text, source=str(p))


def parse_conflist(data: Mapping[str, Any] | str | bytes, *, source: str = "") -> NetworkConfigList:
    """Validate a conflist given as a dict or JSON text.

    A single plugin config (with `type` and no `plugins`) is turned into a one-entry list,
    as libcni does, so a user can hand us either kind of file.
    """
    where = source or "network config"
    doc = _decode(data, where)
    if "plugins" not in doc and "type" in doc:
        doc = _single_to_list(doc)
    problems: list[str] = []
    name = _check_name(doc, problems)
    version = _check_version(doc, problems)
    plugins = _check_plugins(doc, problems)
    disable_check = _check_bool(doc, "disableCheck", problems)
    disable_gc = _check_bool(doc, "disableGC", problems)
    if problems:
        raise InvalidNetworkConfig("; ".join(f"{where}: {p}" for p in problems))
    return NetworkConfigList(
        name=name,
        cni_version=version,
        plugins=tuple(plugins),
        disable_check=disable_check,
        disable_gc=disable_gc,
        raw=doc,
        source=source,
    )


def _decode(data: Mapping[str, Any] | str | bytes, where: str) -> dict[str, Any]:
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise InvalidNetworkConfig(f"{where}: not valid JSON: {exc}") from exc
    if not isinstance(data, Mapping):
        raise InvalidNetworkConfig(f"{where}: must be a JSON object")
    return dict(data)


def _single_to_list(doc: dict[str, Any]) -> dict[str, Any]:
    plugin = {k: v for k, v in doc.items() if k not in ("name", "cniVersion")}
    out: dict[str, Any] = {"plugins": [plugin]}
    for key in ("name", "cniVersion"):
        if key in doc:
            out[key] = doc[key]
    return out


def _check_name(doc: Mapping[str, Any], problems: list[str]) -> str:
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        problems.append("name: is required (a non-empty string)")
        return ""
    if not _NAME_RE.fullmatch(name):
        problems.append(f"name: {name!r} must match {_NAME_RE.pattern}")
    return name


def _check_version(doc: Mapping[str, Any], problems: list[str]) -> str:
    version = doc.get("cniVersion")
    if not isinstance(version, str) or not version:
        problems.append('cniVersion: is required (e.g. "1.0.0")')
        return ""
    if version not in SUPPORTED_VERSIONS:
        problems.append(f"cniVersion: {version!r} is not one of {', '.join(SUPPORTED_VERSIONS)}")
    return version


def _check_bool(doc: Mapping[str, Any], key: str, problems: list[str]) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        problems.append(f"{key}: must be true or false")
        return False
    return value


def _check_plugins(doc: Mapping[str, Any], problems: list[str]) -> list[PluginConfig]:
    plugins = doc.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        problems.append("plugins: is required (a non-empty list)")
        return []
    out: list[PluginConfig] = []
    for i, entry in enumerate(plugins):
        at = f"plugins[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{at}: must be an object")
            continue
        ptype = entry.get("type")
        if not isinstance(ptype, str) or not ptype:
            problems.append(f"{at}.type: is required (a non-empty string)")
            continue
        if "/" in ptype or ptype in (".", ".."):
            problems.append(f"{at}.type: {ptype!r} must be a plain plugin name")
            continue
        out.append(PluginConfig(ptype, entry, _capabilities(entry, at, problems)))
    return out


def _capabilities(entry: Mapping[str, Any], at: str, problems: list[str]) -> frozenset[str]:
    caps = entry.get("capabilities", {})
    if not isinstance(caps, dict) or not all(isinstance(v, bool) for v in caps.values()):
        problems.append(f"{at}.capabilities: must be an object of name: true|false")
        return frozenset()
    return frozenset(name for name, on in caps.items() if on)


def build_plugin_config(
    netconf: NetworkConfigList,
    plugin: PluginConfig,
    *,
    prev_result: Mapping[str, Any] | None = None,
    capability_args: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The config one plugin gets on stdin: its own object plus what the runtime injects.

    `runtimeConfig` carries only the capabilities this plugin declares: a plugin that did not
    ask for `portMappings` must not see them (SPEC, "Deriving runtimeConfig").
    """
    conf = {k: v for k, v in plugin.raw.items() if k != "runtimeConfig"}
    conf["name"] = netconf.name
    conf["cniVersion"] = netconf.cni_version
    runtime = {
        cap: value for cap, value in (capability_args or {}).items() if cap in plugin.capabilities
    }
    if runtime:
        conf["runtimeConfig"] = runtime
    if prev_result is not None:
        conf["prevResult"] = dict(prev_result)
    return conf
