"""The error tree of nstask. Every module that talks to an outside system turns that
system's errors into one of these, in one place; the CLI maps them to a message and an
exit code, the API to an HTTP status and a JSON body.

    NstaskError                       exit 1, HTTP 500
    +-- InvalidInput                  exit 2, HTTP 400  (bad task definition, bad argument)
    |   +-- TaskDefinitionError       carries the field path, e.g. containerDefinitions[0].image
    |   +-- RequestTooLarge           exit 2, HTTP 413  (over MAX_REQUEST_BYTES)
    +-- NotFound                      exit 1, HTTP 404
    |   +-- ImageNotFound
    |   +-- TaskNotFound
    +-- Conflict                      exit 1, HTTP 409  (the object's state forbids it)
    |   +-- AlreadyExists
    |   +-- Busy                      (a host resource cannot be removed now; removal is retried)
    +-- Unavailable                   exit 1, HTTP 503  (containerd or the agent does not answer)
    +-- ContainerdError               exit 1, HTTP 500  (any other containerd failure)
    +-- NetworkError                  exit 1, HTTP 500  (netns / links)
    +-- CNIError (in cni.errors)      exit 1, HTTP 500  (a plugin failed: code, msg, details)
    +-- StateError                    exit 1, HTTP 500  (the state store is unusable)
        +-- AgentRunning              exit 1  (another agent holds the state dir or socket)
"""

from __future__ import annotations

TYPE_CHECKING = False  # `typing` costs the fast CLI (cli_fast) ~5 ms; mypy takes this as True
if TYPE_CHECKING:
    from typing import Any

# The largest request body the agent's API takes, and so the largest task definition file
# `nstask run` and `nstask validate` accept: ECS's own limit on a registered task definition is
# 64 KiB and RunTask's overrides add up to 8 KiB; this leaves room for `-e` values and for the
# escaping JSON encoding adds.
MAX_REQUEST_BYTES = 1024 * 1024


class NstaskError(Exception):
    """Root of every error nstask raises on purpose."""

    exit_code = 1
    http_status = 500
    kind = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.kind, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class InvalidInput(NstaskError):
    exit_code = 2
    http_status = 400
    kind = "invalid_input"


class TaskDefinitionError(InvalidInput):
    """A task definition that ECS would refuse, or that nstask cannot run.

    `problems` holds (path, message) pairs, e.g. ("containerDefinitions[0].image", "is required").
    """

    kind = "invalid_task_definition"

    def __init__(self, problems: list[tuple[str, str]], *, source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        lines = [f"{where}{path}: {msg}" if path else f"{where}{msg}" for path, msg in problems]
        super().__init__(
            "\n".join(lines), problems=[{"path": p, "message": m} for p, m in problems]
        )


class RequestTooLarge(InvalidInput):
    """A body (or a task definition file) over MAX_REQUEST_BYTES; one message for the API and
    the CLI, so both name the same limit."""

    http_status = 413
    kind = "request_too_large"

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} is larger than {MAX_REQUEST_BYTES} bytes (1 MiB), the limit of the"
            " agent's API (ECS itself takes task definitions of up to 64 KiB)",
            limit=MAX_REQUEST_BYTES,
        )


class NotFound(NstaskError):
    http_status = 404
    kind = "not_found"


class ImageNotFound(NotFound):
    kind = "image_not_found"


class TaskNotFound(NotFound):
    kind = "task_not_found"


class Conflict(NstaskError):
    """The request conflicts with the object's state (exec in a stopped container)."""

    http_status = 409
    kind = "conflict"


class AlreadyExists(Conflict):
    kind = "already_exists"


class Busy(Conflict):
    kind = "busy"


class Unavailable(NstaskError):
    http_status = 503
    kind = "unavailable"


class ContainerdError(NstaskError):
    kind = "containerd_error"


class NetworkError(NstaskError):
    kind = "network_error"


class StateError(NstaskError):
    kind = "state_error"


class AgentRunning(StateError):
    """Another agent holds this state dir (its lock) or serves this socket."""

    kind = "agent_running"
