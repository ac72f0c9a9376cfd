"""Where `secrets[].valueFrom` (and logConfiguration.secretOptions) come from, in the order
the agent is configured with (`secret_sources`, default local store, then AWS).

- "local": the root-only store under the state dir (agent.secrets), by
  `agent.taskdef.local_secret_name`; the offline default.
- "aws": Secrets Manager (a secretsmanager ARN, with ECS's :json-key:version-stage:
  version-id suffixes) or SSM Parameter Store (an ssm ARN or a bare name), through
  agent.aws; on only when the agent's own environment holds AWS credentials.

With a task's executionRoleArn set and STS answering, AWS is asked with that role's
credentials, as ECS does (they stay in the agent: no container sees them); when STS does
not answer, with the agent's own. A secret no source has fails the start naming the
valueFrom and what each source said; values appear in no log line or message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import structlog

from agent.errors import InvalidInput
from agent.secrets import SecretNotFound, SecretStore
from agent.taskdef import TaskDefinition, local_secret_name

if TYPE_CHECKING:
    from agent.aws import AwsClients, StsAssumeRole
    from agent.config import AgentConfig

log = structlog.get_logger("nstask.secrets")

SOURCES = ("local", "aws")


def check_sources(sources: Iterable[str]) -> tuple[str, ...]:
    out = tuple(sources)
    bad = [s for s in out if s not in SOURCES]
    if bad or not out or len(set(out)) != len(out):
        raise InvalidInput(
            f"secret_sources (NSTASK_SECRET_SOURCES) {','.join(out)!r}: give one or both of "
            f"{', '.join(SOURCES)}, each once, in the order they are asked"
        )
    return out


def wanted(td: TaskDefinition) -> list[str]:
    """Every distinct valueFrom of the task: container secrets, log secretOptions and
    repositoryCredentials' credentialsParameter."""
    out: dict[str, None] = {}
    for c in td.containers:
        for s in c.secrets:
            out[s.value_from] = None
        if c.repository_credentials:
            out[c.repository_credentials] = None
        if c.log_configuration is not None:
            for s in c.log_configuration.secret_options:
                out[s.value_from] = None
    return list(out)


class Values:
    """The resolved values of one task start, looked up by valueFrom (agent.containers'
    SecretLookup). Held in memory for the start only; its repr shows no value."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    def value_of(self, value_from: str) -> str:
        return self._values[value_from]

    def __repr__(self) -> str:
        return f"Values({sorted(self._values)!r})"


class SecretSources:
    def __init__(self, config: AgentConfig, store: SecretStore) -> None:
        self.config = config
        self.store = store
        self.order = check_sources(config.secret_sources)
        self._clients: AwsClients | None = None
        self._sts: StsAssumeRole | None = None

    # -- AWS, made on first use ------------------------------------------------------------
    def aws_wanted(self) -> bool:
        """AWS is in the order and the environment names credentials (no botocore yet)."""
        from agent.aws import credentials_hint

        return "aws" in self.order and credentials_hint()

    @property
    def clients(self) -> AwsClients:
        if self._clients is None:
            from agent.aws import AwsClients

            c = self.config
            self._clients = AwsClients(
                region=c.region,
                endpoints={
                    "sts": c.sts_endpoint,
                    "secretsmanager": c.secretsmanager_endpoint,
                    "ssm": c.ssm_endpoint,
                },
            )
        return self._clients

    @property
    def sts(self) -> StsAssumeRole:
        """The STS AssumeRole credential source, shared with the task-role chain."""
        if self._sts is None:
            from agent.aws import StsAssumeRole, session_name

            self._sts = StsAssumeRole(
                self.clients,
                duration_seconds=self.config.sts_duration,
                refresh_margin=self.config.sts_refresh_margin,
                session=session_name(self.config.namespace),
                available=self.aws_available,
            )
        return self._sts

    def aws_available(self) -> bool:
        """Blocking (the first call loads botocore and asks its chain): call from a thread."""
        return self.aws_wanted() and self.clients.available()

    # -- submit ----------------------------------------------------------------------------
    def missing_at_submit(self, td: TaskDefinition) -> list[str]:
        """What can be refused before anything is created: with AWS possibly answering,
        nothing (the secrets step asks it and fails the start); else the valueFroms the
        local store lacks (all of them when it is not in the order)."""
        if self.aws_wanted():
            return []
        return sorted(
            {
                local_secret_name(v)
                for v in wanted(td)
                if "local" not in self.order or not self.store.has(local_secret_name(v))
            }
        )

    # -- the secrets step ------------------------------------------------------------------
    async def resolve(self, td: TaskDefinition, *, execution_role: str | None) -> Values:
        """Every valueFrom of the task, or the first error (naming its valueFrom)."""
        refs = wanted(td)
        if not refs:
            return Values({})
        creds: Any = None
        # AWS is asked only when it comes first or the local store lacks a value: a task
        # whose secrets are all local makes no AWS call (and loads no botocore).
        asks_aws = self.order[0] == "aws" or not all(self._local_has(v) for v in refs)
        aws_on = asks_aws and self.aws_wanted() and await asyncio.to_thread(self.aws_available)
        if aws_on and execution_role:
            creds = await self._execution_role_credentials(execution_role)
        results = await asyncio.gather(*(self._one(v, aws_on, creds) for v in refs))
        return Values(dict(zip(refs, results, strict=True)))

    def _local_has(self, value_from: str) -> bool:
        return "local" in self.order and self.store.has(local_secret_name(value_from))

    async def _execution_role_credentials(self, role_arn: str) -> Any:
        from agent.aws import AwsUnavailable, key_of

        try:
            return key_of(await self.sts.fetch(role_arn))
        except AwsUnavailable as e:
            log.warning(
                "execution_role_not_assumed",
                role=role_arn,
                error=e.message,
                using="the agent's own credentials",
            )
            return None

    async def _one(self, value_from: str, aws_on: bool, creds: Any) -> str:
        said: list[str] = []
        for source in self.order:
            if source == "local":
                name = local_secret_name(value_from)
                if self.store.has(name):
                    return self.store.get(name)
                said.append(f"local store: no secret {name!r}")
            elif not aws_on:
                said.append("AWS: off (the agent has no AWS credentials of its own)")
            else:
                from agent.aws import AwsNotFound

                try:
                    return await asyncio.to_thread(self._from_aws, value_from, creds)
                except AwsNotFound as e:
                    said.append(f"AWS: {e.message}")
        raise SecretNotFound(
            f"secret {value_from} not found (" + "; ".join(said) + ")",
            secret=value_from,
            sources=said,
        )

    def _from_aws(self, value_from: str, creds: Any) -> str:
        from agent.aws import SecretsManagerRef, get_parameter, get_secret_value, parse_ref

        ref = parse_ref(value_from, default_region=self.config.region)
        if isinstance(ref, SecretsManagerRef):
            return get_secret_value(self.clients, ref, creds)
        return get_parameter(self.clients, ref, creds)
