"""The metadata endpoint's JSON builders, ARN formats and the credentials store and chain:
field names, omission rules and shapes as ECS's (no host, no agent)."""

from __future__ import annotations

import asyncio
import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.credentials import (
    CredentialChain,
    LocalCredentialStore,
    RoleCredentials,
    parse_credentials,
    read_profile,
)
from agent.errors import InvalidInput
from agent.metadata import arns, container_environment, documents, firelens_metadata
from agent.metadata.documents import Platform
from agent.store import ContainerRecord, TaskRecord
from agent.taskdef import parse_task_definition

ROLE = "arn:aws:iam::123456789012:role/app"
P = Platform(
    cluster="dev",
    region="eu-central-1",
    account="123456789012",
    availability_zone="eu-central-1b",
    subnet="10.213.7.0/24",
    dns_servers=("10.213.7.1",),
)


def record(**definition: object) -> TaskRecord:
    d = {
        "family": "web",
        "cpu": "512",
        "memory": "1 GB",
        "containerDefinitions": [
            {
                "name": "app",
                "image": "nginx:1",
                "cpu": 128,
                "memory": 256,
                "portMappings": [{"containerPort": 80}],
                "dockerLabels": {"a": "b"},
                "logConfiguration": {
                    "logDriver": "json-file",
                    "options": {"max-size": "1m"},
                    "secretOptions": [{"name": "token", "valueFrom": "tok"}],
                },
                "mountPoints": [{"sourceVolume": "data", "containerPath": "/data"}],
            }
        ],
        "volumes": [{"name": "data"}],
        **definition,
    }
    task_id = "0123456789abcdef0123456789abcdef"
    return TaskRecord(
        id=task_id,
        family="web",
        definition=d,
        last_status="RUNNING",
        desired_status="RUNNING",
        created_at=1.0,
        ip="10.213.7.9",
        netns="/run/netns/x",
        pull_started_at=1_700_000_000.123456,
        pull_stopped_at=1_700_000_001.5,
        containers=[
            ContainerRecord(
                task_id=task_id,
                name="app",
                position=0,
                containerd_id=f"{task_id}-0-app",
                image="nginx:1",
                log_path="/x",
                essential=True,
                last_status="RUNNING",
                image_digest="sha256:ab",
                started_at=1_700_000_002.0,
                created_at=1_700_000_001.75,
                metadata_id="f" * 32,
            )
        ],
    )


def test_arns_are_ecs_long_format_and_parse_as_consumers_parse_them() -> None:
    t = P.task_arn("abc")
    assert t == "arn:aws:ecs:eu-central-1:123456789012:task/dev/abc"
    c = arns.parse(P.container_arn(record().containers[0]))
    assert (c.partition, c.service, c.region, c.account) == (
        "aws",
        "ecs",
        "eu-central-1",
        "123456789012",
    )
    cluster, task_id, uuid = c.resource.split("/")
    assert (c.resource_type, cluster, task_id, len(uuid)) == (
        "container",
        "dev",
        record().id,
        36,
    )
    assert P.cluster_arn == "arn:aws:ecs:eu-central-1:123456789012:cluster/dev"
    with pytest.raises(ValueError):
        arns.parse("not-an-arn")


def test_the_container_arn_does_not_carry_the_secret_metadata_id() -> None:
    c = record().containers[0]
    assert c.metadata_id is not None and c.metadata_id not in P.container_arn(c)
    assert P.container_arn(c) == P.container_arn(c)  # stable


@pytest.mark.parametrize(
    ("field", "value"), [("region", "mars-1"), ("account_id", "12"), ("cluster", "a b")]
)
def test_bad_platform_settings_are_refused_naming_the_field(field: str, value: str) -> None:
    with pytest.raises(InvalidInput, match=field.split("_")[0]):
        Platform.from_config(AgentConfig().with_overrides(**{field: value}))


def test_defaults_parse() -> None:
    p = Platform.from_config(AgentConfig())
    assert p.task_arn("t") == "arn:aws:ecs:us-east-1:000000000000:task/nstask/t"
    assert p.availability_zone == "us-east-1a"
    assert p.private_dns_name("10.0.0.5") == "ip-10-0-0-5.ec2.internal"


def test_rfc3339_is_go_rfc3339nano() -> None:
    assert documents.rfc3339(1_700_000_000.5) == "2023-11-14T22:13:20.5Z"
    assert documents.rfc3339(1_700_000_000.0) == "2023-11-14T22:13:20Z"
    assert documents.rfc3339(1_700_000_000.123456) == "2023-11-14T22:13:20.123456Z"
    assert documents.rfc3339(None) is None


def test_container_document_fields_and_omissions() -> None:
    t = record()
    doc = documents.container_document(
        P, t, t.containers[0], mac="0a:00:00:00:00:01", task_dir="/t"
    )
    assert doc["DockerId"] == t.containers[0].containerd_id
    assert (doc["Name"], doc["DockerName"], doc["Image"], doc["ImageID"]) == (
        "app",
        "app",
        "nginx:1",
        "sha256:ab",
    )
    assert doc["Ports"] == [{"ContainerPort": 80, "Protocol": "tcp", "HostPort": 80}]
    assert doc["Labels"] == {
        "a": "b",
        "com.amazonaws.ecs.cluster": P.cluster_arn,
        "com.amazonaws.ecs.container-name": "app",
        "com.amazonaws.ecs.task-arn": P.task_arn(t.id),
        "com.amazonaws.ecs.task-definition-family": "web",
        "com.amazonaws.ecs.task-definition-version": "1",
    }
    assert doc["Limits"] == {"CPU": 128, "Memory": 256}
    assert (doc["DesiredStatus"], doc["KnownStatus"], doc["Type"]) == (
        "RUNNING",
        "RUNNING",
        "NORMAL",
    )
    assert doc["CreatedAt"] == "2023-11-14T22:13:21.75Z"
    for absent in ("ExitCode", "FinishedAt", "Health"):
        assert absent not in doc
    assert doc["Volumes"] == [
        {"DockerName": "data", "Source": "/t/volumes/data", "Destination": "/data"}
    ]
    assert doc["LogDriver"] == "json-file" and doc["LogOptions"] == {"max-size": "1m"}
    assert "tok" not in json.dumps(doc)  # secretOptions never shown
    assert doc["Networks"] == [
        {
            "NetworkMode": "awsvpc",
            "IPv4Addresses": ["10.213.7.9"],
            "AttachmentIndex": 0,
            "MACAddress": "0a:00:00:00:00:01",
            "IPv4SubnetCIDRBlock": "10.213.7.0/24",
            "DomainNameServers": ["10.213.7.1"],
            "PrivateDNSName": "ip-10-213-7-9.eu-central-1.compute.internal",
            "SubnetGatewayIpv4Address": "10.213.7.1/24",
        }
    ]
    assert doc["ContainerARN"] == P.container_arn(t.containers[0])


def test_a_stopped_container_has_its_exit_code_and_finish_time() -> None:
    t = record()
    c = t.containers[0]
    c.last_status, c.exit_code, c.finished_at, c.health = "STOPPED", 0, 1_700_000_009.0, "HEALTHY"
    doc = documents.container_document(P, t, c)
    assert (doc["KnownStatus"], doc["ExitCode"]) == ("STOPPED", 0)
    assert doc["FinishedAt"] == "2023-11-14T22:13:29Z" and doc["Health"] == {"status": "HEALTHY"}
    assert "MACAddress" not in doc["Networks"][0]  # unknown: left out


def test_task_document_and_tags() -> None:
    t = record(revision=4, tags=[{"key": "env", "value": "dev"}])
    doc = documents.task_document(P, t, with_tags=True, clock={"ClockErrorBound": 0.5})
    assert doc["Cluster"] == P.cluster_arn and doc["TaskARN"] == P.task_arn(t.id)
    assert (doc["Family"], doc["Revision"], doc["LaunchType"]) == ("web", "4", "FARGATE")
    assert doc["Limits"] == {"CPU": 0.5, "Memory": 1024}
    assert doc["PullStartedAt"].startswith("2023-11-14T22:13:20.123456")
    assert doc["AvailabilityZone"] == "eu-central-1b"
    assert doc["TaskTags"] == {"env": "dev"}
    assert "ExecutionStoppedAt" not in doc and doc["ClockDrift"] == {"ClockErrorBound": 0.5}
    assert [c["Name"] for c in doc["Containers"]] == ["app"]
    assert "TaskTags" not in documents.task_document(P, t)


def test_describe_output_is_unwrapped_for_revision_role_and_tags() -> None:
    t = record()
    t.definition = {
        "taskDefinition": {**t.definition, "revision": 9, "taskRoleArn": ROLE},
        "tags": [{"key": "k", "value": "v"}],
    }
    assert documents.revision(t) == "9" and documents.task_tags(t) == {"k": "v"}
    assert documents.task_role_arn(t.definition) == ROLE


def test_introspection_shapes() -> None:
    t = record()
    meta = documents.introspection_metadata(P, "i-1")
    assert meta["Cluster"] == "dev" and meta["ContainerInstanceArn"].endswith(
        ":container-instance/dev/i-1"
    )
    entry = documents.introspection_task(P, t)
    assert entry == {
        "Arn": P.task_arn(t.id),
        "DesiredStatus": "RUNNING",
        "KnownStatus": "RUNNING",
        "Family": "web",
        "Version": "1",
        "Containers": [
            {
                "DockerId": t.containers[0].containerd_id,
                "DockerName": "app",
                "Name": "app",
                "Networks": [{"NetworkMode": "awsvpc", "IPv4Addresses": ["10.213.7.9"]}],
            }
        ],
    }


def test_environment_only_credentials_with_a_role_and_never_the_execution_role() -> None:
    cfg = AgentConfig()
    t = record(executionRoleArn="arn:aws:iam::123456789012:role/exec")
    t.credentials_id = "cred-id"
    env = container_environment(cfg, t, t.containers[0])
    assert env == [
        f"ECS_CONTAINER_METADATA_URI_V4=http://169.254.170.2/v4/{'f' * 32}",
        f"ECS_CONTAINER_METADATA_URI=http://169.254.170.2/v3/{'f' * 32}",
    ]
    t.definition["taskRoleArn"] = ROLE
    env = container_environment(cfg, t, t.containers[0])
    assert env[-1] == "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/v2/credentials/cred-id"
    assert not any("exec" in e for e in env)
    assert container_environment(cfg.with_overrides(metadata_port=0), t, t.containers[0]) == []


def test_firelens_metadata_follows_enable_ecs_log_metadata() -> None:
    router = {"name": "r", "image": "i", "firelensConfiguration": {"type": "fluentbit"}}
    t = record()
    td = parse_task_definition({"family": "web", "containerDefinitions": [router]})
    assert firelens_metadata(AgentConfig(), t, td) == {
        "ecs_cluster": "nstask",
        "ecs_task_arn": f"arn:aws:ecs:us-east-1:000000000000:task/nstask/{t.id}",
        "ecs_task_definition": "web:1",
    }
    off = {
        **router,
        "firelensConfiguration": {
            "type": "fluentbit",
            "options": {"enable-ecs-log-metadata": "false"},
        },
    }
    td = parse_task_definition({"family": "web", "containerDefinitions": [off]})
    assert firelens_metadata(AgentConfig(), t, td) == {}


def test_task_role_arn_and_tags_are_validated_with_located_errors() -> None:
    from agent.errors import TaskDefinitionError

    base = {"family": "f", "containerDefinitions": [{"name": "a", "image": "i"}]}
    with pytest.raises(TaskDefinitionError, match="taskRoleArn"):
        parse_task_definition({**base, "taskRoleArn": "role/app"})
    with pytest.raises(TaskDefinitionError, match=r"tags\[0\]\.key"):
        parse_task_definition({**base, "tags": [{"value": "x"}]})
    td = parse_task_definition({**base, "taskRoleArn": ROLE, "tags": [{"key": "a", "value": "b"}]})
    assert td.warnings == ()


# -- credentials ------------------------------------------------------------------------------


def test_parse_credentials_json_sts_output_and_key_value() -> None:
    assert parse_credentials(
        json.dumps(
            {
                "Credentials": {
                    "AccessKeyId": "A",
                    "SecretAccessKey": "S",
                    "SessionToken": "T",
                    "Expiration": "2030-01-01T00:00:00Z",
                }
            }
        )
    ) == {
        "AccessKeyId": "A",
        "SecretAccessKey": "S",
        "Token": "T",
        "Expiration": "2030-01-01T00:00:00Z",
    }
    assert parse_credentials("aws_access_key_id = A\naws_secret_access_key=S\n") == {
        "AccessKeyId": "A",
        "SecretAccessKey": "S",
    }


def test_parse_credentials_errors_name_what_is_missing_never_a_value() -> None:
    with pytest.raises(InvalidInput, match="missing SecretAccessKey") as e:
        parse_credentials('{"AccessKeyId": "AKIASECRETISH"}')
    assert "AKIASECRETISH" not in e.value.message
    with pytest.raises(InvalidInput, match="line 1"):
        parse_credentials("just-a-line")
    with pytest.raises(InvalidInput, match="RFC 3339"):
        parse_credentials('{"AccessKeyId": "A", "SecretAccessKey": "S", "Expiration": "soon"}')


def test_read_profile(tmp_path: Path) -> None:
    f = tmp_path / "credentials"
    f.write_text(
        "[default]\naws_access_key_id=D\naws_secret_access_key=DS\n[dev]\naws_access_key_id=A\naws_secret_access_key=S\n"
    )
    assert read_profile("dev", f) == {"AccessKeyId": "A", "SecretAccessKey": "S"}
    with pytest.raises(InvalidInput, match=r"no profile \[prod\]"):
        read_profile("prod", f)


def test_local_store_files_are_private_and_listing_shows_no_keys(tmp_path: Path) -> None:
    store = LocalCredentialStore(tmp_path / "credentials")
    store.put(ROLE, {"AccessKeyId": "A", "SecretAccessKey": "S3CR3T"})
    (f,) = list((tmp_path / "credentials").iterdir())
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "credentials").stat().st_mode) == 0o700
    assert store.roles() == [{"roleArn": ROLE, "expiration": ""}]
    now = datetime(2030, 1, 1, tzinfo=UTC)
    got = store.get(ROLE, now=now)
    assert got is not None and got.secret_access_key == "S3CR3T"
    assert got.expiration == datetime(2030, 1, 1, 1, tzinfo=UTC)  # rolling: an hour ahead
    assert "S3CR3T" not in repr(got)
    store.remove(ROLE)
    assert store.get(ROLE) is None
    with pytest.raises(InvalidInput):
        store.put("not-a-role", {})


class _Fixed:
    def __init__(self, name: str, known: dict[str, RoleCredentials]) -> None:
        self.name = name
        self.known = known
        self.asked: list[str] = []

    async def fetch(self, role_arn: str) -> RoleCredentials | None:
        self.asked.append(role_arn)
        return self.known.get(role_arn)


def test_chain_asks_in_order_and_the_first_that_knows_answers() -> None:
    creds = RoleCredentials(
        role_arn=ROLE,
        access_key_id="A",
        secret_access_key="S",
        token="T",
        expiration=datetime(2030, 1, 1, tzinfo=UTC),
    )
    first, second, third = _Fixed("a", {}), _Fixed("b", {ROLE: creds}), _Fixed("c", {ROLE: creds})
    chain = CredentialChain([first, second, third])
    assert asyncio.run(chain.fetch(ROLE)) is creds
    assert (first.asked, second.asked, third.asked) == ([ROLE], [ROLE], [])
    assert asyncio.run(chain.fetch("arn:aws:iam::123456789012:role/other")) is None
    assert creds.to_endpoint()["Expiration"] == "2030-01-01T00:00:00Z"


def test_the_rules_dnat_to_the_gateway_listener_and_drop_direct_hits() -> None:
    from agent.metadata import netfilter

    nat, filt = netfilter._rules("nstask0", "10.213.0.1", 51679, host_mode=False)
    assert "-A NSTASK-MD-nstask0 -p tcp -j DNAT --to-destination 10.213.0.1:51679" in nat
    assert "NSTASK-MDH-" not in nat  # host mode off: no host-wide chain
    lines = filt.splitlines()
    assert lines.index("-A NSTASK-MDIN-nstask0 -i lo -j RETURN") < len(lines) - 2
    assert any("--ctstate DNAT --ctorigdst 169.254.170.2/32 -j RETURN" in x for x in lines)
    assert lines[-2].endswith("-j DROP")
    nat, _ = netfilter._rules("nstask0", "10.213.0.1", 51679, host_mode=True)
    assert "-A NSTASK-MDH-nstask0 -p tcp -j DNAT --to-destination 10.213.0.1:51679" in nat
    from agent.errors import NetworkError

    with pytest.raises(NetworkError, match="28 characters"):  # a name iptables cannot hold
        netfilter.chains("x" * 20)
