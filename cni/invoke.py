"""Start a CNI plugin: the one exec seam of the cni package (libcni's pkg/invoke).

`PluginExec` is the seam tests replace with a recorder; `SubprocessExec` runs the binary.
Everything about reading a plugin's answer (result JSON, error JSON, a crash with only
stderr) is decided here, in one place.

A run can be cancelled from another thread through a `threading.Event`: the plugin runs in
a process group of its own (it may have started iptables or an IPAM binary), and the whole
group is killed when the event is set or the timeout passes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from cni.errors import (
    CODE_RUNTIME_FAILURE,
    CNIError,
    InvalidNetworkConfig,
    PluginCancelled,
    error_from_dict,
    invalid_environment,
)

__all__ = [
    "DEFAULT_CNI_PATH",
    "PluginExec",
    "SubprocessExec",
    "build_env",
    "find_plugin",
    "format_cni_args",
    "invoke",
]

DEFAULT_CNI_PATH: tuple[str, ...] = ("/usr/lib/cni", "/opt/cni/bin")
# portmap, firewall and friends exec iptables by name, so plugins need a PATH.
_FALLBACK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MAX_STDERR = 4096
# How often a cancellable run looks at its event: a cancel takes effect within this.
_POLL = 0.05


class PluginExec(Protocol):
    """Run one plugin process: returns (exit status, stdout, stderr). When `cancel` is set
    while it runs, the process is killed and PluginCancelled raised."""

    def run(
        self,
        path: str,
        env: dict[str, str],
        stdin: bytes,
        *,
        cancel: threading.Event | None = None,
    ) -> tuple[int, bytes, bytes]: ...


class SubprocessExec:
    """Run plugins as child processes with a timeout (a hung plugin must not hang a task)."""

    def __init__(self, *, timeout: float = 60.0) -> None:
        self.timeout = timeout

    def run(
        self,
        path: str,
        env: dict[str, str],
        stdin: bytes,
        *,
        cancel: threading.Event | None = None,
    ) -> tuple[int, bytes, bytes]:
        if cancel is not None and cancel.is_set():
            raise PluginCancelled(f"cancelled before {path} started")
        try:
            proc = subprocess.Popen(
                [path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                close_fds=True,
                start_new_session=True,  # its own process group, killed as one
            )
        except OSError as exc:
            raise CNIError(CODE_RUNTIME_FAILURE, f"cannot execute {path}: {exc.strerror}") from exc
        deadline = time.monotonic() + self.timeout
        data: bytes | None = stdin  # given once: a retried communicate() goes on with it
        try:
            while True:
                left = deadline - time.monotonic()
                step = left if cancel is None else min(left, _POLL)
                try:
                    out, err = proc.communicate(data, timeout=max(step, 0))
                    return proc.returncode, out, err
                except subprocess.TimeoutExpired:
                    data = None
                if cancel is not None and cancel.is_set():
                    _kill(proc)
                    raise PluginCancelled(f"cancelled while {path} ran; it was killed")
                if time.monotonic() >= deadline:
                    err = _kill(proc)
                    raise CNIError(
                        CODE_RUNTIME_FAILURE,
                        f"plugin {path} did not finish within {self.timeout:g} s",
                        _text(err or b""),
                    )
        except BaseException:
            if proc.returncode is None:
                _kill(proc)
            raise


def _kill(proc: subprocess.Popen[bytes]) -> bytes:
    """SIGKILL the plugin's process group, reap the plugin; returns what it wrote to stderr."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(OSError, ValueError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired, OSError, ValueError):
        _, err = proc.communicate(timeout=5)
        return err or b""
    return b""


def find_plugin(plugin_type: str, cni_path: Sequence[str] = DEFAULT_CNI_PATH) -> str:
    """The first executable named `plugin_type` in the search path (as libcni FindInPath)."""
    if not plugin_type or "/" in plugin_type:
        raise InvalidNetworkConfig(f"plugin type {plugin_type!r} is not a plain name")
    for directory in cni_path:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise InvalidNetworkConfig(
        f"plugin {plugin_type!r} not found in CNI path {':'.join(cni_path)}",
        plugin=plugin_type,
    )


def format_cni_args(args: Mapping[str, str] | None) -> str:
    """`K=V;K2=V2`; a key or value that would break the format is refused."""
    pairs = []
    for key, value in (args or {}).items():
        if not key or any(c in key for c in "=;") or ";" in str(value):
            raise invalid_environment(f"CNI_ARGS entry {key!r}={value!r} cannot be encoded")
        pairs.append(f"{key}={value}")
    return ";".join(pairs)


def build_env(
    command: str,
    *,
    container_id: str,
    netns: str,
    ifname: str,
    args: Mapping[str, str] | None,
    cni_path: Sequence[str],
) -> dict[str, str]:
    """The CNI_* environment of one call, plus PATH for plugins that exec helpers."""
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": format_cni_args(args),
        "CNI_PATH": ":".join(cni_path),
        "PATH": os.environ.get("PATH") or _FALLBACK_PATH,
    }
    if command in ("VERSION", "STATUS", "GC"):
        for key in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"):
            env.pop(key)
    return env


def invoke(
    runner: PluginExec,
    path: str,
    env: dict[str, str],
    stdin: Mapping[str, Any],
    *,
    plugin: str,
    cancel: threading.Event | None = None,
) -> dict[str, Any] | None:
    """Run a plugin and return its result (None when it printed nothing, as DEL may).

    A failure becomes a CNIError naming the plugin and command: the plugin's own error
    JSON when it printed one (on stdout per the spec; some print it on stderr), else
    code 999 with stderr in the details.
    """
    command = env.get("CNI_COMMAND", "")
    data = json.dumps(stdin).encode()
    try:
        if cancel is None:
            status, out, err = runner.run(path, env, data)
        else:
            status, out, err = runner.run(path, env, data, cancel=cancel)
    except PluginCancelled as exc:
        exc.located(plugin=plugin, command=command)
        raise
    if status != 0:
        raise _failure(status, out, err, plugin=plugin, command=command)
    if not out.strip():
        return None
    try:
        result = json.loads(out)
    except ValueError as exc:
        raise CNIError(
            CODE_RUNTIME_FAILURE,
            f"plugin printed a result that is not JSON: {exc}",
            _text(out),
            plugin=plugin,
            command=command,
        ) from exc
    if not isinstance(result, dict):
        raise CNIError(
            CODE_RUNTIME_FAILURE,
            "plugin printed a result that is not a JSON object",
            _text(out),
            plugin=plugin,
            command=command,
        )
    return result


def _failure(status: int, out: bytes, err: bytes, *, plugin: str, command: str) -> CNIError:
    for stream in (out, err):
        try:
            body = json.loads(stream)
        except ValueError:
            continue
        error = error_from_dict(body, plugin=plugin, command=command)
        if error is not None:
            return error
    detail = _text(err) or _text(out)
    return CNIError(
        CODE_RUNTIME_FAILURE,
        f"plugin exited with status {status} without a CNI error",
        detail,
        plugin=plugin,
        command=command,
    )


def _text(data: bytes | str) -> str:
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    text = text.strip()
    return text if len(text) <= _MAX_STDERR else text[:_MAX_STDERR] + "..."
