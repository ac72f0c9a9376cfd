"""Task definition validation: ECS JSON in, a typed model or located errors out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import TaskDefinitionError
from agent.taskdef import (
    ContainerDefinition,
    Dependency,
    HealthCheck,
    LinuxParameters,
    LogConfiguration,
    MountPoint,
    PortMapping,
    Secret,
    TaskDefinition,
    Tmpfs,
    Ulimit,
    Volume,
    VolumeFrom,
    local_secret_name,
    parse_task_definition,
    parse_task_definition_text,
    start_order,
    stop_order,
    with_environment,
)

IMAGE = "nstask.local/busybox:latest"


def one(**container: object) -> dict[str, object]:
    return {"family": "f", "containerDefinitions": [{"name": "a", "image": IMAGE, **container}]}


def problems(data: object) -> list[tuple[str, str]]:
    with pytest.raises(TaskDefinitionError) as e:
        parse_task_definition(data, source="t.json")
    return e.value.problems


def test_minimal_definition_gets_ecs_defaults() -> None:
    td = parse_task_definition(one())
    assert td.network_mode == "awsvpc"
    c = td.containers[0]
    assert c.essential is True and c.command is None and c.environment == ()


def test_describe_task_definition_output_is_accepted_without_bookkeeping_warnings() -> None:
    wrapped = {
        "taskDefinition": {
            **one(),
            "revision": 3,
            "status": "ACTIVE",
            "taskDefinitionArn": "arn:aws:ecs:...:task-definition/f:3",
        }
    }
    td = parse_task_definition(wrapped)
    assert td.family == "f" and td.warnings == ()


def test_unsupported_fields_warn_once_each_naming_the_field() -> None:
    td = parse_task_definition(
        {**one(links=["db"]), "proxyConfiguration": {"type": "APPMESH"}, "somethingNew": 1}
    )
    assert any(w.startswith("containerDefinitions[0].links:") for w in td.warnings)
    assert any(w.startswith("proxyConfiguration:") for w in td.warnings)
    assert any(w.startswith("somethingNew:") and "unknown" in w for w in td.warnings)
    assert len(td.warnings) == 3


@pytest.mark.parametrize(
    ("cpu", "units"), [(256, 256), ("512", 512), ("1 vCPU", 1024), ("0.5 vcpu", 512)]
)
def test_task_cpu_forms(cpu: object, units: int) -> None:
    assert parse_task_definition({**one(), "cpu": cpu}).cpu == units


@pytest.mark.parametrize(("mem", "mib"), [(512, 512), ("512", 512), ("0.5 GB", 512), ("2GB", 2048)])
def test_task_memory_forms(mem: object, mib: int) -> None:
    assert parse_task_definition({**one(), "memory": mem}).memory == mib


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"family": "f"}, "containerDefinitions"),
        ({"containerDefinitions": []}, "containerDefinitions"),
        ({"containerDefinitions": {}}, "containerDefinitions"),
        ({"containerDefinitions": [{"image": IMAGE}]}, "containerDefinitions[0].name"),
        ({"containerDefinitions": [{"name": "a"}]}, "containerDefinitions[0].image"),
        (
            {"containerDefinitions": [{"name": "a b", "image": IMAGE}]},
            "containerDefinitions[0].name",
        ),
        (
            {"containerDefinitions": [{"name": "a", "image": "has space"}]},
            "containerDefinitions[0].image",
        ),
        ({**one(), "networkMode": "overlay"}, "networkMode"),
        ({**one(), "cpu": "lots"}, "cpu"),
        ({**one(), "memory": 2}, "memory"),
        (one(command="echo hi"), "containerDefinitions[0].command"),
        (one(entryPoint=[1]), "containerDefinitions[0].entryPoint"),
        (one(essential="yes"), "containerDefinitions[0].essential"),
        (one(environment=[{"value": "x"}]), "containerDefinitions[0].environment[0].name"),
        (
            one(environment=[{"name": "A", "value": 1}]),
            "containerDefinitions[0].environment[0].value",
        ),
        (
            one(portMappings=[{"containerPort": 70000}]),
            "containerDefinitions[0].portMappings[0].containerPort",
        ),
        (
            one(portMappings=[{"hostPort": 80}]),
            "containerDefinitions[0].portMappings[0].containerPort",
        ),
        (
            one(portMappings=[{"containerPort": 80, "protocol": "sctp"}]),
            "containerDefinitions[0].portMappings[0].protocol",
        ),
        (
            one(portMappings=[{"containerPort": 80, "hostPort": 81}]),
            "containerDefinitions[0].portMappings[0].hostPort",
        ),
        (one(stopTimeout=121), "containerDefinitions[0].stopTimeout"),
        (one(memory=64, memoryReservation=128), "containerDefinitions[0].memoryReservation"),
        (one(workingDirectory="relative"), "containerDefinitions[0].workingDirectory"),
        (one(hostname="h"), "containerDefinitions[0].hostname"),
        (one(essential=False), "containerDefinitions"),
        (
            {
                "containerDefinitions": [
                    {"name": "a", "image": IMAGE},
                    {"name": "a", "image": IMAGE},
                ]
            },
            "containerDefinitions[1].name",
        ),
        ([1, 2], ""),
    ],
)
def test_invalid_definitions_name_the_field(data: object, path: str) -> None:
    found = problems(data)
    assert path in [p for p, _ in found], found


def test_all_problems_are_reported_at_once() -> None:
    found = problems(
        {"networkMode": "x", "containerDefinitions": [{"name": "a"}, {"image": IMAGE}]}
    )
    assert {p for p, _ in found} == {
        "networkMode",
        "containerDefinitions[0].image",
        "containerDefinitions[1].name",
    }


def test_error_message_names_the_source_file_and_path() -> None:
    with pytest.raises(TaskDefinitionError) as e:
        parse_task_definition({"containerDefinitions": [{"name": "a"}]}, source="x.json")
    assert str(e.value) == "x.json: containerDefinitions[0].image: is required"
    assert e.value.exit_code == 2 and e.value.http_status == 400


def test_not_json_is_located() -> None:
    with pytest.raises(TaskDefinitionError) as e:
        parse_task_definition_text('{"family": }', source="x.json")
    assert "is not valid JSON" in str(e.value) and "line 1 column" in str(e.value)


def test_environment_overrides_apply_to_every_container_and_win() -> None:
    td = parse_task_definition(
        {
            "containerDefinitions": [
                {"name": "a", "image": IMAGE, "environment": [{"name": "X", "value": "1"}]},
                {"name": "b", "image": IMAGE, "essential": False},
            ]
        }
    )
    td2 = with_environment(td, {"X": "2", "Y": "3"})
    assert dict(td2.containers[0].environment) == {"X": "2", "Y": "3"}
    assert dict(td2.containers[1].environment) == {"X": "2", "Y": "3"}


def test_examples_validate() -> None:
    for path in sorted((Path(__file__).parents[2] / "examples").glob("*.json")):
        parse_task_definition(json.loads(path.read_text()), source=str(path))


# -- the fields of issue 3: typed values ----------------------------------------------------


def test_every_supported_container_field_becomes_a_typed_value() -> None:
    td = parse_task_definition(
        {
            "family": "f",
            "networkMode": "bridge",
            "volumes": [{"name": "data", "host": {"sourcePath": "/srv/data"}}, {"name": "scratch"}],
            "containerDefinitions": [
                {
                    "name": "db",
                    "image": IMAGE,
                    "essential": False,
                    "healthCheck": {"command": ["CMD", "true"]},
                },
                {
                    "name": "app",
                    "image": IMAGE,
                    "environmentFiles": [
                        {"value": "/etc/app.env", "type": "s3"},
                        {"value": "file:///etc/more.env"},
                    ],
                    "secrets": [{"name": "PW", "valueFrom": "db/password"}],
                    "dependsOn": [{"containerName": "db", "condition": "HEALTHY"}],
                    "healthCheck": {
                        "command": ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1/"],
                        "interval": 10,
                        "startPeriod": 20,
                    },
                    "startTimeout": 60,
                    "logConfiguration": {
                        "logDriver": "fluentd",
                        "options": {"fluentd-address": "unix:///run/f.sock"},
                        "secretOptions": [{"name": "token", "valueFrom": "fluent-token"}],
                    },
                    "linuxParameters": {
                        "initProcessEnabled": True,
                        "capabilities": {"add": ["net_admin", "CAP_SYS_PTRACE"], "drop": ["ALL"]},
                        "sharedMemorySize": 64,
                        "tmpfs": [
                            {"containerPath": "/run", "size": 16, "mountOptions": ["noexec"]}
                        ],
                    },
                    "ulimits": [{"name": "nofile", "softLimit": 1024, "hardLimit": 4096}],
                    "privileged": True,
                    "dnsServers": ["10.0.0.2", "fd00::53"],
                    "extraHosts": [{"hostname": "db.local", "ipAddress": "10.0.0.5"}],
                    "stopSignal": "quit",
                    "mountPoints": [
                        {"sourceVolume": "data", "containerPath": "/data", "readOnly": True}
                    ],
                    "volumesFrom": [{"sourceContainer": "db"}],
                },
            ],
        }
    )
    assert td.volumes == (Volume("data", "/srv/data"), Volume("scratch", None))
    c = td.container("app")
    assert c.environment_files == ("/etc/app.env", "file:///etc/more.env")
    assert c.secrets == (Secret("PW", "db/password"),)
    assert c.depends_on == (Dependency("db", "HEALTHY"),)
    assert c.health_check == HealthCheck(
        ("CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1/"), 10, 5, 3, 20
    )
    assert c.start_timeout == 60
    assert c.log_configuration == LogConfiguration(
        "fluentd",
        (("fluentd-address", "unix:///run/f.sock"),),
        (Secret("token", "fluent-token"),),
    )
    assert c.linux_parameters == LinuxParameters(
        init_process_enabled=True,
        capabilities_add=("CAP_NET_ADMIN", "CAP_SYS_PTRACE"),
        capabilities_drop=("ALL",),
        shared_memory_size=64,
        tmpfs=(Tmpfs("/run", 16, ("noexec",)),),
    )
    assert c.ulimits == (Ulimit("nofile", 1024, 4096),)
    assert c.privileged is True
    assert c.dns_servers == ("10.0.0.2", "fd00::53")
    assert c.extra_hosts == (("db.local", "10.0.0.5"),)
    assert c.stop_signal == "SIGQUIT"
    assert c.mount_points == (MountPoint("data", "/data", True),)
    assert c.volumes_from == (VolumeFrom("db", False),)
    # only the security warnings of issue 9 (privileged, NET_ADMIN): nothing else is ignored
    assert [w.split(":")[0] for w in td.warnings] == [
        "containerDefinitions[1].linuxParameters.capabilities.add[0]",
        "containerDefinitions[1].privileged",
    ]


def test_health_check_gets_ecs_defaults() -> None:
    hc = parse_task_definition(one(healthCheck={"command": ["CMD", "true"]})).containers[0]
    assert hc.health_check == HealthCheck(("CMD", "true"), interval=30, timeout=5, retries=3)


def test_health_check_none_means_no_check() -> None:
    c = parse_task_definition(one(healthCheck={"command": ["NONE"]})).containers[0]
    assert c.health_check is None


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("interval", 4, "must be between 5 and 300, got 4"),
        ("interval", 301, "must be between 5 and 300, got 301"),
        ("timeout", 1, "must be between 2 and 60, got 1"),
        ("timeout", 61, "must be between 2 and 60, got 61"),
        ("retries", 0, "must be between 1 and 10, got 0"),
        ("retries", 11, "must be between 1 and 10, got 11"),
        ("startPeriod", -1, "must be between 0 and 300, got -1"),
        ("startPeriod", 301, "must be between 0 and 300, got 301"),
    ],
)
def test_health_check_numbers_outside_ecs_ranges_are_refused(
    key: str, value: int, message: str
) -> None:
    found = problems(one(healthCheck={"command": ["CMD", "true"], key: value}))
    assert found == [(f"containerDefinitions[0].healthCheck.{key}", message)]


@pytest.mark.parametrize(("value", "ok"), [(2, True), (120, True), (1, False), (121, False)])
def test_start_timeout_follows_fargate_range(value: int, ok: bool) -> None:
    data = one(startTimeout=value)
    if ok:
        assert parse_task_definition(data).containers[0].start_timeout == value
    else:
        assert [p for p, _ in problems(data)] == ["containerDefinitions[0].startTimeout"]


@pytest.mark.parametrize(("raw", "normal"), [("SIGQUIT", "SIGQUIT"), ("int", "SIGINT"), (9, "9")])
def test_stop_signal_is_normalised(raw: object, normal: str) -> None:
    assert parse_task_definition(one(stopSignal=raw)).containers[0].stop_signal == normal


@pytest.mark.parametrize("driver", ["awslogs", "splunk", "syslog", "journald", "gelf"])
def test_aws_and_external_log_drivers_are_accepted_as_json_file_with_a_warning(
    driver: str,
) -> None:
    td = parse_task_definition(one(logConfiguration={"logDriver": driver}))
    assert td.containers[0].log_configuration == LogConfiguration(driver)
    assert td.warnings == (
        f"containerDefinitions[0].logConfiguration.logDriver: {driver} needs an AWS or "
        "external service that nstask does not have; the output goes to json-file instead",
    )


@pytest.mark.parametrize("driver", ["json-file", "fluentd", "none"])
def test_local_log_drivers_are_accepted_silently(driver: str) -> None:
    assert parse_task_definition(one(logConfiguration={"logDriver": driver})).warnings == ()


def test_unsupported_linux_parameters_warn_once_each() -> None:
    # devices, maxSwap and swappiness are supported since issue 12 B: no warning for them.
    devices = [{"hostPath": "/dev/fuse"}]
    td = parse_task_definition(
        one(
            linuxParameters={
                "devices": devices,
                "maxSwap": 0,
                "swappiness": 10,
                "futureKnob": 1,
                "otherKnob": True,
            }
        )
    )
    assert [w.split(":")[0] for w in td.warnings] == [
        "containerDefinitions[0].linuxParameters.futureKnob",
        "containerDefinitions[0].linuxParameters.otherKnob",
    ]


def test_unsupported_task_fields_and_volume_kinds_warn() -> None:
    td = parse_task_definition(
        {
            **one(),
            "pidMode": "task",
            "ipcMode": "none",
            "volumes": [
                {"name": "efs", "efsVolumeConfiguration": {"fileSystemId": "fs-1"}},
                {"name": "shared", "dockerVolumeConfiguration": {"scope": "shared"}},
                {"name": "task", "dockerVolumeConfiguration": {"scope": "task"}},
            ],
        }
    )
    # pidMode task and ipcMode none are supported since issue 12 B: no warning for them.
    assert [w.split(":")[0] for w in td.warnings] == [
        "volumes[0].efsVolumeConfiguration",
        "volumes[1].dockerVolumeConfiguration.scope",
    ]
    assert td.volumes == (Volume("efs"), Volume("shared"), Volume("task"))


def test_service_connect_port_fields_warn_and_the_mapping_is_kept() -> None:
    td = parse_task_definition(
        one(portMappings=[{"containerPort": 80, "name": "http", "appProtocol": "http"}])
    )
    assert td.containers[0].port_mappings == (PortMapping(80, None, "tcp"),)
    assert len(td.warnings) == 2


def test_bridge_mode_allows_a_different_or_dynamic_host_port() -> None:
    td = parse_task_definition(
        {
            **one(portMappings=[{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}]),
            "networkMode": "bridge",
        }
    )
    assert td.containers[0].port_mappings == (
        PortMapping(80, 8080, "tcp"),
        PortMapping(81, None, "tcp"),
    )


def test_the_real_world_register_input_warns_about_what_nstask_ignores() -> None:
    path = Path(__file__).parents[1] / "taskdefs" / "valid" / "register-task-definition.json"
    td = parse_task_definition(json.loads(path.read_text()))
    # runtimePlatform is checked against the host since issue 12 B: no warning for it.
    assert [w.split(":")[0] for w in td.warnings] == [
        "containerDefinitions[0].portMappings[0].name",
        "containerDefinitions[0].portMappings[0].appProtocol",
        "containerDefinitions[0].logConfiguration.logDriver",
    ]
    assert td.cpu == 1024 and td.memory == 2048
    assert (td.cpu_architecture, td.os_family) == ("X86_64", "LINUX")
    assert start_order(td) == ["migrate", "api"]


# -- cross-field rules -------------------------------------------------------------------


def two(first: dict[str, object], second: dict[str, object]) -> dict[str, object]:
    return {
        "containerDefinitions": [
            {"name": "a", "image": IMAGE, **first},
            {"name": "b", "image": IMAGE, **second},
        ]
    }


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        (
            two({"dependsOn": [{"containerName": "ghost", "condition": "START"}]}, {}),
            "containerDefinitions[0].dependsOn[0].containerName",
            "no container named 'ghost' in this task",
        ),
        (
            two({}, {"dependsOn": [{"containerName": "a", "condition": "SUCCESS"}]}),
            "containerDefinitions[1].dependsOn[0].condition",
            "SUCCESS needs a non-essential container, but 'a' is essential",
        ),
        (
            two({}, {"dependsOn": [{"containerName": "a", "condition": "HEALTHY"}]}),
            "containerDefinitions[1].dependsOn[0].condition",
            "HEALTHY needs a healthCheck on 'a'",
        ),
        (
            two(
                {"firelensConfiguration": {"type": "fluentd"}},
                {"firelensConfiguration": {"type": "fluentbit"}},
            ),
            "containerDefinitions[1].firelensConfiguration",
            "only one container may have firelensConfiguration (also containerDefinitions[0])",
        ),
        (
            two({"logConfiguration": {"logDriver": "awsfirelens"}}, {}),
            "containerDefinitions[0].logConfiguration.logDriver",
            "awsfirelens needs a container with firelensConfiguration in the task",
        ),
        (
            {**two({"memory": 200}, {"memoryReservation": 100}), "memory": 256},
            "memory",
            "the containers' memory (300 MiB) exceeds the task's memory (256 MiB)",
        ),
        (
            {
                **two(
                    {"portMappings": [{"containerPort": 80, "hostPort": 8080}]},
                    {"portMappings": [{"containerPort": 81, "hostPort": 8080}]},
                ),
                "networkMode": "bridge",
            },
            "containerDefinitions[1].portMappings[0].hostPort",
            "host port 8080/tcp is also used by container 'a'",
        ),
        (
            two({"volumesFrom": [{"sourceContainer": "a"}]}, {}),
            "containerDefinitions[0].volumesFrom[0].sourceContainer",
            "a container cannot take volumes from itself",
        ),
    ],
)
def test_cross_container_rules_name_the_field(
    data: dict[str, object], path: str, message: str
) -> None:
    assert problems(data) == [(path, message)]


def test_a_udp_and_a_tcp_mapping_of_the_same_port_do_not_clash() -> None:
    td = parse_task_definition(
        one(portMappings=[{"containerPort": 53}, {"containerPort": 53, "protocol": "udp"}])
    )
    assert len(td.containers[0].port_mappings) == 2


def test_dependency_cycle_names_the_cycle() -> None:
    data = two(
        {"dependsOn": [{"containerName": "b", "condition": "START"}]},
        {"dependsOn": [{"containerName": "a", "condition": "START"}]},
    )
    assert problems(data) == [
        ("containerDefinitions[0].dependsOn", "dependency cycle: a -> b -> a")
    ]


# -- start and stop order -----------------------------------------------------------------


def names(*containers: dict[str, object]) -> TaskDefinition:
    return parse_task_definition(
        {"containerDefinitions": [{"image": IMAGE, **c} for c in containers]}
    )


def test_start_order_honours_depends_on_and_keeps_definition_order_for_ties() -> None:
    td = names(
        {"name": "app", "dependsOn": [{"containerName": "migrate", "condition": "SUCCESS"}]},
        {"name": "sidecar"},
        {"name": "migrate", "essential": False},
        {"name": "proxy", "dependsOn": [{"containerName": "app", "condition": "START"}]},
    )
    assert start_order(td) == ["sidecar", "migrate", "app", "proxy"]
    assert stop_order(td) == ["proxy", "app", "migrate", "sidecar"]


def test_the_firelens_router_starts_first_and_stops_last() -> None:
    td = names(
        {"name": "app", "logConfiguration": {"logDriver": "awsfirelens"}},
        {"name": "router", "firelensConfiguration": {"type": "fluentbit"}},
    )
    assert start_order(td) == ["router", "app"]
    assert stop_order(td) == ["app", "router"]


# -- secrets --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value_from", "local"),
    [
        ("arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf", "prod/db"),
        ("arn:aws:secretsmanager:eu-west-1:123456789012:secret:api-key-x1Y2z3", "api-key"),
        (
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf:password::",
            "prod/db:password",
        ),
        (
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf::AWSPREVIOUS:",
            "prod/db",
        ),
        ("arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:token-AbCdEf", "token"),
        ("arn:aws:ssm:us-east-1:123456789012:parameter/orders/api-key", "orders/api-key"),
        ("arn:aws:ssm:us-east-1:123456789012:parameter/flat", "flat"),
        ("prod/db-password", "prod/db-password"),
        ("/orders/api-key", "/orders/api-key"),
    ],
)
def test_local_secret_name_maps_arns_to_the_secret_or_parameter_name(
    value_from: str, local: str
) -> None:
    assert local_secret_name(value_from) == local


@pytest.mark.parametrize(
    "value_from",
    ["arn:aws:s3:::bucket/key", "arn:aws:ssm:us-east-1:123456789012:parameter", "has space"],
)
def test_bad_value_from_is_refused_at_its_path(value_from: str) -> None:
    found = problems(one(secrets=[{"name": "X", "valueFrom": value_from}]))
    assert [p for p, _ in found] == ["containerDefinitions[0].secrets[0].valueFrom"]


# -- the graceful-shutdown pitfall ----------------------------------------------------------


SHELL_WARNING = "will only stop at SIGKILL after stopTimeout; use `exec` or initProcessEnabled"


@pytest.mark.parametrize(
    "container",
    [
        {"command": ["sh", "-c", "while true; do sleep 1; done"]},
        {"command": ["/bin/sh", "-c", "./server"]},
        {"command": ["bash", "-c", "./server --port 80"]},
        {"entryPoint": ["sh", "-c"], "command": ["./server"]},
        {"command": ["sh", "-ec", "./migrate && ./server"]},
        {"command": ["/usr/bin/env", "bash", "-o", "pipefail", "-c", "./server | tee log"]},
    ],
)
def test_essential_shell_without_exec_warns_naming_the_container(
    container: dict[str, object],
) -> None:
    td = parse_task_definition(one(**container))
    assert len(td.warnings) == 1
    assert td.warnings[0].startswith("containerDefinitions[0]: ")
    assert td.warnings[0].endswith(SHELL_WARNING)


@pytest.mark.parametrize(
    "container",
    [
        {"command": ["sh", "-c", "exec ./server"]},
        {"command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]},
        {"command": ["sh", "-c", "./server"], "linuxParameters": {"initProcessEnabled": True}},
        {"command": ["sh", "-c", "./server"], "essential": False, "name": "b"},
        {"command": ["./server", "-c", "config.yml"]},
        {"command": ["sh", "/entrypoint.sh"]},
    ],
)
def test_no_shell_warning_when_signals_reach_the_process(container: dict[str, object]) -> None:
    data = one(**container)
    if container.get("name") == "b":  # keep one essential container in the task
        data = {
            "containerDefinitions": [{"name": "a", "image": IMAGE}, {"image": IMAGE, **container}]
        }
    assert parse_task_definition(data).warnings == ()


def test_public_surface_is_pinned() -> None:
    import agent.taskdef

    assert {
        "parse_task_definition",
        "parse_task_definition_text",
        "load_json",
        "with_environment",
        "local_secret_name",
        "start_order",
        "stop_order",
        "TaskDefinition",
        "ContainerDefinition",
    } <= set(agent.taskdef.__all__)
    assert all(hasattr(agent.taskdef, n) for n in agent.taskdef.__all__)


def test_empty_unsupported_fields_ask_for_nothing_and_do_not_warn() -> None:
    td = parse_task_definition(
        {
            **one(systemControls=[], links=[], interactive=False, linuxParameters={"devices": []}),
            "placementConstraints": [],
            "taskRoleArn": "",
        }
    )
    assert td.warnings == ()


def test_describe_output_and_full_definition_warn_only_about_what_is_ignored() -> None:
    valid = Path(__file__).parents[1] / "taskdefs" / "valid"
    describe = parse_task_definition(
        json.loads((valid / "describe-task-definition.json").read_text())
    )
    assert describe.warnings == ()
    full = parse_task_definition(json.loads((valid / "every-supported-field.json").read_text()))
    assert full.warnings == ()  # its pidMode task is supported since issue 12 B
    assert start_order(full) == ["log_router", "migrate", "app"]
    app = full.container("app")
    assert [local_secret_name(s.value_from) for s in app.secrets] == [
        "checkout/db:password",
        "checkout/api-token",
    ]


# -- hardening (issue 9): limits, nesting, names, warnings ------------------------------------


def test_more_than_ten_containers_is_refused_at_once_with_one_located_error() -> None:

    # Each item lacks its image: one error in all shows the items were never parsed.
    defs = [{"name": f"c{i}"} for i in range(10_000)]
    found = problems({"containerDefinitions": defs})
    assert found == [
        (
            "containerDefinitions",
            "at most 10 container definitions per task definition, got 10000",
        )
    ]
    ten = [{**d, "image": IMAGE} for d in defs[:10]]
    assert parse_task_definition({"containerDefinitions": ten}).containers


@pytest.mark.parametrize(
    ("container", "path"),
    [
        ({"environment": [1] * 100_000}, "containerDefinitions[0].environment"),
        ({"environmentFiles": [{"value": "/e"}] * 11}, "containerDefinitions[0].environmentFiles"),
        ({"command": ["x"] * 100_000}, "containerDefinitions[0].command"),
        ({"entryPoint": ["x"] * 100_000}, "containerDefinitions[0].entryPoint"),
        ({"portMappings": [1] * 100_000}, "containerDefinitions[0].portMappings"),
        ({"secrets": [1] * 100_000}, "containerDefinitions[0].secrets"),
        ({"dependsOn": [1] * 100_000}, "containerDefinitions[0].dependsOn"),
        ({"mountPoints": [1] * 100_000}, "containerDefinitions[0].mountPoints"),
        ({"volumesFrom": [1] * 100_000}, "containerDefinitions[0].volumesFrom"),
        ({"ulimits": [1] * 100_000}, "containerDefinitions[0].ulimits"),
        ({"extraHosts": [1] * 100_000}, "containerDefinitions[0].extraHosts"),
        ({"dnsServers": ["x"] * 100_000}, "containerDefinitions[0].dnsServers"),
        (
            {"dockerLabels": {str(i): "v" for i in range(100_000)}},
            "containerDefinitions[0].dockerLabels",
        ),
        (
            {"linuxParameters": {"tmpfs": [1] * 100_000}},
            "containerDefinitions[0].linuxParameters.tmpfs",
        ),
        (
            {"linuxParameters": {"capabilities": {"add": ["X"] * 100_000}}},
            "containerDefinitions[0].linuxParameters.capabilities.add",
        ),
        (
            {"healthCheck": {"command": ["CMD"] + ["x"] * 100_000}},
            "containerDefinitions[0].healthCheck.command",
        ),
        (
            {
                "logConfiguration": {
                    "logDriver": "json-file",
                    "options": {str(i): "v" for i in range(100_000)},
                }
            },
            "containerDefinitions[0].logConfiguration.options",
        ),
    ],
)
def test_long_lists_are_refused_before_their_items_are_parsed(
    container: dict[str, object], path: str
) -> None:
    found = problems(one(**container))
    assert len(found) == 1, found[:3]
    assert found[0][0] == path and found[0][1].startswith("at most "), found


def test_too_many_volumes_is_one_error() -> None:
    found = problems({**one(), "volumes": [{"name": "v"}] * 100_000})
    assert len(found) == 1 and found[0][0] == "volumes" and "at most" in found[0][1]


def test_start_order_is_linear_and_keeps_ties_in_definition_order() -> None:

    from agent.taskdef import ContainerDefinition

    n = 5000
    chain = tuple(
        ContainerDefinition(
            name=f"c{i}",
            image=IMAGE,
            depends_on=(Dependency(f"c{i + 1}", "START"),) if i + 1 < n else (),
        )
        for i in range(n)
    )
    td = TaskDefinition(family="f", network_mode="awsvpc", containers=chain)
    # (The old cubic ordering took ~95 s on this chain; performance is the benchmarks' to
    # measure, so no timing here: only the result.)
    order = start_order(td)
    assert order == [f"c{i}" for i in reversed(range(n))]


def test_cycle_search_does_not_recurse_on_the_chain_length() -> None:
    from agent.taskdef import ContainerDefinition, _find_cycle

    n = 50_000
    chain = [
        ContainerDefinition(
            name=f"c{i}", image=IMAGE, depends_on=(Dependency(f"c{(i + 1) % n}", "START"),)
        )
        for i in range(n)
    ]
    cycle = _find_cycle(chain)
    assert cycle[0] == "c0" and cycle[-1] == "c0" and len(cycle) == n + 1
    assert _find_cycle(chain[:-1]) == []


def test_deeply_nested_json_is_a_located_error() -> None:
    from agent.taskdef import load_json

    for text in ("[" * 5000 + "]" * 5000, '{"a":' * 5000 + "1" + "}" * 5000, "[" * 100_000):
        with pytest.raises(TaskDefinitionError) as e:
            load_json(text, source="deep.json")
        assert "nested too deeply" in str(e.value) or "is at most 65536 bytes" in str(e.value)
    with pytest.raises(TaskDefinitionError) as e:
        load_json("[" * 5000 + "]" * 5000, source="deep.json")
    assert str(e.value).startswith("deep.json: is nested too deeply")


def test_deeply_nested_decoded_data_is_a_located_error() -> None:
    deep: object = 1
    for _ in range(500):
        deep = [deep]
    found = problems({**one(), "tags": deep})
    assert found == [("tags", "is nested too deeply (more than 32 levels)")]


def test_a_document_above_the_ecs_maximum_size_is_refused_with_the_limit() -> None:
    from agent.taskdef import MAX_DEFINITION_BYTES, load_json

    assert MAX_DEFINITION_BYTES == 64 * 1024
    text = json.dumps({**one(), "x": "y" * MAX_DEFINITION_BYTES})
    with pytest.raises(TaskDefinitionError) as e:
        load_json(text, source="big.json")
    assert f"at most {MAX_DEFINITION_BYTES} bytes" in str(e.value)
    assert load_json(json.dumps(one()))["family"] == "f"


@pytest.mark.parametrize(
    "text", ['{"memory": NaN}', '{"memory": Infinity}', '{"memory": ' + "9" * 5000 + "}"]
)
def test_json_that_is_not_strict_json_is_a_located_error(text: str) -> None:
    from agent.taskdef import load_json

    with pytest.raises(TaskDefinitionError):
        load_json(text, source="x.json")


@pytest.mark.parametrize("name", ["/tmp/x", "../../..", "a/b", "..", "v\n", "", "a" * 256, "v v"])
def test_volume_names_are_ecs_names(name: str) -> None:
    found = problems({**one(), "volumes": [{"name": name}]})
    assert found[0][0] == "volumes[0].name", found


@pytest.mark.parametrize(
    ("container", "path"),
    [
        (
            {"mountPoints": [{"sourceVolume": "../x", "containerPath": "/d"}]},
            "containerDefinitions[0].mountPoints[0].sourceVolume",
        ),
        (
            {"mountPoints": [{"sourceVolume": "v", "containerPath": "/d/../../etc"}]},
            "containerDefinitions[0].mountPoints[0].containerPath",
        ),
        (
            {"mountPoints": [{"sourceVolume": "v", "containerPath": "/d\0x"}]},
            "containerDefinitions[0].mountPoints[0].containerPath",
        ),
        (
            {"volumesFrom": [{"sourceContainer": "/x"}]},
            "containerDefinitions[0].volumesFrom[0].sourceContainer",
        ),
    ],
)
def test_mount_names_and_paths_are_checked(container: dict[str, object], path: str) -> None:
    found = problems({**one(**container), "volumes": [{"name": "v"}]})
    assert [p for p, _ in found] == [path], found


def test_volume_dir_refuses_a_name_that_is_not_a_volume_name(tmp_path: Path) -> None:
    from agent.containers import volume_dir
    from agent.errors import InvalidInput

    assert volume_dir(tmp_path, "data") == tmp_path / "volumes" / "data"
    for bad in ("/tmp/x", "../../..", "..", "a/b", "x\n"):
        with pytest.raises(InvalidInput):
            volume_dir(tmp_path, bad)


@pytest.mark.parametrize(
    "data",
    [
        {**one(), "family": "web\n"},
        {"containerDefinitions": [{"name": "web\n", "image": IMAGE}]},
    ],
)
def test_a_trailing_newline_is_not_part_of_a_valid_name(data: dict[str, object]) -> None:
    assert problems(data)


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("/", False), ("/etc", False), ("/proc", False), ("/proc/1", False), ("/sys/fs", False),
        ("/dev", False), ("/dev/shm", False), ("/etc/", False), ("/srv/data", True),
        ("/devices", True), ("/etc/nginx", True),
    ],
)  # fmt: skip
def test_a_host_path_to_a_sensitive_host_directory_warns(path: str, ok: bool) -> None:
    td = parse_task_definition({**one(), "volumes": [{"name": "v", "host": {"sourcePath": path}}]})
    warned = [w for w in td.warnings if w.startswith("volumes[0].host.sourcePath:")]
    assert (not warned) == ok, td.warnings
    if warned:
        assert "gives the task access to the host's" in warned[0]


def test_privileged_and_dangerous_capabilities_warn_naming_the_field() -> None:
    td = parse_task_definition(
        one(
            privileged=True,
            linuxParameters={"capabilities": {"add": ["SYS_ADMIN", "CAP_NET_ADMIN", "CHOWN"]}},
        )
    )
    assert any(w.startswith("containerDefinitions[0].privileged:") for w in td.warnings)
    caps = [w for w in td.warnings if w.startswith("containerDefinitions[0].linuxParameters")]
    assert len(caps) == 2 and "SYS_ADMIN" in caps[0] and "NET_ADMIN" in caps[1], caps
    assert not parse_task_definition(one(privileged=False)).warnings


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({**one(), "memory": 10**32}, "memory"),
        ({**one(), "memory": 1e32}, "memory"),
        ({**one(), "memory": "1e32"}, "memory"),
        ({**one(), "memory": "99999999999 GB"}, "memory"),
        ({**one(), "memory": True}, "memory"),
        ({**one(), "cpu": 10**32}, "cpu"),
        ({**one(), "cpu": 1e32}, "cpu"),
        ({**one(), "cpu": -(10**400)}, "cpu"),
        ({**one(), "memory": -(10**400)}, "memory"),
        (one(memory=10**32), "containerDefinitions[0].memory"),
        (one(memory=1e32), "containerDefinitions[0].memory"),
        (one(memory=True), "containerDefinitions[0].memory"),
        (one(memoryReservation=10**32), "containerDefinitions[0].memoryReservation"),
        (one(cpu=10**32), "containerDefinitions[0].cpu"),
        (
            one(ulimits=[{"name": "nofile", "softLimit": 1, "hardLimit": 2**40}]),
            "containerDefinitions[0].ulimits[0].hardLimit",
        ),
        (
            one(linuxParameters={"sharedMemorySize": 10**32}),
            "containerDefinitions[0].linuxParameters.sharedMemorySize",
        ),
        (
            one(linuxParameters={"tmpfs": [{"containerPath": "/t", "size": 10**32}]}),
            "containerDefinitions[0].linuxParameters.tmpfs[0].size",
        ),
    ],
)
def test_huge_numbers_floats_and_booleans_are_refused_at_their_field(
    data: dict[str, object], path: str
) -> None:
    found = problems(data)
    assert [p for p, _ in found] == [path], found


def _naive_start_order(td: TaskDefinition) -> list[str]:
    """The earlier (cubic) start_order, kept as the reference its replacement must match."""
    names = [c.name for c in td.containers]
    deps = {c.name: {d.container_name for d in c.depends_on} for c in td.containers}
    routers = [c.name for c in td.containers if c.firelens is not None]
    for c in td.containers:
        lc = c.log_configuration
        if lc is not None and lc.driver == "awsfirelens":
            deps[c.name] |= set(routers) - {c.name}
    order: list[str] = []
    while len(order) < len(names):
        ready = [n for n in names if n not in order and deps[n] <= set(order)]
        if not ready:
            ready = [n for n in names if n not in order]
        order.append(ready[0])
    return order


def _recursive_find_cycle(containers: list[ContainerDefinition]) -> list[str]:
    """The earlier (recursive) cycle search, kept as the reference."""
    deps = {c.name: [d.container_name for d in c.depends_on] for c in containers}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str]:
        state[n] = 1
        stack.append(n)
        for m in deps.get(n, []):
            if m not in deps or m == n:
                continue
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if state.get(m) is None:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return []

    for name in deps:
        if state.get(name) is None:
            found = visit(name)
            if found:
                return found
    return []


def test_start_order_and_cycle_search_match_the_earlier_algorithms_on_random_tasks() -> None:
    import random

    from agent.taskdef import ContainerDefinition, FirelensConfiguration, _find_cycle

    rng = random.Random(9)
    for _ in range(2000):
        n = rng.randint(1, 10)
        names = [f"c{i}" for i in range(n)]
        router = rng.choice([None, *names])
        containers = []
        for name in names:
            targets = rng.sample([*names, "ghost"], rng.randint(0, min(3, n)))
            containers.append(
                ContainerDefinition(
                    name=name,
                    image=IMAGE,
                    depends_on=tuple(Dependency(t, "START") for t in targets),
                    firelens=FirelensConfiguration("fluentbit") if name == router else None,
                    log_configuration=LogConfiguration("awsfirelens")
                    if router and rng.random() < 0.5
                    else None,
                )
            )
        td = TaskDefinition(family="f", network_mode="awsvpc", containers=tuple(containers))
        assert start_order(td) == _naive_start_order(td), containers
        assert _find_cycle(containers) == _recursive_find_cycle(containers), containers


def test_adding_all_capabilities_is_accepted_as_in_ecs_with_a_warning() -> None:
    td = parse_task_definition(one(linuxParameters={"capabilities": {"add": ["ALL"]}}))
    lp = td.containers[0].linux_parameters
    assert lp is not None and lp.capabilities_add == ("ALL",)
    assert [w.split(":")[0] for w in td.warnings] == [
        "containerDefinitions[0].linuxParameters.capabilities.add[0]"
    ]
    assert "every capability" in td.warnings[0]


def test_an_image_reference_is_at_most_255_characters_as_in_ecs() -> None:
    long = "nstask.local/" + "a" * 230 + ":latest"
    assert len(long) == 250 and parse_task_definition(one(image=long)).containers
    assert problems(one(image="nstask.local/" + "a" * 300)) == [
        ("containerDefinitions[0].image", "must be at most 255 characters (as in ECS), got 313")
    ]


def test_model_values_are_frozen_comparable_and_replaceable() -> None:
    """The model's record classes behave as frozen dataclasses do (they replace them to keep
    `nstask validate` from importing dataclasses)."""
    from agent.taskdef import HealthCheck, TaskDefinition, replace

    a = HealthCheck(("CMD", "true"))
    assert a == HealthCheck(command=("CMD", "true"), interval=30) and hash(a) == hash(
        HealthCheck(("CMD", "true"))
    )
    assert a != HealthCheck(("CMD", "true"), retries=4)
    with pytest.raises(AttributeError, match="frozen"):
        a.retries = 5  # type: ignore[misc]
    assert replace(a, retries=5).retries == 5 and a.retries == 3
    with pytest.raises(TypeError, match="missing argument 'command'"):
        HealthCheck()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected"):
        HealthCheck(("CMD",), nope=1)  # type: ignore[call-arg]
    t1 = TaskDefinition("f", "awsvpc", (), warnings=("w",))
    assert t1 == TaskDefinition("f", "awsvpc", ())  # warnings are not part of the value
    assert "HealthCheck(command=('CMD', 'true'), interval=30" in repr(a)


def test_repository_credentials_are_accepted_and_checked() -> None:
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:reg/creds-AbCdEf"
    td = parse_task_definition(one(repositoryCredentials={"credentialsParameter": arn}))
    assert td.containers[0].repository_credentials == arn
    assert not [w for w in td.warnings if "repositoryCredentials" in w]
    for bad, why in (
        ({"credentialsParameter": "arn:aws:s3:::bucket"}, "neither a Secrets Manager"),
        ({}, "credentialsParameter: is required"),
        ("reg/creds", "must be an object"),
    ):
        with pytest.raises(TaskDefinitionError, match=why) as e:
            parse_task_definition(one(repositoryCredentials=bad))
        assert "containerDefinitions[0].repositoryCredentials" in str(e.value)


# -- what ECS registers is accepted here (issue 12) ------------------------------------------
@pytest.mark.parametrize(
    ("cpu", "memory", "units", "mib"),
    [
        ("1 vcpu", "2 GB", 1024, 2048),
        ("1 vCPU", "2GB", 1024, 2048),
        (".25 vCPU", ".5 GB", 256, 512),
        ("0.25 vcpu", "0.5GB", 256, 512),
        ("2 vcpus", "2048 MiB", 2048, 2048),
        ("1024", "4 gb", 1024, 4096),
    ],
)
def test_task_cpu_and_memory_in_every_form_ecs_accepts(
    cpu: str, memory: str, units: int, mib: int
) -> None:
    td = parse_task_definition({**one(), "cpu": cpu, "memory": memory})
    assert (td.cpu, td.memory) == (units, mib)
    assert td.warnings == ()


def test_a_health_check_without_cmd_prefix_is_accepted_with_a_warning_and_never_run() -> None:
    from agent.lifecycle.accept import has_check

    td = parse_task_definition(one(healthCheck={"command": ["curl", "-f", "http://localhost/"]}))
    c = td.containers[0]
    assert c.health_check is not None and c.health_check.command[0] == "curl"
    assert not has_check(c)  # never run: health stays UNKNOWN, as Docker does
    assert len(td.warnings) == 1
    assert td.warnings[0].startswith("containerDefinitions[0].healthCheck.command: ")
    assert "UNKNOWN" in td.warnings[0] and "CMD-SHELL" in td.warnings[0]
    ok = parse_task_definition(one(healthCheck={"command": ["CMD", "true"]})).containers[0]
    assert has_check(ok)
    assert problems(one(healthCheck={"command": []}))[0][0] == (
        "containerDefinitions[0].healthCheck.command"
    )


@pytest.mark.parametrize(
    ("value_from", "local"),
    [
        ("arn:aws:secretsmanager:${AWS_REGION}:${AWS_ACCOUNT_ID}:secret:db-AbCdEf", "db"),
        ("arn:aws:secretsmanager:REGION:ACCOUNT_ID:secret:app/db:password::", "app/db:password"),
        ("arn:aws:ssm:<region>:<account>:parameter/app/token", "app/token"),
    ],
)
def test_secret_arns_with_placeholder_region_or_account_are_accepted(
    value_from: str, local: str
) -> None:
    td = parse_task_definition(one(secrets=[{"name": "S", "valueFrom": value_from}]))
    assert local_secret_name(td.containers[0].secrets[0].value_from) == local


def test_placeholder_secret_arns_are_a_clear_error_when_asked_of_aws() -> None:
    from agent.aws import parse_ref
    from agent.errors import InvalidInput

    with pytest.raises(InvalidInput, match=r"region '\$\{AWS_REGION\}' is not an AWS region"):
        parse_ref("arn:aws:ssm:${AWS_REGION}:123456789012:parameter/x", default_region="us-east-1")
    with pytest.raises(InvalidInput, match="account 'ACCOUNT' is not a 12-digit account id"):
        parse_ref("arn:aws:secretsmanager:eu-west-1:ACCOUNT:secret:x", default_region="us-east-1")
    ok = parse_ref("arn:aws:ssm:eu-west-1:123456789012:parameter/x", default_region="us-east-1")
    assert ok.region == "eu-west-1"


def test_a_task_role_arn_with_a_placeholder_account_is_accepted_with_a_warning() -> None:
    td = parse_task_definition(
        {**one(), "taskRoleArn": "arn:aws:iam::${AWS_ACCOUNT_ID}:role/app-task"}
    )
    assert [w.split(":")[0] for w in td.warnings] == ["taskRoleArn"]
    assert "placeholder" in td.warnings[0]
    assert problems({**one(), "taskRoleArn": "not-an-arn"})[0][0] == "taskRoleArn"
    assert (
        parse_task_definition(
            {**one(), "taskRoleArn": "arn:aws:iam::123456789012:role/app"}
        ).warnings
        == ()
    )


def test_pseudo_terminal_and_interactive_are_taken_not_ignored() -> None:
    td = parse_task_definition(one(pseudoTerminal=True, interactive=True))
    c = td.containers[0]
    assert (c.pseudo_terminal, c.interactive) == (True, True)
    assert not any("pseudoTerminal" in w or "interactive" in w for w in td.warnings)
    assert parse_task_definition(one()).containers[0].pseudo_terminal is False
    with pytest.raises(TaskDefinitionError, match="pseudoTerminal"):
        parse_task_definition(one(pseudoTerminal="yes"))
    # interactive alone: stdin cannot be kept open without a terminal; said, not hidden.
    alone = parse_task_definition(one(interactive=True))
    assert any("interactive" in w and "pseudoTerminal" in w for w in alone.warnings)
