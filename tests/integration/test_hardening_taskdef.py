"""Issue 9, end to end: task definitions built to freeze or escape the agent are refused by
`nstask run -d` at once (exit 2, a located message), the agent keeps answering, and nothing
is left on the host."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from support import NSTASK, TEST_IMAGE, Agent, leaks, write_taskdef

from agent.taskdef import MAX_DEFINITION_BYTES

# A document above ECS's 64 KiB is refused by its size where the size is checked first (the
# CLI once it reads files with taskdef.load_json); the agent refuses it by its count.
TOO_BIG = f"at most {MAX_DEFINITION_BYTES} bytes"
QUICK = 2.5  # seconds, a CLI start (~0.3 s here) included


def _container(name: str, **fields: object) -> dict[str, object]:
    return {"name": name, "image": TEST_IMAGE, "essential": True, "command": ["true"], **fields}


def _refused_quickly(agent: Agent, path: str) -> str:
    """Run `nstask run -d path`, assert it exits 2 within QUICK seconds; return stderr."""
    t = time.monotonic()
    proc = agent.cli("run", "-d", path, timeout=30)
    took = time.monotonic() - t
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert took < QUICK, f"refused after {took:.2f} s"
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc.stderr


def _ps_answers_at_once(agent: Agent) -> None:
    t = time.monotonic()
    agent.cli("ps", "-a", check=True, timeout=10)
    assert time.monotonic() - t < QUICK


def test_ten_thousand_containers_are_refused_at_once_and_the_agent_keeps_answering(
    agent: Agent, tmp_path: Path
) -> None:
    before = agent.cli("ps", "-a", "-q", check=True).stdout
    td: dict[str, object] = {
        "family": "nstask-huge",
        "containerDefinitions": [_container(f"c{i}") for i in range(10_000)],
    }
    path = write_taskdef(tmp_path, td)
    # ps while the refusal is under way: validation must not hold the agent's event loop.
    run = subprocess.Popen(
        [NSTASK, "run", "-d", path],
        env=agent.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _ps_answers_at_once(agent)
        _, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 2, err[-2000:]
    assert (
        "containerDefinitions: at most 10 container definitions per task definition, got 10000"
        in err
        or TOO_BIG in err
    ), err[-2000:]
    _refused_quickly(agent, path)
    _ps_answers_at_once(agent)
    assert agent.cli("ps", "-a", "-q", check=True).stdout == before
    assert not leaks(agent)


def test_a_five_thousand_long_depends_on_chain_is_refused_at_once(
    agent: Agent, tmp_path: Path
) -> None:
    n = 5000
    chain = [
        _container(
            f"c{i}",
            **(
                {"dependsOn": [{"containerName": f"c{i + 1}", "condition": "START"}]}
                if i + 1 < n
                else {}
            ),
        )
        for i in range(n)
    ]
    path = write_taskdef(tmp_path, {"family": "nstask-chain", "containerDefinitions": chain})
    err = _refused_quickly(agent, path)
    assert "RecursionError" not in err
    assert (
        "containerDefinitions: at most 10 container definitions per task definition, got 5000"
        in err
        or TOO_BIG in err
    ), err[-2000:]
    _ps_answers_at_once(agent)
    assert not leaks(agent)


def test_a_deeply_nested_document_is_refused_with_a_located_message(
    agent: Agent, tmp_path: Path
) -> None:
    deep: object = "x"
    for _ in range(500):  # deeper than MAX_NESTING, shallow enough for any JSON parser
        deep = [deep]
    td = {"family": "nstask-deep", "containerDefinitions": [_container("app")], "tags": deep}
    err = _refused_quickly(agent, write_taskdef(tmp_path, td))
    assert "tags: is nested too deeply (more than 32 levels)" in err, err[-2000:]
    _ps_answers_at_once(agent)
    assert not leaks(agent)


def test_a_document_nested_beyond_the_parsers_limit_is_refused(
    agent: Agent, tmp_path: Path
) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 50_000 + "]" * 50_000)
    err = _refused_quickly(agent, str(path))
    assert "nested too deeply" in err or TOO_BIG in err, err[-2000:]


@pytest.mark.parametrize(
    "volume", ["../../../nstask-hardening-escape", "/tmp/nstask-hardening-escape"]
)
def test_a_volume_name_cannot_reach_outside_the_task_directory(
    agent: Agent, tmp_path: Path, volume: str
) -> None:
    before = agent.cli("ps", "-a", "-q", check=True).stdout
    td: dict[str, object] = {
        "family": "nstask-escape",
        "containerDefinitions": [
            _container("app", mountPoints=[{"sourceVolume": volume, "containerPath": "/data"}])
        ],
        "volumes": [{"name": volume}],
    }
    err = _refused_quickly(agent, write_taskdef(tmp_path, td))
    assert "volumes[0].name: must be 1-255 letters, digits, hyphens or underscores" in err, err
    assert agent.cli("ps", "-a", "-q", check=True).stdout == before
    # Nothing named like the volume anywhere the name could have led: the state dir and
    # every directory above it, and /tmp.
    places = [agent.state_dir, *agent.state_dir.parents, Path("/tmp")]
    made = [
        p / "nstask-hardening-escape" for p in places if (p / "nstask-hardening-escape").exists()
    ]
    for root, dirs, _ in os.walk(agent.state_dir):
        made += [Path(root) / d for d in dirs if d == "nstask-hardening-escape"]
    assert not made, made
    assert not leaks(agent)


def test_the_corpus_of_new_rules_is_refused_end_to_end(agent: Agent) -> None:
    """The issue 9 corpus cases (84 and on) through `nstask run -d`, each with its message."""
    corpus = Path(__file__).parents[1] / "taskdefs" / "invalid"
    paths = sorted(p for p in corpus.glob("*.json") if int(p.name.split("-")[0]) >= 84)
    assert len(paths) >= 15
    for path in paths:
        expected = path.with_suffix(".expected").read_text().splitlines()[0]
        err = _refused_quickly(agent, str(path))
        assert expected in err, (path.name, err)
    _ps_answers_at_once(agent)
    assert not leaks(agent)
