"""agent.aws and agent.secret_sources without a network: what a valueFrom names, how
botocore's answers become nstask's errors (botocore's own Stubber at the client seam), the
STS source's cache and refresh (a fake AssumeRole and clock), and the order of sources (a
fake AWS lookup). moto's real server is in tests/integration/test_aws_secrets.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from botocore.stub import Stubber

from agent.aws import (
    AwsAccessDenied,
    AwsClients,
    AwsError,
    AwsNotFound,
    AwsUnavailable,
    ParameterRef,
    SecretsManagerRef,
    StsAssumeRole,
    aws_errors,
    credentials_hint,
    get_parameter,
    get_secret_value,
    parse_ref,
    session_name,
)
from agent.config import AgentConfig
from agent.credentials import RoleCredentials
from agent.errors import InvalidInput
from agent.secret_sources import SecretSources, check_sources
from agent.secrets import SecretNotFound, SecretStore
from agent.taskdef import parse_task_definition

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf"
SECRET = "s3cr3t-value-never-shown"
VID = "01234567-89ab-cdef-0123-456789abcdef"  # Secrets Manager: 32-64 characters


# -- what a valueFrom names ----------------------------------------------------------------
def test_secrets_manager_arns_and_ecs_suffixes() -> None:
    assert parse_ref(ARN, default_region="us-east-1") == SecretsManagerRef(ARN, ARN, "eu-west-1")
    r = parse_ref(f"{ARN}:password::", default_region="us-east-1")
    assert isinstance(r, SecretsManagerRef)
    assert (r.secret_id, r.json_key, r.version_stage, r.version_id) == (ARN, "password", "", "")
    r = parse_ref(f"{ARN}::AWSPREVIOUS:", default_region="us-east-1")
    assert isinstance(r, SecretsManagerRef) and r.version_stage == "AWSPREVIOUS"
    r = parse_ref(f"{ARN}:k::v-1", default_region="us-east-1")
    assert isinstance(r, SecretsManagerRef) and (r.json_key, r.version_id) == ("k", "v-1")
    with pytest.raises(InvalidInput, match="both a version stage"):
        parse_ref(f"{ARN}:k:AWSCURRENT:v-1", default_region="us-east-1")
    with pytest.raises(InvalidInput, match="too many fields"):
        parse_ref(f"{ARN}:a:b:c:d", default_region="us-east-1")


def test_ssm_arns_bare_names_and_other_arns() -> None:
    arn = "arn:aws:ssm:ap-south-1:123456789012:parameter/team/db"
    assert parse_ref(arn, default_region="us-east-1") == ParameterRef(arn, arn, "ap-south-1")
    assert parse_ref("team/db", default_region="us-east-2") == ParameterRef(
        "team/db", "team/db", "us-east-2"
    )
    with pytest.raises(InvalidInput, match="not a Secrets Manager or SSM"):
        parse_ref("arn:aws:s3:::bucket/key", default_region="us-east-1")


def test_session_names_fit_sts_rules() -> None:
    assert session_name("nstask-test/x y") == "nstask-nstask-test-x-y"
    assert len(session_name("n" * 100)) == 64


# -- botocore's answers as nstask's errors (botocore's Stubber) ----------------------------
class StubClients:
    """The ClientSource seam: one real botocore client per service, its HTTP replaced by
    botocore's Stubber."""

    def __init__(self, service: str) -> None:
        import botocore.session

        self.real = botocore.session.Session().create_client(
            service,
            region_name="eu-west-1",
            aws_access_key_id="AKIAUNIT",
            aws_secret_access_key="unit",
        )
        self.stub = Stubber(self.real)
        self.stub.activate()

    def client(self, service: str, *, region: str | None = None, creds: Any = None) -> Any:
        return self.real

    def endpoint_label(self, service: str, region: str | None = None) -> str:
        return "https://unit.example"


def _sm(answer: dict[str, Any] | None = None, **error: Any) -> StubClients:
    c = StubClients("secretsmanager")
    if error:
        c.stub.add_client_error("get_secret_value", **error)
    else:
        c.stub.add_response("get_secret_value", answer or {})
    return c


def _ref(suffix: str = "") -> SecretsManagerRef:
    r = parse_ref(ARN + suffix, default_region="us-east-1")
    assert isinstance(r, SecretsManagerRef)
    return r


def test_the_whole_value_and_a_json_key() -> None:
    assert get_secret_value(_sm({"SecretString": SECRET}), _ref(), None) == SECRET
    doc = json.dumps({"user": "u", "password": SECRET, "port": 5432, "opts": {"a": [1]}})
    for key, want in (("password", SECRET), ("port", "5432"), ("opts", '{"a":[1]}')):
        assert get_secret_value(_sm({"SecretString": doc}), _ref(f":{key}::"), None) == want


def test_json_key_errors_name_the_arn_and_never_the_value() -> None:
    doc = json.dumps({"password": SECRET})
    with pytest.raises(AwsNotFound) as missing:
        get_secret_value(_sm({"SecretString": doc}), _ref(":user::"), None)
    with pytest.raises(AwsError) as not_json:
        get_secret_value(_sm({"SecretString": SECRET}), _ref(":user::"), None)
    with pytest.raises(AwsError) as a_list:
        get_secret_value(_sm({"SecretString": json.dumps([SECRET])}), _ref(":user::"), None)
    with pytest.raises(AwsError) as binary:
        get_secret_value(_sm({"SecretBinary": SECRET.encode()}), _ref(), None)
    assert "no key 'user'" in missing.value.message
    assert "not a JSON object" in not_json.value.message
    assert "not a JSON object" in a_list.value.message
    assert "SecretBinary" in binary.value.message
    for e in (missing, not_json, a_list, binary):
        assert ARN in e.value.message and SECRET not in e.value.message


def test_version_stage_and_id_are_sent() -> None:
    c = StubClients("secretsmanager")
    c.stub.add_response(
        "get_secret_value",
        {"SecretString": "old"},
        {"SecretId": ARN, "VersionStage": "AWSPREVIOUS"},
    )
    c.stub.add_response(
        "get_secret_value", {"SecretString": "v1"}, {"SecretId": ARN, "VersionId": VID}
    )
    assert get_secret_value(c, _ref("::AWSPREVIOUS:"), None) == "old"
    assert get_secret_value(c, _ref(f":::{VID}"), None) == "v1"
    c.stub.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("code", "status", "message", "kind"),
    [
        ("ResourceNotFoundException", 400, "Secrets Manager can't find it.", AwsNotFound),
        ("AccessDeniedException", 400, "User: u is not authorized", AwsAccessDenied),
        ("UnrecognizedClientException", 400, "The security token is invalid", AwsAccessDenied),
        ("DecryptionFailure", 400, "KMS said no", AwsError),
        # moto's IAM enforcement: HTTP 403 whose message is an XML document.
        (
            "403",
            403,
            "<ErrorResponse><Error><Code>AccessDenied</Code><Message>User: u is not "
            "authorized to perform: secretsmanager:GetSecretValue</Message></Error>"
            "</ErrorResponse>",
            AwsAccessDenied,
        ),
    ],
)
def test_service_errors_map_to_nstask_errors(
    code: str, status: int, message: str, kind: type[Exception]
) -> None:
    c = _sm(service_error_code=code, service_message=message, http_status_code=status)
    with pytest.raises(AwsError if kind is AwsAccessDenied else kind) as info:
        get_secret_value(c, _ref(), None)
    assert type(info.value) is kind
    text = str(info.value)
    assert ARN in text and "Secrets Manager" in text
    assert "User: u is not" in text or "can't find" in text or "token" in text or "KMS" in text
    assert "<" not in text


def test_ssm_parameter_is_asked_decrypted() -> None:
    c = StubClients("ssm")
    arn = "arn:aws:ssm:eu-west-1:123456789012:parameter/team/db"
    c.stub.add_response(
        "get_parameter",
        {"Parameter": {"Name": "/team/db", "Value": SECRET, "Type": "SecureString"}},
        {"Name": arn, "WithDecryption": True},
    )
    c.stub.add_client_error("get_parameter", "ParameterNotFound", "Parameter /x not found.")
    ref = parse_ref(arn, default_region="us-east-1")
    assert isinstance(ref, ParameterRef)
    assert get_parameter(c, ref, None) == SECRET
    with pytest.raises(AwsNotFound, match="SSM parameter x: SSM Parameter Store answered"):
        get_parameter(c, ParameterRef("x", "x", "eu-west-1"), None)


def test_an_endpoint_that_does_not_answer_is_unavailable() -> None:
    with (
        pytest.raises(AwsUnavailable) as info,
        aws_errors("secret X", service="Secrets Manager", endpoint="http://127.0.0.1:9"),
    ):
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    assert info.value.message == (
        "secret X: Secrets Manager at http://127.0.0.1:9 did not answer (EndpointConnectionError)"
    )


# -- whose credentials -------------------------------------------------------------------
def test_credentials_hint_looks_at_variables_and_files_only(tmp_path: Path) -> None:
    nothing = {"HOME": str(tmp_path)}
    assert not credentials_hint(nothing)
    assert credentials_hint({**nothing, "AWS_ACCESS_KEY_ID": "AKIA"})
    assert credentials_hint({**nothing, "AWS_PROFILE": "dev"})
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text("[default]\n")
    assert credentials_hint(nothing)
    assert not credentials_hint({**nothing, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"})


def test_no_botocore_on_the_cli_path_or_in_an_agent_that_does_not_use_aws() -> None:
    code = (
        "import sys, cli, cli_fast, agent.engine, agent.daemon, agent.lifecycle.start, "
        "agent.secret_sources, agent.aws\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('botocore', 'boto3')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


# -- STS AssumeRole: cache and refresh (a fake AssumeRole, a fake clock) ----------------------
class FakeSts:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)
        self.calls: list[tuple[str, str, int]] = []

    def assume(self, role: str, session: str, duration: int) -> RoleCredentials:
        self.calls.append((role, session, duration))
        n = len(self.calls)
        return RoleCredentials(
            role_arn=role,
            access_key_id=f"ASIA{n}",
            secret_access_key=f"secret{n}",
            token=f"token{n}",
            expiration=self.now + timedelta(seconds=duration),
        )


def _sts(fake: FakeSts, *, available: bool = True) -> StsAssumeRole:
    return StsAssumeRole(
        AwsClients(region="us-east-1", endpoints={}),
        duration_seconds=3600,
        refresh_margin=300,
        session="nstask-unit",
        assume=fake.assume,
        available=lambda: available,
        now=lambda: fake.now,
    )


def test_credentials_are_cached_per_role_and_refreshed_before_expiry() -> None:
    fake = FakeSts()
    sts = _sts(fake)

    async def scenario() -> None:
        first = await sts.fetch("arn:aws:iam::1:role/a")
        assert first is not None and first.access_key_id == "ASIA1"
        fake.now += timedelta(seconds=3600 - 301)  # 301 s left: still good
        assert await sts.fetch("arn:aws:iam::1:role/a") is first
        other = await sts.fetch("arn:aws:iam::1:role/b")  # another role: its own
        assert other is not None and other.access_key_id == "ASIA2"
        fake.now += timedelta(seconds=2)  # 299 s left: renewed
        again = await sts.fetch("arn:aws:iam::1:role/a")
        assert again is not None and again.access_key_id == "ASIA3"
        assert again.expiration > first.expiration

    asyncio.run(scenario())
    assert fake.calls[0] == ("arn:aws:iam::1:role/a", "nstask-unit", 3600)
    assert len(fake.calls) == 3


def test_concurrent_fetches_of_a_role_make_one_call() -> None:
    fake = FakeSts()
    sts = _sts(fake)

    async def scenario() -> list[RoleCredentials | None]:
        return await asyncio.gather(*(sts.fetch("arn:aws:iam::1:role/a") for _ in range(5)))

    got = asyncio.run(scenario())
    assert len(fake.calls) == 1 and all(g is got[0] for g in got)


def test_no_credentials_of_its_own_means_the_source_does_not_know_the_role() -> None:
    fake = FakeSts()
    assert asyncio.run(_sts(fake, available=False).fetch("arn:aws:iam::1:role/a")) is None
    assert fake.calls == []


# -- the order of sources (a fake AWS lookup) ------------------------------------------------
def _sources(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    order: tuple[str, ...],
    aws: dict[str, str | Exception],
) -> tuple[SecretSources, list[Any]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNIT")
    s = SecretSources(
        AgentConfig(state_dir=tmp_path, secret_sources=order), SecretStore(tmp_path / "secrets")
    )
    seen: list[Any] = []

    def from_aws(value_from: str, creds: Any) -> str:
        seen.append((value_from, creds))
        answer = aws.get(value_from, AwsNotFound(f"secret {value_from}: not there"))
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(s, "aws_available", lambda: True)
    monkeypatch.setattr(s, "_from_aws", from_aws)
    return s, seen


def _td(*value_froms: str, role: str | None = None) -> Any:
    d: dict[str, Any] = {
        "family": "f",
        "containerDefinitions": [
            {
                "name": "c",
                "image": "busybox",
                "secrets": [{"name": f"S{i}", "valueFrom": v} for i, v in enumerate(value_froms)],
            }
        ],
    }
    return parse_task_definition(d)


def test_local_first_then_aws_and_the_other_way_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, seen = _sources(tmp_path, monkeypatch, ("local", "aws"), {"a": "from-aws", "b": "aws-b"})
    s.store.put("a", "from-local")
    v = asyncio.run(s.resolve(_td("a", "b"), execution_role=None))
    assert (v.value_of("a"), v.value_of("b")) == ("from-local", "aws-b")
    assert [x for x, _ in seen] == ["b"]
    s2, _ = _sources(tmp_path, monkeypatch, ("aws", "local"), {"a": "from-aws"})
    v = asyncio.run(s2.resolve(_td("a"), execution_role=None))
    assert v.value_of("a") == "from-aws"


def test_not_found_everywhere_says_what_each_source_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, _ = _sources(tmp_path, monkeypatch, ("local", "aws"), {})
    with pytest.raises(SecretNotFound) as info:
        asyncio.run(s.resolve(_td("team/x"), execution_role=None))
    assert info.value.message == (
        "secret team/x not found (local store: no secret 'team/x'; AWS: secret team/x: not there)"
    )


def test_access_denied_stops_the_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s, _ = _sources(
        tmp_path, monkeypatch, ("aws", "local"), {"a": AwsAccessDenied("secret a: access denied")}
    )
    s.store.put("a", "from-local")
    with pytest.raises(AwsAccessDenied):
        asyncio.run(s.resolve(_td("a"), execution_role=None))


def test_the_execution_role_is_used_and_an_unreachable_sts_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, seen = _sources(tmp_path, monkeypatch, ("local", "aws"), {"a": "v"})
    fake = FakeSts()
    monkeypatch.setattr(s, "_sts", _sts(fake))
    asyncio.run(s.resolve(_td("a"), execution_role="arn:aws:iam::1:role/exec"))
    assert seen[-1][1].access_key_id == "ASIA1"  # the role's credentials, not the agent's

    def unreachable(role: str, session: str, duration: int) -> RoleCredentials:
        raise AwsUnavailable("role: STS at x did not answer")

    monkeypatch.setattr(s, "_sts", _sts(fake))
    s.sts._assume = unreachable
    asyncio.run(s.resolve(_td("a"), execution_role="arn:aws:iam::1:role/exec"))
    assert seen[-1][1] is None  # the agent's own credentials

    def denied(role: str, session: str, duration: int) -> RoleCredentials:
        raise AwsAccessDenied(f"role {role}: access denied: STS answered AccessDenied: no")

    s.sts._assume = denied
    with pytest.raises(AwsAccessDenied, match="role arn:aws:iam::1:role/exec"):
        asyncio.run(s.resolve(_td("a"), execution_role="arn:aws:iam::1:role/exec"))


def test_no_sts_call_when_the_local_store_has_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, seen = _sources(tmp_path, monkeypatch, ("local", "aws"), {})
    fake = FakeSts()
    monkeypatch.setattr(s, "_sts", _sts(fake))
    s.store.put("a", "local")
    asyncio.run(s.resolve(_td("a"), execution_role="arn:aws:iam::1:role/exec"))
    assert fake.calls == [] and seen == []


def test_submit_refuses_only_what_no_source_can_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    store = SecretStore(tmp_path / "secrets")
    store.put("have", "x")
    local = SecretSources(AgentConfig(state_dir=tmp_path), store)
    assert local.missing_at_submit(_td("have", "lack")) == ["lack"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNIT")
    assert local.missing_at_submit(_td("have", "lack")) == []  # AWS may have it
    only_local = SecretSources(AgentConfig(state_dir=tmp_path, secret_sources=("local",)), store)
    assert only_local.missing_at_submit(_td("have", "lack")) == ["lack"]


def test_bad_source_orders_are_refused() -> None:
    assert check_sources(["aws"]) == ("aws",)
    for bad in ([], ["local", "local"], ["vault"]):
        with pytest.raises(InvalidInput, match="secret_sources"):
            check_sources(bad)


def test_execution_role_arn_is_used_not_warned_about_and_must_be_a_string() -> None:
    from agent.errors import TaskDefinitionError

    d: dict[str, Any] = {
        "executionRoleArn": "arn:aws:iam::1:role/exec",
        "containerDefinitions": [{"name": "c", "image": "busybox"}],
    }
    assert not any("executionRoleArn" in w for w in parse_task_definition(d).warnings)
    with pytest.raises(TaskDefinitionError, match="executionRoleArn: must be a string"):
        parse_task_definition({**d, "executionRoleArn": 7})


def test_the_secrets_step_fills_environments_and_log_secret_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from agent.lifecycle import secrets as step
    from agent.store import TaskRecord

    arn = "arn:aws:secretsmanager:us-east-1:1:secret:db-AbCdEf"
    s, seen = _sources(
        tmp_path, monkeypatch, ("local", "aws"), {f"{arn}:pw::": "pw", f"{arn}:token::": "tok"}
    )
    fake = FakeSts()
    monkeypatch.setattr(s, "_sts", _sts(fake))
    definition: dict[str, Any] = {
        "family": "f",
        "executionRoleArn": "arn:aws:iam::1:role/exec",
        "containerDefinitions": [
            {
                "name": "c",
                "image": "busybox",
                "environment": [{"name": "PW", "value": "overridden by the secret"}],
                "secrets": [{"name": "PW", "valueFrom": f"{arn}:pw::"}],
                "logConfiguration": {
                    "logDriver": "fluentd",
                    "options": {"fluentd-address": "unix:///tmp/x.sock"},
                    "secretOptions": [{"name": "token", "valueFrom": f"{arn}:token::"}],
                },
            }
        ],
    }
    td = parse_task_definition(definition)
    task = TaskRecord(
        id="t1",
        family="f",
        definition=definition,
        last_status="PROVISIONING",
        desired_status="RUNNING",
        created_at=0.0,
    )
    ctx: Any = SimpleNamespace(secret_sources=s)
    resolved = asyncio.run(step.resolve(ctx, task, td, {}))
    assert resolved.environment == {"c": ["PW=pw"]}
    assert resolved.log_secrets == {"c": {"token": "tok"}}
    assert [c for _, c in seen] and all(c.access_key_id == "ASIA1" for _, c in seen)
    assert fake.calls[0][0] == "arn:aws:iam::1:role/exec"
    assert "secrets" in task.timings


def test_the_aws_settings_come_from_nstask_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.config import load_config

    assert load_config().secret_sources == ("local", "aws")
    assert load_config().region == "us-east-1" and load_config().sts_endpoint == ""
    monkeypatch.setenv("NSTASK_SECRET_SOURCES", "aws,local")
    monkeypatch.setenv("NSTASK_REGION", "eu-central-1")
    monkeypatch.setenv("NSTASK_SSM_ENDPOINT", "http://127.0.0.1:4566")
    monkeypatch.setenv("NSTASK_STS_DURATION", "900")
    monkeypatch.setenv("NSTASK_STS_REFRESH_MARGIN", "60.5")
    c = load_config()
    assert c.secret_sources == ("aws", "local") and c.region == "eu-central-1"
    assert c.ssm_endpoint == "http://127.0.0.1:4566"
    assert (c.sts_duration, c.sts_refresh_margin) == (900, 60.5)
