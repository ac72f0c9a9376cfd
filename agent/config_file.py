"""The agent's config file: TOML, `/etc/nstask/agent.toml` unless `--config` / NSTASK_CONFIG
names another (NSTASK_CONFIG=none: no file).

Every AgentConfig field may be set, by its name (`state_dir = "/srv/nstask"`), at the top
level; the order is defaults < file < NSTASK_* environment < flags (agent.config.load_config).
An unknown key or a value of the wrong type is an error naming the file, the line and the key;
a missing default file is no error, a missing named one is.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from agent.errors import InvalidInput

DEFAULT_CONFIG = Path("/etc/nstask/agent.toml")
_PATHS = ("conflist_file", "shim_path")


def config_path(explicit: str | os.PathLike[str] | None = None) -> tuple[Path | None, bool]:
    """(the file to read or None, whether it was asked for by name)."""
    if explicit is not None:
        return Path(explicit), True
    env = os.environ.get("NSTASK_CONFIG")
    if env is not None and env != "":
        return (None, False) if env == "none" else (Path(env), True)
    return DEFAULT_CONFIG, False


def _line_of(text: str, key: str) -> int | None:
    pat = re.compile(rf"^\s*(\[\s*)?[\"']?{re.escape(key)}[\"']?\s*[=\].]")
    for n, line in enumerate(text.splitlines(), 1):
        if pat.match(line):
            return n
    return None


def read_config_file(explicit: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The settings of the config file, typed like AgentConfig's fields ({} without a file)."""
    from agent.config import AgentConfig

    path, named = config_path(explicit)
    if path is None:
        return {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        if named:
            raise InvalidInput(f"config file {path}: no such file") from None
        return {}
    except OSError as e:
        raise InvalidInput(f"config file {path}: {e.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"{path}: {e}") from None
    defaults = AgentConfig()
    known = {f.name for f in fields(AgentConfig)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        line = _line_of(text, key)
        where = f"{path}:{line}: {key}" if line else f"{path}: {key}"
        if key not in known:
            if isinstance(value, dict):
                raise InvalidInput(f"{where}: unknown table (settings are top-level keys)")
            raise InvalidInput(f"{where}: unknown setting (known: {', '.join(sorted(known))})")
        out[key] = _typed(key, value, getattr(defaults, key), where)
    return out


def _typed(key: str, value: Any, default: Any, where: str) -> Any:
    def wrong(kind: str) -> InvalidInput:
        return InvalidInput(f"{where}: must be {kind}, not {type(value).__name__} {value!r}")

    if isinstance(default, Path) or key in _PATHS:
        if not isinstance(value, str) or not value:
            raise wrong("a path (a string)")
        return Path(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise wrong("an array of strings")
        return tuple(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong("a number")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise wrong("a whole number >= 0")
        return value
    if not isinstance(value, str):
        raise wrong("a string")
    return value
