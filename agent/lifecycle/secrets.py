"""Step 3, secrets: each container's environment (environment files, environment, secrets)
and its log driver's secretOptions, resolved from the configured secret sources (the local
secret store, then AWS: agent.secret_sources). The values are kept in memory only for the
start; nothing is logged. A secret no source has fails the start (rollback: the network
provisioned before is removed)."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent import containers
from agent.dockerconfig import from_secret
from agent.lifecycle.runtime import Context, phase
from agent.registry import Credentials
from agent.secret_sources import Values
from agent.store import TaskRecord
from agent.taskdef import TaskDefinition


@dataclass(frozen=True)
class Resolved:
    environment: dict[str, list[str]]  # container name -> KEY=VALUE
    log_secrets: dict[str, dict[str, str]]  # container name -> option -> value
    # container name -> registry credentials from its repositoryCredentials (agent.pull)
    registry_auth: dict[str, Credentials] = field(default_factory=dict)

    def __repr__(self) -> str:  # values never printed
        return f"Resolved(containers={sorted(self.environment)!r})"


def execution_role_of(task: TaskRecord) -> str | None:
    """The task's executionRoleArn, read from the definition as submitted (the agent uses it
    for secrets; it never reaches a container)."""
    role = task.definition.get("executionRoleArn") if isinstance(task.definition, dict) else None
    return role if isinstance(role, str) and role else None


async def resolve(
    ctx: Context,
    task: TaskRecord,
    td: TaskDefinition,
    env_files: dict[str, list[tuple[str, str]]],
) -> Resolved:
    with phase(task, "secrets"):
        values = await ctx.secret_sources.resolve(td, execution_role=execution_role_of(task))
        return Resolved(
            environment={
                c.name: containers.resolve_environment(c, values, env_files) for c in td.containers
            },
            log_secrets={c.name: containers.resolve_log_secrets(c, values) for c in td.containers},
            registry_auth=registry_auth(td, values),
        )


def registry_auth(td: TaskDefinition, values: Values) -> dict[str, Credentials]:
    """Each container's repositoryCredentials secret, parsed as {"username", "password"}."""
    return {
        c.name: from_secret(
            values.value_of(c.repository_credentials), parameter=c.repository_credentials
        )
        for c in td.containers
        if c.repository_credentials
    }
