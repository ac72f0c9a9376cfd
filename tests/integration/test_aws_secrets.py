"""Secrets from AWS and STS AssumeRole against moto's server on loopback (a real HTTP server
speaking Secrets Manager, SSM, STS and IAM): the resolver and the credential source called
directly, then real tasks through an agent whose own credentials and endpoints point there.
Every agent test ends with the leak check."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import start_agent, stop_agent
from moto_support import REGION, TEST_KEYS, MotoServer
from support import Agent, busybox_task, ctr, leaks, write_taskdef

from agent.aws import AwsAccessDenied, AwsClients, StsAssumeRole
from agent.config import AgentConfig
from agent.secret_sources import SecretSources
from agent.secrets import SecretNotFound, SecretStore
from agent.taskdef import parse_task_definition

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/nstask-test-execution"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def aws_objects(moto: MotoServer) -> dict[str, str]:
    """Secrets and parameters with values unique to this run; what the tests look for."""
    tag = uuid.uuid4().hex[:8]
    v = {
        "plain": f"plain-{tag}",
        "user": f"user-{tag}",
        "password": f"pw-{tag}",
        "old": f"old-{tag}",
        "new": f"new-{tag}",
        "secure": f"secure-{tag}",
        "flat": f"flat-{tag}",
    }
    sm = moto.client("secretsmanager")
    v["plain_arn"] = sm.create_secret(Name=f"nstask/{tag}/plain", SecretString=v["plain"])["ARN"]
    v["json_arn"] = sm.create_secret(
        Name=f"nstask/{tag}/db",
        SecretString=json.dumps({"username": v["user"], "password": v["password"], "port": 5432}),
    )["ARN"]
    v["versioned_arn"] = sm.create_secret(Name=f"nstask/{tag}/rotated", SecretString=v["old"])[
        "ARN"
    ]
    sm.put_secret_value(SecretId=v["versioned_arn"], SecretString=v["new"])
    ssm = moto.client("ssm")
    ssm.put_parameter(Name=f"/nstask/{tag}/secure", Value=v["secure"], Type="SecureString")
    ssm.put_parameter(Name=f"nstask-{tag}-flat", Value=v["flat"], Type="String")
    v["secure_arn"] = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/nstask/{tag}/secure"
    v["flat_name"] = f"nstask-{tag}-flat"
    v["missing_arn"] = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:nstask/{tag}/none"
    v["tag"] = tag
    return v


def _sources(moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SecretSources:
    for k, val in moto.agent_env(tmp_path).items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, val)
    config = AgentConfig(
        state_dir=tmp_path,
        region=REGION,
        secret_sources=("local", "aws"),
        sts_endpoint=moto.url,
        secretsmanager_endpoint=moto.url,
        ssm_endpoint=moto.url,
    )
    return SecretSources(config, SecretStore(tmp_path / "secrets"))


def _td(*value_froms: str) -> Any:
    return parse_task_definition(
        busybox_task(
            "aws",
            ["true"],
            secrets=[{"name": f"S{i}", "valueFrom": v} for i, v in enumerate(value_froms)],
        )
    )


# -- the resolver, called directly -------------------------------------------------------
def test_secrets_manager_and_ssm_values_are_resolved(
    moto: MotoServer, aws_objects: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    o = aws_objects
    refs = {
        o["plain_arn"]: o["plain"],  # full ARN
        o["plain_arn"][:-7]: o["plain"],  # partial ARN (no random suffix)
        f"{o['json_arn']}:password::": o["password"],  # JSON key
        f"{o['json_arn']}:port::": "5432",  # a JSON number, as its text
        f"{o['versioned_arn']}::AWSPREVIOUS:": o["old"],  # version stage
        f"{o['versioned_arn']}::AWSCURRENT:": o["new"],
        o["versioned_arn"]: o["new"],  # no stage: AWSCURRENT
        o["secure_arn"]: o["secure"],  # SecureString, decrypted
        o["flat_name"]: o["flat"],  # a bare name: SSM in the agent's region
    }
    values = asyncio.run(
        _sources(moto, tmp_path, monkeypatch).resolve(_td(*refs), execution_role=None)
    )
    for ref, expected in refs.items():
        assert values.value_of(ref) == expected, ref
    assert o["plain"] not in repr(values)


def test_version_id_selects_that_version(
    moto: MotoServer, aws_objects: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sm = moto.client("secretsmanager")
    versions = sm.list_secret_version_ids(SecretId=aws_objects["versioned_arn"])["Versions"]
    old = next(v["VersionId"] for v in versions if "AWSPREVIOUS" in v["VersionStages"])
    ref = f"{aws_objects['versioned_arn']}:::{old}"
    values = asyncio.run(
        _sources(moto, tmp_path, monkeypatch).resolve(_td(ref), execution_role=None)
    )
    assert values.value_of(ref) == aws_objects["old"]


def test_the_local_store_answers_first(
    moto: MotoServer, aws_objects: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = _sources(moto, tmp_path, monkeypatch)
    sources.store.put(f"nstask/{aws_objects['tag']}/plain", "from-the-local-store")
    values = asyncio.run(sources.resolve(_td(aws_objects["plain_arn"]), execution_role=None))
    assert values.value_of(aws_objects["plain_arn"]) == "from-the-local-store"


@pytest.mark.parametrize(
    ("which", "expect"),
    [
        ("missing_arn", "Secrets Manager"),
        ("missing_param", "SSM Parameter Store"),
        ("missing_key", "no key 'nokey'"),
        ("not_json", "not a JSON object"),
    ],
)
def test_missing_secrets_name_the_arn_and_what_each_source_said(
    moto: MotoServer,
    aws_objects: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    which: str,
    expect: str,
) -> None:
    o = aws_objects
    ref = {
        "missing_arn": o["missing_arn"],
        "missing_param": f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/nstask/{o['tag']}/none",
        "missing_key": f"{o['json_arn']}:nokey::",
        "not_json": f"{o['plain_arn']}:somekey::",
    }[which]
    with pytest.raises(Exception) as info:
        asyncio.run(_sources(moto, tmp_path, monkeypatch).resolve(_td(ref), execution_role=None))
    msg = str(info.value)
    assert ref in msg and expect in msg
    if which in ("missing_arn", "missing_param"):
        assert isinstance(info.value, SecretNotFound)
        assert "local store: no secret" in msg  # which source said what
    for value in (o["plain"], o["password"], o["user"]):
        assert value not in msg


def test_access_denied_names_the_arn_and_the_service_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # moto enforces IAM after the 4 set-up calls below: a user with no policy is denied.
    server = MotoServer(no_auth_actions=4)
    try:
        iam = server.client("iam")
        iam.create_user(UserName="nstask-denied")
        key = iam.create_access_key(UserName="nstask-denied")["AccessKey"]
        arn = server.client("secretsmanager").create_secret(
            Name="nstask/locked", SecretString="locked-value"
        )["ARN"]
        server.client("ssm").put_parameter(Name="/nstask/locked", Value="x", Type="SecureString")
        keys = {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
        sources = _sources(server, tmp_path, monkeypatch)
        for k, v in keys.items():
            monkeypatch.setenv(k, v)
        for ref, action in (
            (arn, "secretsmanager:GetSecretValue"),
            (f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/nstask/locked", "ssm:GetParameter"),
        ):
            with pytest.raises(AwsAccessDenied) as info:
                asyncio.run(sources.resolve(_td(ref), execution_role=None))
            assert ref in info.value.message and "access denied" in info.value.message
            assert f"not authorized to perform: {action}" in info.value.message
            assert "<" not in info.value.message  # the service's message, not its XML
            assert "locked-value" not in info.value.message
        # STS too: the role source names the role and the service's message.
        sts = StsAssumeRole(AwsClients(region=REGION, endpoints={"sts": server.url}))
        with pytest.raises(AwsAccessDenied) as denied:
            asyncio.run(sts.fetch(ROLE))
        assert ROLE in denied.value.message and "sts:AssumeRole" in denied.value.message
    finally:
        server.stop()


# -- STS AssumeRole ----------------------------------------------------------------------
def test_sts_assume_role_returns_credentials_and_refreshes_before_expiry(
    moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = _sources(moto, tmp_path, monkeypatch)
    # 900 s credentials renewed when fewer than 899 s are left: a second later they are.
    sts = StsAssumeRole(
        sources.clients,
        duration_seconds=900,
        refresh_margin=899,
        available=sources.aws_available,
    )

    async def scenario() -> list[Any]:
        first = await sts.fetch(ROLE)
        again = await sts.fetch(ROLE)
        await asyncio.sleep(1.2)
        later = await sts.fetch(ROLE)
        return [first, again, later]

    first, again, later = asyncio.run(scenario())
    assert first is not None and later is not None
    assert first.role_arn == ROLE and first.access_key_id.startswith("ASIA")
    assert first.secret_access_key and first.token
    remaining = (first.expiration - later.expiration).total_seconds()
    assert -900 < remaining < 0  # the refresh has a later expiry
    assert again is first  # cached while far from expiry
    assert later.access_key_id != first.access_key_id  # refreshed: new credentials
    assert first.secret_access_key not in repr(first)


def test_no_credentials_of_its_own_means_no_aws(
    moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = _sources(moto, tmp_path, monkeypatch)
    for k in TEST_KEYS:
        monkeypatch.delenv(k)
    assert asyncio.run(sources.sts.fetch(ROLE)) is None
    with pytest.raises(SecretNotFound) as info:
        asyncio.run(sources.resolve(_td("some/param"), execution_role=None))
    assert "AWS: off" in str(info.value)
    # And a submit is refused at once: nothing could answer.
    assert sources.missing_at_submit(_td("some/param")) == ["some/param"]


# -- real tasks through an agent ---------------------------------------------------------
@pytest.fixture(scope="module")
def aws_agent(moto: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a, proc, base = start_agent(extra_env=moto.agent_env(tmp_path_factory.mktemp("aws")))
    try:
        yield a
    finally:
        stop_agent(a, proc, base)


def test_a_task_gets_its_secrets_from_aws(
    aws_agent: Agent, aws_objects: dict[str, str], tmp_path: Path
) -> None:
    a, v = aws_agent, aws_objects
    td = busybox_task(
        "awssecrets",
        ["sh", "-c", 'echo "plain=$PLAIN pw=$PW prev=$PREV secure=$SECURE flat=$FLAT"'],
        secrets=[
            {"name": "PLAIN", "valueFrom": v["plain_arn"]},
            {"name": "PW", "valueFrom": f"{v['json_arn']}:password::"},
            {"name": "PREV", "valueFrom": f"{v['versioned_arn']}::AWSPREVIOUS:"},
            {"name": "SECURE", "valueFrom": v["secure_arn"]},
            {"name": "FLAT", "valueFrom": v["flat_name"]},
        ],
    )
    td["executionRoleArn"] = ROLE  # assumed through STS for the lookups
    proc = a.cli("run", "-d", write_taskdef(tmp_path, td), check=True)
    task_id = proc.stdout.strip()
    t = a.wait_status(task_id, "STOPPED")
    assert t["exitCode"] == 0, t
    out = a.cli("logs", task_id, check=True).stdout
    assert out == (
        f"plain={v['plain']} pw={v['password']} prev={v['old']} "
        f"secure={v['secure']} flat={v['flat']}\n"
    )
    agent_log = a.log_path.read_text()
    # The execution role was assumed (through STS) for the lookups.
    assert any("sts_assumed_role" in line and ROLE in line for line in agent_log.splitlines())
    secrets_values = [v[k] for k in ("plain", "password", "old", "secure", "flat")]
    for text in (
        a.cli("inspect", task_id, check=True).stdout,
        a.cli("ps", "-a", "--json", check=True).stdout,
        agent_log,
    ):
        for value in secrets_values:
            assert value not in text
    a.cli("rm", task_id, check=True)
    assert not leaks(a)


def test_a_missing_aws_secret_stops_the_task_naming_it_with_nothing_created(
    aws_agent: Agent, aws_objects: dict[str, str], tmp_path: Path
) -> None:
    missing = aws_objects["missing_arn"]
    td = busybox_task(
        "awsmissing",
        ["sh", "-c", "echo started"],
        secrets=[
            {"name": "PLAIN", "valueFrom": aws_objects["plain_arn"]},
            {"name": "GONE", "valueFrom": missing},
        ],
    )
    proc = aws_agent.cli("run", "-d", write_taskdef(tmp_path, td))
    assert proc.returncode == 0, proc.stderr
    task_id = proc.stdout.strip()
    t = aws_agent.wait_status(task_id, "STOPPED")
    reason = t["stopReason"]
    assert missing in reason and "Secrets Manager" in reason and "local store" in reason
    assert all(c.get("exitCode") is None for c in t["containers"])  # none ever ran
    assert task_id not in ctr(aws_agent.namespace, "containers", "ls", "-q")
    assert aws_objects["plain"] not in reason
    assert aws_objects["plain"] not in aws_agent.log_path.read_text()
    assert not leaks(aws_agent)
    aws_agent.cli("rm", task_id, check=True)


def test_a_denied_aws_secret_stops_the_task_naming_it_with_nothing_created(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # moto enforces IAM after these 3 set-up calls: the agent's user has no policy.
    server = MotoServer(no_auth_actions=3)
    try:
        iam = server.client("iam")
        iam.create_user(UserName="nstask-agent")
        key = iam.create_access_key(UserName="nstask-agent")["AccessKey"]
        arn = server.client("secretsmanager").create_secret(
            Name="nstask/denied", SecretString="denied-value"
        )["ARN"]
        env = server.agent_env(
            tmp_path_factory.mktemp("aws-denied"),
            AWS_ACCESS_KEY_ID=key["AccessKeyId"],
            AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"],
        )
        a, proc, base = start_agent(extra_env=env)
        try:
            td = busybox_task("awsdenied", ["true"], secrets=[{"name": "S", "valueFrom": arn}])
            run = a.cli("run", "-d", write_taskdef(tmp_path, td))
            assert run.returncode == 0, run.stderr
            task_id = run.stdout.strip()
            t = a.wait_status(task_id, "STOPPED")
            reason = t["stopReason"]
            assert arn in reason and "access denied" in reason
            assert "not authorized to perform: secretsmanager:GetSecretValue" in reason
            assert task_id not in ctr(a.namespace, "containers", "ls", "-q")
            assert "denied-value" not in a.log_path.read_text()
            assert not leaks(a)
            a.cli("rm", task_id, check=True)
        finally:
            stop_agent(a, proc, base)
    finally:
        server.stop()


def test_repository_credentials_resolve_from_secrets_manager(
    moto: MotoServer, aws_objects: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """repositoryCredentials.credentialsParameter is looked up as a valueFrom is: its
    Secrets Manager JSON {"username", "password"} becomes the image's registry credentials."""
    from agent.lifecycle.secrets import registry_auth
    from agent.registry import Credentials

    o = aws_objects
    td = parse_task_definition(
        busybox_task("aws", ["true"], repositoryCredentials={"credentialsParameter": o["json_arn"]})
    )
    sources = _sources(moto, tmp_path, monkeypatch)
    values = asyncio.run(sources.resolve(td, execution_role=None))
    got = registry_auth(td, values)
    assert got == {"aws": Credentials(o["user"], o["password"])}
    assert o["password"] not in repr(got)
