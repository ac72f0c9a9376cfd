"""Task definition validation: ECS JSON in, a typed model or located errors out."""

from __future__ import annotations

import json

import pytest

from agent.errors import TaskDefinitionError
from agent.taskdef import parse_task_definition, parse_task_definition_text, with_environment

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
    td = parse_task_definition({**one(links=["db"]), "taskRoleArn": "arn:x", "somethingNew": 1})
    assert any(w.startswith("containerDefinitions[0].links:") for w in td.warnings)
    assert any(w.startswith("taskRoleArn:") for w in td.warnings)
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
    from pathlib import Path

    for path in sorted((Path(__file__).parents[2] / "examples").glob("*.json")):
        parse_task_definition(json.loads(path.read_text()), source=str(path))
