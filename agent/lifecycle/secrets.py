"""Step 3, secrets: each container's environment (environment files, environment, secrets)
and its log driver's secretOptions, resolved from the local secret store. The values are
kept in memory only for the start; nothing is logged."""

from __future__ import annotations

from dataclasses import dataclass

from agent import containers
from agent.lifecycle.runtime import Context, phase
from agent.store import TaskRecord
from agent.taskdef import TaskDefinition


@dataclass(frozen=True)
class Resolved:
    environment: dict[str, list[str]]  # container name -> KEY=VALUE
    log_secrets: dict[str, dict[str, str]]  # container name -> option -> value


def resolve(
    ctx: Context,
    task: TaskRecord,
    td: TaskDefinition,
    env_files: dict[str, list[tuple[str, str]]],
) -> Resolved:
    with phase(task, "secrets"):
        return Resolved(
            environment={
                c.name: containers.resolve_environment(c, ctx.secrets, env_files)
                for c in td.containers
            },
            log_secrets={
                c.name: containers.resolve_log_secrets(c, ctx.secrets) for c in td.containers
            },
        )
