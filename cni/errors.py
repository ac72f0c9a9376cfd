"""CNI errors: a plugin's structured failure, kept structured.

A CNI plugin fails by printing `{cniVersion, code, msg, details}` and exiting non-zero
(SPEC 1.1, "Error"). We keep those fields and add which plugin (its `type`) and which
command failed, so a user reading "CNI plugin portmap ADD failed: ..." knows where to look
without matching on text.

    NstaskError
    +-- CNIError                      any plugin or CNI runtime failure (code, msg, details)
        +-- InvalidNetworkConfig      code 7, also an InvalidInput (exit 2, HTTP 400)
        +-- PluginCancelled           the caller cancelled the operation (plugin killed)
"""

from __future__ import annotations

from typing import Any

from agent.errors import InvalidInput, NstaskError

__all__ = [
    "CODE_DECODING_FAILURE",
    "CODE_INCOMPATIBLE_VERSION",
    "CODE_INVALID_ENVIRONMENT",
    "CODE_INVALID_NETWORK_CONFIG",
    "CODE_IO_FAILURE",
    "CODE_NOT_AVAILABLE",
    "CODE_NOT_AVAILABLE_LIMITED",
    "CODE_RUNTIME_FAILURE",
    "CODE_TRY_AGAIN_LATER",
    "CODE_UNKNOWN_CONTAINER",
    "CODE_UNSUPPORTED_FIELD",
    "CNIError",
    "InvalidNetworkConfig",
    "PluginCancelled",
    "decoding_failure",
    "error_from_dict",
    "incompatible_version",
    "invalid_environment",
    "invalid_network_config",
    "io_failure",
    "plugin_not_available",
    "try_again_later",
    "unknown_container",
    "unsupported_field",
]

CODE_INCOMPATIBLE_VERSION = 1
CODE_UNSUPPORTED_FIELD = 2
CODE_UNKNOWN_CONTAINER = 3
CODE_INVALID_ENVIRONMENT = 4
CODE_IO_FAILURE = 5
CODE_DECODING_FAILURE = 6
CODE_INVALID_NETWORK_CONFIG = 7
CODE_TRY_AGAIN_LATER = 11
CODE_NOT_AVAILABLE = 50
CODE_NOT_AVAILABLE_LIMITED = 51
# libcni types.ErrInternal; we also use it when a plugin died without a readable error.
CODE_RUNTIME_FAILURE = 999

_CODE_NAMES = {
    CODE_INCOMPATIBLE_VERSION: "incompatible CNI version",
    CODE_UNSUPPORTED_FIELD: "unsupported field in network configuration",
    CODE_UNKNOWN_CONTAINER: "container unknown or does not exist",
    CODE_INVALID_ENVIRONMENT: "invalid necessary environment variables",
    CODE_IO_FAILURE: "I/O failure",
    CODE_DECODING_FAILURE: "failed to decode content",
    CODE_INVALID_NETWORK_CONFIG: "invalid network config",
    CODE_TRY_AGAIN_LATER: "try again later",
    CODE_NOT_AVAILABLE: "plugin not available",
    CODE_NOT_AVAILABLE_LIMITED: "plugin not available, existing containers may be affected",
    CODE_RUNTIME_FAILURE: "internal error",
}


class CNIError(NstaskError):
    """A CNI operation failed. `plugin` is the plugin type, `command` ADD/DEL/CHECK/...

    The spec's `details` string is `cni_details` (NstaskError already uses `details` for the
    structured dict that the API returns; it holds code, msg, details, plugin and command).
    """

    kind = "cni_error"

    def __init__(
        self,
        code: int,
        msg: str,
        details: str = "",
        *,
        plugin: str = "",
        command: str = "",
        network: str = "",
    ) -> None:
        self.code = code
        self.msg = msg
        self.cni_details = details
        self.plugin = plugin
        self.command = command
        self.network = network
        super().__init__(
            self._render(),
            code=code,
            msg=msg,
            details=details,
            plugin=plugin,
            command=command,
            network=network,
        )

    @property
    def retryable(self) -> bool:
        """Code 11 asks the runtime to try again later (iptables lock contention, ...)."""
        return self.code == CODE_TRY_AGAIN_LATER

    @property
    def code_name(self) -> str:
        if self.code >= 100 and self.code != CODE_RUNTIME_FAILURE:
            return "plugin-specific error"
        return _CODE_NAMES.get(self.code, "unknown error code")

    def located(self, *, plugin: str, command: str, network: str = "") -> CNIError:
        """Fill in where the error happened, keeping what the raiser already said."""
        self.plugin = self.plugin or plugin
        self.command = self.command or command
        self.network = self.network or network
        self.message = self._render()
        self.args = (self.message,)
        self.details.update(plugin=self.plugin, command=self.command, network=self.network)
        return self

    def to_spec(self, cni_version: str = "1.0.0") -> dict[str, Any]:
        """The error JSON a plugin prints on stdout (used by the built-in plugin)."""
        body: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.cni_details:
            body["details"] = self.cni_details
        return body

    def _render(self) -> str:
        who = f"CNI plugin {self.plugin}" if self.plugin else "CNI"
        if self.command:
            who += f" {self.command}"
        if self.network:
            who += f" (network {self.network})"
        text = f"{who} failed: {self.msg} [code {self.code}: {self.code_name}]"
        if self.cni_details:
            text += f": {self.cni_details}"
        return text

    def __str__(self) -> str:
        return self.message


class InvalidNetworkConfig(CNIError, InvalidInput):
    """Code 7: the network configuration (list) is wrong; the user must fix it."""

    kind = "invalid_network_config"

    def __init__(self, msg: str, details: str = "", **where: str) -> None:
        super().__init__(CODE_INVALID_NETWORK_CONFIG, msg, details, **where)


class PluginCancelled(CNIError):
    """The caller cancelled the operation: the plugin process was killed (or never started).

    Not a plugin failure, so no rollback follows it: the caller owes the DEL."""

    kind = "cni_cancelled"

    def __init__(self, msg: str, **where: str) -> None:
        super().__init__(CODE_RUNTIME_FAILURE, msg, **where)


def error_from_dict(body: Any, *, plugin: str = "", command: str = "") -> CNIError | None:
    """Turn a plugin's error JSON into a CNIError, or None when it is not one."""
    if not isinstance(body, dict):
        return None
    code = body.get("code")
    if not isinstance(code, int) or isinstance(code, bool):
        return None
    msg = body.get("msg", "")
    details = body.get("details", "")
    if code == CODE_INVALID_NETWORK_CONFIG:
        return InvalidNetworkConfig(str(msg), str(details), plugin=plugin, command=command)
    return CNIError(code, str(msg), str(details), plugin=plugin, command=command)


def incompatible_version(msg: str, details: str = "") -> CNIError:
    return CNIError(CODE_INCOMPATIBLE_VERSION, msg, details)


def unsupported_field(msg: str, details: str = "") -> CNIError:
    return CNIError(CODE_UNSUPPORTED_FIELD, msg, details)


def unknown_container(msg: str, details: str = "") -> CNIError:
    return CNIError(CODE_UNKNOWN_CONTAINER, msg, details)


def invalid_environment(msg: str, details: str = "") -> CNIError:
    return CNIError(CODE_INVALID_ENVIRONMENT, msg, details)


def io_failure(msg: str, details: str = "") -> CNIError:
    return CNIError(CODE_IO_FAILURE, msg, details)


def decoding_failure(msg: str, details: str = "") -> CNIError:
    return CNIError(CODE_DECODING_FAILURE, msg, details)


def invalid_network_config(msg: str, details: str = "") -> InvalidNetworkConfig:
    return InvalidNetworkConfig(msg, details)


def try_again_later(msg: str, details: str = "") -> CNIError:
    return CNIError(CODE_TRY_AGAIN_LATER, msg, details)


def plugin_not_available(msg: str, details: str = "", *, limited: bool = False) -> CNIError:
    code = CODE_NOT_AVAILABLE_LIMITED if limited else CODE_NOT_AVAILABLE
    return CNIError(code, msg, details)
