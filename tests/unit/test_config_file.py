"""The agent's config file (agent.config_file): every setting, the order defaults < file <
environment < flags, and located errors for unknown keys, wrong types and bad TOML."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from agent.config import AgentConfig, load_config
from agent.config_file import read_config_file
from agent.errors import InvalidInput

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agent.toml"


@pytest.fixture(autouse=True)
def _no_host_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for f in fields(AgentConfig):
        monkeypatch.delenv("NSTASK_" + f.name.upper(), raising=False)
    monkeypatch.setenv("NSTASK_CONFIG", "none")


def test_the_example_file_names_every_setting_with_its_default() -> None:
    values = read_config_file(EXAMPLE)
    optional = {"conflist_file", "shim_path"}  # commented out: no default value to write
    assert set(values) == {f.name for f in fields(AgentConfig)} - optional
    assert AgentConfig().with_overrides(**values) == AgentConfig()


def test_file_then_environment_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(
        'bridge = "nstaskf0"\nsubnet = "10.213.9.0/24"\npids_limit = 10\n'
        'cni_path = ["/x"]\nstop_tasks_on_exit = true\nstop_timeout = 5\n'
    )
    monkeypatch.setenv("NSTASK_SUBNET", "10.213.8.0/24")
    monkeypatch.setenv("NSTASK_PIDS_LIMIT", "20")
    c = load_config(config_file=conf, pids_limit=30)
    assert c.bridge == "nstaskf0"  # file over default
    assert c.subnet == "10.213.8.0/24"  # environment over file
    assert c.pids_limit == 30  # flag over environment
    assert c.cni_path == ("/x",) and c.stop_tasks_on_exit is True and c.stop_timeout == 5.0
    monkeypatch.setenv("NSTASK_CONFIG", str(conf))  # the variable names the file too
    assert load_config().bridge == "nstaskf0"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('bridge = "b"\n\nbrige = "x"\n', ":3: brige: unknown setting"),
        ('pids_limit = "many"\n', ":1: pids_limit: must be a whole number >= 0, not str"),
        ("stop_tasks_on_exit = 1\n", ":1: stop_tasks_on_exit: must be true or false"),
        ('cni_path = "/usr/lib/cni"\n', ":1: cni_path: must be an array of strings"),
        ("[agent]\nbridge = 'x'\n", ":1: agent: unknown table"),
        ("bridge = \n", "line 1"),
    ],
)
def test_bad_files_are_located_errors(tmp_path: Path, text: str, message: str) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(text)
    with pytest.raises(InvalidInput) as e:
        load_config(config_file=conf)
    assert str(conf) in e.value.message and message in e.value.message, e.value.message


def test_a_named_file_must_exist_the_default_need_not(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such file"):
        read_config_file(tmp_path / "missing.toml")
    assert read_config_file() == {}  # NSTASK_CONFIG=none


def test_the_agent_command_exits_2_naming_the_line(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text("pids_limit = -1\n")
    out = CliRunner().invoke(cli.main, ["agent", "--config", str(conf)])
    assert out.exit_code == 2
    assert f"{conf}:1: pids_limit: must be a whole number >= 0" in out.output
