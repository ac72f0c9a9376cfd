"""The verdict table of issue 12 (agent.fields): every field of ECS's task definition API
has one, the README shows it, and validation warns as the table says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import botocore.loaders
import pytest

from agent.fields import BOOKKEEPING, FIELDS, IMPLEMENTED, NOT_ECS, WARNED
from agent.taskdef import parse_task_definition

ROOT = Path(__file__).parents[2]
IMAGE = "nstask.local/busybox:latest"


def _ecs_shapes() -> dict[str, Any]:
    model = botocore.loaders.Loader().load_service_model("ecs", "service-2")
    shapes: dict[str, Any] = model["shapes"]
    return shapes


def _members(shapes: dict[str, Any], name: str) -> dict[str, str]:
    """A structure's members -> the structure shape they lead to (through lists and maps),
    or "" for a scalar."""
    out = {}
    for key, m in shapes[name]["members"].items():
        target = m["shape"]
        while shapes[target]["type"] in ("list", "map"):
            s = shapes[target]
            target = s["member"]["shape"] if s["type"] == "list" else s["value"]["shape"]
        out[key] = target if shapes[target]["type"] == "structure" else ""
    return out


def _api_paths() -> dict[str, str]:
    """Every field path the verdicts must cover: the members of RegisterTaskDefinition's
    request and of TaskDefinition (describe's answer), and below each field nstask
    implements, its members (a field only accepted with a warning covers its sub-fields)."""
    shapes = _ecs_shapes()
    top = {
        **_members(shapes, "RegisterTaskDefinitionRequest"),
        **_members(shapes, "TaskDefinition"),
    }
    out: dict[str, str] = {}
    todo = list(top.items())
    while todo:
        path, shape = todo.pop()
        out[path] = shape
        kind = FIELDS.get(path, (None, ""))[0]
        if shape and kind == IMPLEMENTED and path.count(".") < 6:
            todo.extend((f"{path}.{k}", s) for k, s in _members(shapes, shape).items())
    return out


def test_every_field_of_the_ecs_api_has_a_verdict() -> None:
    missing = sorted(p for p in _api_paths() if p not in FIELDS)
    assert missing == [], f"fields of ECS's API without a verdict in agent/fields.py: {missing}"


def test_every_verdict_names_a_field_of_the_ecs_api_or_says_it_is_not_one() -> None:
    api = _api_paths()
    stale = sorted(p for p in FIELDS if p not in api and p not in NOT_ECS)
    assert stale == []
    assert all(kind in (IMPLEMENTED, WARNED, BOOKKEEPING) for kind, _ in FIELDS.values())
    assert all(text for kind, text in FIELDS.values() if kind == WARNED)


def test_the_readme_table_is_the_one_the_script_prints() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "field_table.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    printed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "field_table.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "| `containerDefinitions.user` | implemented |" in printed
    assert printed in (ROOT / "README.md").read_text()


def _warned(level: str) -> list[str]:
    prefix = "" if level == "" else level + "."
    return [
        p[len(prefix) :]
        for p, (kind, _) in FIELDS.items()
        if kind == WARNED and p.startswith(prefix) and "." not in p[len(prefix) :]
    ]


@pytest.mark.parametrize("key", _warned(""))
def test_a_task_field_only_accepted_warns_with_its_verdict(key: str) -> None:
    data = {"family": "f", "containerDefinitions": [{"name": "a", "image": IMAGE}], key: ["x"]}
    td = parse_task_definition(data)
    assert td.warnings == (f"{key}: {FIELDS[key][1]}",)


@pytest.mark.parametrize("key", _warned("containerDefinitions"))
def test_a_container_field_only_accepted_warns_with_its_verdict(key: str) -> None:
    data = {"family": "f", "containerDefinitions": [{"name": "a", "image": IMAGE, key: ["x"]}]}
    td = parse_task_definition(data)
    path = f"containerDefinitions.{key}"
    assert td.warnings == (f"containerDefinitions[0].{key}: {FIELDS[path][1]}",)


@pytest.mark.parametrize("key", _warned("volumes"))
def test_a_volume_field_only_accepted_warns_with_its_verdict(key: str) -> None:
    data = {
        "family": "f",
        "containerDefinitions": [{"name": "a", "image": IMAGE}],
        "volumes": [{"name": "v", key: {"fileSystemId": "fs-1"}}],
    }
    td = parse_task_definition(data)
    assert td.warnings == (f"volumes[0].{key}: {FIELDS['volumes.' + key][1]}",)


def test_implemented_and_bookkeeping_fields_do_not_warn() -> None:
    data = {
        "family": "f",
        "containerDefinitions": [{"name": "a", "image": IMAGE, "essential": True}],
        "taskDefinitionArn": "arn:aws:ecs:us-east-1:123456789012:task-definition/f:1",
        "deleteRequestedAt": 1.0,
        "requiresCompatibilities": ["FARGATE"],
    }
    assert parse_task_definition(data).warnings == ()


def test_a_field_ecs_does_not_have_is_named_unknown() -> None:
    td = parse_task_definition({"containerDefinitions": [{"name": "a", "image": IMAGE}], "x": 1})
    assert td.warnings == ("x: unknown task definition field; ignored",)
