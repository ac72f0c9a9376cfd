"""AWS, through botocore: Secrets Manager and SSM Parameter Store values for `secrets[]`, and
STS AssumeRole (task roles and the execution role). The only module that imports botocore,
and the only one that turns botocore's errors into nstask's.

botocore is imported inside the functions that call AWS, never at this module's top, so
neither the CLI nor an agent that never talks to AWS pays for it. Its calls block: the
agent runs them with asyncio.to_thread. botocore rather than aiobotocore: it is the library
every AWS SDK for Python is built on, it brings no second HTTP stack into the agent and it
pins nothing the agent uses (aiobotocore pins exact botocore and aiohttp ranges); a
secret lookup per task start and an AssumeRole per role and hour do not need async I/O.

Whose credentials: the agent's own, from botocore's standard chain in the agent's process
environment (AWS_ACCESS_KEY_ID..., AWS_PROFILE and the shared files, web identity, SSO,
the container provider), without the EC2 instance metadata provider: asking
169.254.169.254 costs seconds off EC2 and is a network call this agent never makes
unasked. AWS is "on" only when that chain finds credentials.

Secret values and credentials never appear in a log line or an error message here: errors
name the ARN, the service and the service's message, never a value. botocore's own DEBUG
logging would print response bodies, so its loggers are held at INFO.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent.credentials import RoleCredentials
from agent.errors import InvalidInput, NotFound, NstaskError, Unavailable

log = structlog.get_logger("nstask.aws")

__all__ = [
    "AwsAccessDenied",
    "AwsClients",
    "AwsError",
    "AwsNotFound",
    "AwsUnavailable",
    "ClientSource",
    "ParameterRef",
    "SecretsManagerRef",
    "StsAssumeRole",
    "credentials_hint",
    "get_parameter",
    "get_secret_value",
    "parse_ref",
]


# -- errors ------------------------------------------------------------------------------
#   NstaskError
#   +-- AwsError           the service answered with an error (bad request, KMS, ...)
#   |   +-- AwsAccessDenied    the credentials used may not do this
#   +-- NotFound
#   |   +-- AwsNotFound        the secret, version, parameter or JSON key does not exist
#   +-- Unavailable
#       +-- AwsUnavailable     the endpoint did not answer (or no credentials at all)


class AwsError(NstaskError):
    kind = "aws_error"


class AwsAccessDenied(AwsError):
    http_status = 403
    kind = "aws_access_denied"


class AwsNotFound(NotFound):
    kind = "aws_not_found"


class AwsUnavailable(Unavailable):
    kind = "aws_unavailable"


_DENIED = {
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
}
_MISSING = {"ResourceNotFoundException", "ParameterNotFound", "ParameterVersionNotFound"}
_XML_MESSAGE = re.compile(r"<Message>(.*?)</Message>", re.S)


def _service_message(error: Mapping[str, Any]) -> str:
    msg = str(error.get("Message") or error.get("message") or "")
    # moto's IAM enforcement answers JSON-protocol calls with an XML body, which botocore
    # hands over whole as the message: keep only its <Message>.
    m = _XML_MESSAGE.search(msg) if msg.lstrip().startswith("<") else None
    return (m.group(1) if m else msg).strip()


@contextmanager
def aws_errors(what: str, *, service: str, endpoint: str) -> Iterator[None]:
    """botocore's exceptions as nstask's, in one place. `what` names the object (an ARN, a
    parameter, a role), never a value."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    try:
        yield
    except ClientError as e:
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        msg = _service_message(err)
        detail = f"{service} answered {code or status}: {msg}" if msg else f"{service}: {code}"
        kw = {"what": what, "service": service, "code": code}
        if code in _MISSING:
            raise AwsNotFound(f"{what}: {detail}", **kw) from None
        if code in _DENIED or status == 403:
            raise AwsAccessDenied(f"{what}: access denied: {detail}", **kw) from None
        raise AwsError(f"{what}: {detail}", **kw) from None
    except NoCredentialsError:
        raise AwsUnavailable(
            f"{what}: the agent has no AWS credentials for {service}", what=what
        ) from None
    except (EndpointConnectionError, ConnectionError, ReadTimeoutError) as e:
        raise AwsUnavailable(
            f"{what}: {service} at {endpoint} did not answer ({type(e).__name__})",
            what=what,
            service=service,
            endpoint=endpoint,
        ) from None
    except BotoCoreError as e:  # parameter validation and the like: no value in them
        raise AwsError(f"{what}: {service}: {e}", what=what, service=service) from None


# -- whose credentials -----------------------------------------------------------------
_CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


def credentials_hint(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the agent's environment names anything botocore's chain could take
    credentials from: a variable or a shared credentials/config file. No botocore import,
    no network: the agent asks this before it loads botocore at all; AwsClients.available
    then asks the chain itself."""
    env = os.environ if environ is None else environ
    if any(env.get(v) for v in _CREDENTIAL_VARIABLES):
        return True
    home = Path(env.get("HOME") or "~").expanduser()
    files = (
        env.get("AWS_SHARED_CREDENTIALS_FILE") or str(home / ".aws" / "credentials"),
        env.get("AWS_CONFIG_FILE") or str(home / ".aws" / "config"),
    )
    return any(Path(f).is_file() for f in files)


@dataclass(frozen=True)
class _Key:
    access_key_id: str
    secret_access_key: str
    token: str


class AwsClients:
    """The agent's botocore session (its own credentials) and clients per service, region
    and credentials, made once and shared (botocore clients are thread-safe; making them is
    not, hence the lock). Blocking: call from a thread."""

    def __init__(self, *, region: str, endpoints: Mapping[str, str]) -> None:
        self.region = region
        self.endpoints = {k: v for k, v in endpoints.items() if v}
        self._lock = threading.Lock()
        self._session: Any = None
        self._available: bool | None = None
        self._clients: dict[tuple[str, str, _Key | None], Any] = {}

    def endpoint_label(self, service: str, region: str | None = None) -> str:
        return self.endpoints.get(service) or f"{service}.{region or self.region}.amazonaws.com"

    def _get_session(self) -> Any:
        if self._session is None:
            import botocore.session

            for name in ("botocore", "urllib3"):  # their DEBUG lines carry bodies
                logging.getLogger(name).setLevel(logging.INFO)
            session = botocore.session.Session()
            # No EC2 instance metadata: see the module's docstring.
            session.get_component("credential_provider").remove("iam-role")
            self._session = session
        return self._session

    def available(self) -> bool:
        """Whether the agent has AWS credentials of its own (asked once, then remembered)."""
        with self._lock:
            if self._available is None:
                try:
                    self._available = self._get_session().get_credentials() is not None
                except Exception as e:  # a broken profile: AWS stays off, and says why
                    log.warning("aws_credentials_unusable", error=str(e))
                    self._available = False
                log.info("aws_credentials", available=self._available)
            return self._available

    def client(self, service: str, *, region: str | None = None, creds: _Key | None = None) -> Any:
        region = region or self.region
        with self._lock:
            key = (service, region, creds)
            if key not in self._clients:
                from botocore.config import Config

                kw: dict[str, Any] = {}
                if creds is not None:
                    kw = {
                        "aws_access_key_id": creds.access_key_id,
                        "aws_secret_access_key": creds.secret_access_key,
                        "aws_session_token": creds.token,
                    }
                self._clients[key] = self._get_session().create_client(
                    service,
                    region_name=region,
                    endpoint_url=self.endpoints.get(service),
                    config=Config(
                        connect_timeout=3,
                        read_timeout=10,
                        retries={"max_attempts": 3, "mode": "standard"},
                        user_agent_extra="nstask",
                    ),
                    **kw,
                )
            return self._clients[key]


class ClientSource(Protocol):
    """What the calls below need of AwsClients (unit tests give stubbed clients)."""

    def client(
        self, service: str, *, region: str | None = None, creds: _Key | None = None
    ) -> Any: ...

    def endpoint_label(self, service: str, region: str | None = None) -> str: ...


def key_of(creds: RoleCredentials | None) -> _Key | None:
    if creds is None:
        return None
    return _Key(creds.access_key_id, creds.secret_access_key, creds.token)


# -- what a valueFrom names -------------------------------------------------------------
@dataclass(frozen=True)
class SecretsManagerRef:
    """`arn:aws:secretsmanager:<region>:<account>:secret:<name>[:<json-key>:<version-stage>:
    <version-id>]`, as ECS reads it: the first seven fields are the secret (a full ARN, or
    a partial one without the 6-character suffix: Secrets Manager takes both); an empty
    json-key means the whole value; version-stage or version-id (at most one) pick the
    version, neither means AWSCURRENT."""

    arn: str  # the valueFrom, as the user wrote it (for messages)
    secret_id: str
    region: str
    json_key: str = ""
    version_stage: str = ""
    version_id: str = ""


@dataclass(frozen=True)
class ParameterRef:
    """An SSM parameter: its ARN `arn:aws:ssm:<region>:<account>:parameter/<name>` (SSM's
    GetParameter takes the ARN as the name) or a bare name, in the agent's region."""

    arn: str
    name: str
    region: str


_ARN = re.compile(r"arn:(aws[a-z-]*):([a-z0-9-]+):([^:]*):([^:]*):(.+)")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")


def parse_ref(value_from: str, *, default_region: str) -> SecretsManagerRef | ParameterRef:
    """Which service and object a `valueFrom` names; InvalidInput naming it when malformed."""
    m = _ARN.fullmatch(value_from)
    if m is None:
        if value_from.startswith("arn:"):
            raise InvalidInput(f"{value_from}: not a Secrets Manager or SSM parameter ARN")
        return ParameterRef(value_from, value_from, default_region)
    service, region = m.group(2), m.group(3) or default_region
    # Placeholders (${AWS_REGION}, ACCOUNT_ID) pass validation, as in ECS (issue 12); here,
    # at run time, they are a clear error rather than a botocore endpoint failure.
    if m.group(3) and not _REGION.fullmatch(m.group(3)):
        raise InvalidInput(f"{value_from}: region {m.group(3)!r} is not an AWS region")
    if m.group(4) and not re.fullmatch(r"[0-9]{12}", m.group(4)):
        raise InvalidInput(f"{value_from}: account {m.group(4)!r} is not a 12-digit account id")
    if service == "ssm" and m.group(5).startswith("parameter/"):
        return ParameterRef(value_from, value_from, region)
    if service == "secretsmanager" and m.group(5).startswith("secret:"):
        parts = value_from.split(":")
        extra = parts[7:]
        if len(extra) > 3:
            raise InvalidInput(
                f"{value_from}: too many fields after the secret's name "
                "(at most :json-key:version-stage:version-id)"
            )
        json_key, stage, version = (*extra, "", "", "")[:3]
        if stage and version:
            raise InvalidInput(
                f"{value_from}: names both a version stage ({stage}) and a version id; "
                "ECS takes at most one"
            )
        return SecretsManagerRef(value_from, ":".join(parts[:7]), region, json_key, stage, version)
    raise InvalidInput(f"{value_from}: not a Secrets Manager or SSM parameter ARN")


def get_secret_value(clients: ClientSource, ref: SecretsManagerRef, creds: _Key | None) -> str:
    """The secret's value (or its JSON key's). Blocking."""
    client = clients.client("secretsmanager", region=ref.region, creds=creds)
    args: dict[str, str] = {"SecretId": ref.secret_id}
    if ref.version_stage:
        args["VersionStage"] = ref.version_stage
    if ref.version_id:
        args["VersionId"] = ref.version_id
    what = f"secret {ref.arn}"
    with aws_errors(
        what, service="Secrets Manager", endpoint=clients.endpoint_label("secretsmanager")
    ):
        answer = client.get_secret_value(**args)
    text = answer.get("SecretString")
    if text is None:
        raise AwsError(f"{what}: holds a binary value (SecretBinary); ECS takes SecretString only")
    if not ref.json_key:
        return str(text)
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise AwsError(
            f"{what}: names JSON key {ref.json_key!r}, but the secret's value is not a JSON object"
        )
    if ref.json_key not in doc:
        raise AwsNotFound(f"{what}: the secret's JSON object has no key {ref.json_key!r}")
    value = doc[ref.json_key]
    # A string as it is; any other JSON value (number, object...) as its JSON text.
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def get_parameter(clients: ClientSource, ref: ParameterRef, creds: _Key | None) -> str:
    """The parameter's value, SecureString decrypted. Blocking."""
    client = clients.client("ssm", region=ref.region, creds=creds)
    with aws_errors(
        f"SSM parameter {ref.arn}",
        service="SSM Parameter Store",
        endpoint=clients.endpoint_label("ssm", ref.region),
    ):
        answer = client.get_parameter(Name=ref.name, WithDecryption=True)
    return str(answer["Parameter"]["Value"])


# -- STS AssumeRole as a credential source ----------------------------------------------
AssumeFn = Callable[[str, str, int], RoleCredentials]
_SESSION_NAME_BAD = re.compile(r"[^\w+=,.@-]")


def session_name(label: str) -> str:
    """An STS RoleSessionName (2-64 of [\\w+=,.@-]) from a label such as the namespace."""
    return ("nstask-" + _SESSION_NAME_BAD.sub("-", label))[:64]


class StsAssumeRole:
    """agent.credentials.CredentialSource: a role's credentials from STS AssumeRole, with
    the agent's own credentials. One set per role, shared by every task of that role (a
    session name per task would need the task in fetch()); refreshed once fewer than
    `refresh_margin` seconds are left, so a fetch after that returns new credentials.
    Answers None when the agent has no AWS credentials of its own: the role is then unknown
    to this source."""

    name = "sts"

    def __init__(
        self,
        clients: AwsClients,
        *,
        duration_seconds: int = 3600,
        refresh_margin: float = 300.0,
        session: str = "nstask",
        assume: AssumeFn | None = None,
        available: Callable[[], bool] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.clients = clients
        self.duration_seconds = duration_seconds
        self.refresh_margin = refresh_margin
        self.session = session
        self._assume = assume or self._assume_with_sts
        self._available = available or clients.available
        self._now = now
        self._cache: dict[str, RoleCredentials] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def fetch(self, role_arn: str) -> RoleCredentials | None:
        if not await asyncio.to_thread(self._available):
            return None
        lock = self._locks.setdefault(role_arn, asyncio.Lock())
        async with lock:  # one AssumeRole per role at a time; the others take its answer
            cached = self._cache.get(role_arn)
            if cached is not None and not cached.expires_within(
                self.refresh_margin, now=self._now()
            ):
                return cached
            creds = await asyncio.to_thread(
                self._assume, role_arn, self.session, self.duration_seconds
            )
            self._cache[role_arn] = creds
            log.info("sts_assumed_role", role=role_arn, expiration=creds.expiration.isoformat())
            return creds

    def forget(self, role_arn: str) -> None:
        self._cache.pop(role_arn, None)

    def _assume_with_sts(self, role_arn: str, session: str, duration: int) -> RoleCredentials:
        client = self.clients.client("sts")
        with aws_errors(
            f"role {role_arn}", service="STS", endpoint=self.clients.endpoint_label("sts")
        ):
            answer = client.assume_role(
                RoleArn=role_arn, RoleSessionName=session, DurationSeconds=duration
            )
        c = answer["Credentials"]
        expiration = c["Expiration"]
        if not isinstance(expiration, datetime):
            expiration = datetime.fromisoformat(str(expiration))
        if expiration.tzinfo is None:
            expiration = expiration.replace(tzinfo=UTC)
        return RoleCredentials(
            role_arn=role_arn,
            access_key_id=c["AccessKeyId"],
            secret_access_key=c["SecretAccessKey"],
            token=c["SessionToken"],
            expiration=expiration,
        )
