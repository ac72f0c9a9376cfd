"""Issue 9: `nstask ps` prints what the store holds; a value with a newline or a terminal
escape (a family from an old store, a container name) must not break or rewrite the table."""

from __future__ import annotations

import time
from typing import Any

import pytest
from click.testing import CliRunner

import cli


class _FakeClient:
    def __init__(self, tasks: list[dict[str, Any]]) -> None:
        self.tasks = tasks

    def call(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        assert (method, path.split("?")[0]) == ("GET", "/v1/tasks")
        return self.tasks


def _task(**fields: Any) -> dict[str, Any]:
    return {
        "id": "0123456789abcdef",
        "family": "web",
        "lastStatus": "RUNNING",
        "ip": "10.0.0.2",
        "ports": [],
        "containers": [
            {"name": "app", "lastStatus": "RUNNING", "exitCode": None, "essential": True}
        ],
        "exitCode": None,
        "createdAt": time.time(),
        **fields,
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"family": "evil\nFAKE  ROW"},
        {"family": "a\x1b[2Jb"},
        {"family": "x\r\u2028y\tz"},
        {"family": None},
        {"ip": "10.0.0.2\n"},
        {
            "containers": [
                {"name": "a\nb", "lastStatus": "RUNNING", "exitCode": None, "essential": True}
            ]
        },
    ],
)
def test_a_cell_can_never_break_the_ps_table(
    monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any]
) -> None:
    monkeypatch.setattr(cli, "_client", lambda ctx: _FakeClient([_task(**fields)]))
    result = CliRunner().invoke(cli.main, ["ps"], color=True)  # no ANSI stripping
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2, lines
    assert not any(ch != " " and not ch.isprintable() for ch in result.output.replace("\n", ""))
    assert lines[1].startswith("0123456789ab  ")


def test_plain_values_are_shown_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_client", lambda ctx: _FakeClient([_task()]))
    out = CliRunner().invoke(cli.main, ["ps"]).output.splitlines()
    assert out[1].split()[:4] == ["0123456789ab", "web", "RUNNING", "10.0.0.2"]
    monkeypatch.setattr(cli, "_client", lambda ctx: _FakeClient([_task(family="evil\n")]))
    out = CliRunner().invoke(cli.main, ["ps"]).output.splitlines()
    assert out[1].split()[1] == "evil\\n"
