"""A corpus of task definitions: every invalid one is refused with exactly the error in its
.expected file (path: message lines); every valid one parses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import TaskDefinitionError
from agent.taskdef import parse_task_definition

CORPUS = Path(__file__).parents[1] / "taskdefs"
INVALID = sorted((CORPUS / "invalid").glob("*.json"))
VALID = sorted((CORPUS / "valid").glob("*.json"))


def test_the_corpus_is_large_enough() -> None:
    assert len(INVALID) >= 40
    assert all(p.with_suffix(".expected").exists() for p in INVALID)


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_definition_is_refused_with_the_expected_error(path: Path) -> None:
    expected = path.with_suffix(".expected").read_text().rstrip("\n")
    with pytest.raises(TaskDefinitionError) as e:
        parse_task_definition(json.loads(path.read_text()), source=path.name)
    got = "\n".join(f"{p}: {m}" if p else m for p, m in e.value.problems)
    assert got == expected


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_definition_parses(path: Path) -> None:
    td = parse_task_definition(json.loads(path.read_text()), source=path.name)
    assert td.containers
