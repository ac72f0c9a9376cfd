"""Task-role credentials: what a task's AWS SDK gets from 169.254.170.2/v2/credentials/<id>.

This module holds the shape every source of credentials answers with and the seam a source
implements. Sources, in the order the agent asks them: the local per-role store
(`nstask credentials put ROLE_ARN`), then, when the agent has AWS credentials of its own,
a real STS AssumeRole of the role (agent.aws). The first that knows the role answers.

Credentials are secrets: no log line, `inspect` or API answer other than the task's own
credentials endpoint carries them. The repr of RoleCredentials hides them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from agent.errors import InvalidInput, NotFound


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


# -- the chain of sources ------------------------------------------------------------------


class CredentialChain:
    """Ask each source in order; the first that knows the role answers. The agent builds
    the one chain it uses in agent.daemon (`credential_sources`)."""

    name = "chain"

    def __init__(self, sources: list[CredentialSource]) -> None:
        self.sources = list(sources)

    async def fetch(self, role_arn: str) -> RoleCredentials | None:
        for source in self.sources:
            found = await source.fetch(role_arn)
            if found is not None:
                return found
        return None


# -- the local per-role store (`nstask credentials put ROLE_ARN`) --------------------------

ROLE_ARN_RE = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
# Served with an expiration this far ahead when the stored keys have none (long-lived keys
# or a profile): SDKs then come back for them, as they do with real role credentials.
ROLLING_EXPIRY_S = 3600
MAX_CREDENTIALS_BYTES = 16 * 1024


def check_role_arn(role_arn: str) -> str:
    if not ROLE_ARN_RE.fullmatch(role_arn):
        raise InvalidInput(
            f"role {role_arn!r}: not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)"
        )
    return role_arn


def _field(data: dict[str, str], *names: str) -> str | None:
    lowered = {k.lower().replace("_", ""): v for k, v in data.items()}
    for n in names:
        v = lowered.get(n.lower().replace("_", ""))
        if v:
            return v
    return None


def parse_credentials(text: str, *, where: str = "stdin") -> dict[str, str]:
    """Keys for a role from JSON ({AccessKeyId, SecretAccessKey, Token|SessionToken,
    Expiration?}: the endpoint's own shape, `aws sts assume-role`'s "Credentials" object or
    the whole answer) or key=value lines (aws_access_key_id=..., as in a credentials file).
    Returns the normalised fields; raises InvalidInput naming what is missing (never a value)."""
    data: dict[str, str] = {}
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"credentials from {where}: not valid JSON: {e.msg}") from None
        if isinstance(obj, dict) and isinstance(obj.get("Credentials"), dict):
            obj = obj["Credentials"]
        if not isinstance(obj, dict):
            raise InvalidInput(f"credentials from {where}: the JSON must be an object")
        data = {str(k): str(v) for k, v in obj.items() if isinstance(v, str | int)}
    else:
        for n, line in enumerate(stripped.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith(("#", ";", "[")):
                continue
            key, sep, value = line.partition("=")
            if not sep:
                raise InvalidInput(f"credentials from {where}, line {n}: expected key=value")
            data[key.strip()] = value.strip()
    out = {
        "AccessKeyId": _field(data, "AccessKeyId", "aws_access_key_id"),
        "SecretAccessKey": _field(data, "SecretAccessKey", "aws_secret_access_key"),
        "Token": _field(data, "Token", "SessionToken", "aws_session_token"),
        "Expiration": _field(data, "Expiration", "aws_expiration"),
    }
    missing = [k for k in ("AccessKeyId", "SecretAccessKey") if not out[k]]
    if missing:
        raise InvalidInput(f"credentials from {where}: missing {', '.join(missing)}")
    if out["Expiration"]:
        _parse_expiration(out["Expiration"], where)
    return {k: v for k, v in out.items() if v}


def _parse_expiration(text: str, where: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"credentials from {where}: Expiration {text!r} is not RFC 3339"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when


def shared_credentials_file() -> Path:
    """Where the AWS CLI and SDKs keep long-lived keys (AWS_SHARED_CREDENTIALS_FILE)."""
    env = os.environ.get("AWS_SHARED_CREDENTIALS_FILE")
    return Path(env).expanduser() if env else Path("~/.aws/credentials").expanduser()


def read_profile(name: str, path: Path | None = None) -> dict[str, str]:
    """One profile of the shared credentials file, normalised as parse_credentials does."""
    import configparser

    path = path or shared_credentials_file()
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path) as f:
            parser.read_file(f)
    except FileNotFoundError:
        raise InvalidInput(f"shared credentials file {path} does not exist") from None
    except (OSError, configparser.Error) as e:
        raise InvalidInput(f"shared credentials file {path}: {e}") from None
    if not parser.has_section(name):
        raise InvalidInput(f"shared credentials file {path} has no profile [{name}]")
    section = dict(parser.items(name))
    return parse_credentials(
        "\n".join(f"{k}={v}" for k, v in section.items()), where=f"{path} [{name}]"
    )


class LocalCredentialStore:
    """Keys per role in `<state>/credentials` (0700; one 0600 JSON file per role), the way
    agent.secrets keeps secrets. Never logged, never listed with values."""

    name = "local"

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _path(self, role_arn: str) -> Path:
        check_role_arn(role_arn)
        return self.dir / (base64.urlsafe_b64encode(role_arn.encode()).decode().rstrip("="))

    def put(self, role_arn: str, fields: dict[str, str]) -> None:
        data = json.dumps({"RoleArn": role_arn, **fields}).encode()
        if len(data) > MAX_CREDENTIALS_BYTES:
            raise InvalidInput(f"credentials of {role_arn}: larger than {MAX_CREDENTIALS_BYTES} B")
        path = self._path(role_arn)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def remove(self, role_arn: str) -> None:
        try:
            self._path(role_arn).unlink()
        except FileNotFoundError:
            raise NotFound(f"no credentials stored for role {role_arn}", role=role_arn) from None

    def roles(self) -> list[dict[str, str]]:
        """Each stored role and when its keys expire (never the keys)."""
        out = []
        for f in sorted(self.dir.iterdir()) if self.dir.is_dir() else []:
            if f.suffix == ".tmp":
                continue
            try:
                data = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            out.append(
                {"roleArn": data.get("RoleArn", ""), "expiration": data.get("Expiration", "")}
            )
        return out

    def get(self, role_arn: str, *, now: datetime | None = None) -> RoleCredentials | None:
        try:
            data = json.loads(self._path(role_arn).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None
        now = now or datetime.now(UTC)
        expiration = (
            _parse_expiration(data["Expiration"], "the store")
            if data.get("Expiration")
            else now + timedelta(seconds=ROLLING_EXPIRY_S)
        )
        return RoleCredentials(
            role_arn=role_arn,
            access_key_id=data["AccessKeyId"],
            secret_access_key=data["SecretAccessKey"],
            token=data.get("Token", ""),
            expiration=expiration,
        )

    async def fetch(self, role_arn: str) -> RoleCredentials | None:
        return await asyncio.to_thread(self.get, role_arn)
