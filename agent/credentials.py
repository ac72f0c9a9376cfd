"""Task-role credentials: what a task's AWS SDK gets from 169.254.170.2/v2/credentials/<id>.

This module holds the shape every source of credentials answers with and the seam a source
implements. Sources, in the order the agent asks them: the local per-role store
(`nstask credentials put ROLE_ARN`), then, when the agent has AWS credentials of its own,
a real STS AssumeRole of the role (agent.aws). The first that knows the role answers.

Credentials are secrets: no log line, `inspect` or API answer other than the task's own
credentials endpoint carries them. The repr of RoleCredentials hides them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class RoleCredentials:
    """One role's temporary credentials, as the endpoint serves them (expiration aware, UTC)."""

    __slots__ = ("access_key_id", "expiration", "role_arn", "secret_access_key", "token")

    def __init__(
        self,
        *,
        role_arn: str,
        access_key_id: str,
        secret_access_key: str,
        token: str,
        expiration: datetime,
    ) -> None:
        if expiration.tzinfo is None:
            raise ValueError("expiration must be timezone-aware")
        self.role_arn = role_arn
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.token = token
        self.expiration = expiration.astimezone(UTC)

    def __repr__(self) -> str:
        return f"RoleCredentials(role_arn={self.role_arn!r}, expiration={self.expiration!r})"

    def expires_within(self, seconds: float, *, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        return (self.expiration - now).total_seconds() <= seconds

    def to_endpoint(self) -> dict[str, str]:
        """The JSON the ECS credentials endpoint answers with (field names as ECS's)."""
        return {
            "RoleArn": self.role_arn,
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Token": self.token,
            "Expiration": self.expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


class CredentialSource(Protocol):
    """A place credentials for a role can come from."""

    name: str

    async def fetch(self, role_arn: str) -> RoleCredentials | None:
        """The role's current credentials, or None when this source does not know the role.
        Raises agent.errors.NstaskError subclasses with a message naming the role on
        failure (access denied, unreachable endpoint); never logs secret values."""
        ...
