"""Docker's security defaults on the real stack: a seccomp profile on every container (resolved
for its capabilities), the ways out (privileged, seccomp=unconfined), and a pids limit on the
task that contains a fork bomb."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import start_agent, stop_agent
from support import TEST_IMAGE, Agent, leaks, static_fixture_image, write_taskdef

PROBE_IMAGE = "nstask.local/test-sysprobe:1"
SOURCE = Path(__file__).parent / "fixtures" / "sysprobe.c"
PROBE = "grep -E '^Seccomp(_filters)?:' /proc/self/status; /bin/sysprobe vmsplice kcmp"


@pytest.fixture(scope="module")
def probe_image(agent: Agent, tmp_path_factory: pytest.TempPathFactory) -> str:
    """busybox plus a static helper that tries system calls the default profile filters."""
    return static_fixture_image(
        agent,
        tmp_path_factory.mktemp("sysprobe"),
        PROBE_IMAGE,
        SOURCE,
        "sysprobe",
        applets=("sh", "grep"),
    )


def probe(agent: Agent, tmp_path: Path, image: str, **container: Any) -> dict[str, str]:
    """Run the probe in a one-container task; its key=value and `Key:\tvalue` lines."""
    td: dict[str, object] = {
        "family": "seccomp",
        "containerDefinitions": [
            {
                "name": "probe",
                "image": image,
                "essential": True,
                "command": ["sh", "-c", PROBE],
                **container,
            }
        ],
    }
    task_id = agent.cli("run", "-d", write_taskdef(tmp_path, td), check=True).stdout.strip()
    t = agent.wait_status(task_id, "STOPPED", timeout=30)
    out = agent.cli("logs", task_id, check=True).stdout
    agent.cli("rm", task_id, check=True)
    assert t["containers"][0]["exitCode"] == 0, (t, out)
    found: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=") if "=" in line else line.partition(":")
        if sep:
            found[key.strip()] = value.strip()
    return found


def test_a_default_container_runs_under_the_default_profile(
    agent: Agent, tmp_path: Path, probe_image: str
) -> None:
    got = probe(agent, tmp_path, probe_image)
    assert got["Seccomp"] == "2"  # filter mode
    assert got["Seccomp_filters"] == "1"
    assert got["vmsplice"] == "EPERM"  # the profile's block list
    assert got["kcmp"] == "EPERM"  # allowed only with CAP_SYS_PTRACE


def test_an_added_capability_enables_the_calls_the_profile_ties_to_it(
    agent: Agent, tmp_path: Path, probe_image: str
) -> None:
    got = probe(
        agent,
        tmp_path,
        probe_image,
        linuxParameters={"capabilities": {"add": ["SYS_PTRACE"]}},
    )
    assert got["Seccomp"] == "2"
    assert got["kcmp"] == "ok"
    assert got["vmsplice"] == "EPERM"


def test_seccomp_unconfined_turns_the_filter_off(
    agent: Agent, tmp_path: Path, probe_image: str
) -> None:
    got = probe(agent, tmp_path, probe_image, dockerSecurityOptions=["seccomp=unconfined"])
    assert got["Seccomp"] == "0"
    assert got["vmsplice"] == "ok" and got["kcmp"] == "ok"


def test_privileged_runs_without_seccomp(agent: Agent, tmp_path: Path, probe_image: str) -> None:
    got = probe(agent, tmp_path, probe_image, privileged=True)
    assert got["Seccomp"] == "0"
    assert got["vmsplice"] == "ok"


def test_a_profile_file_of_the_users_own(agent: Agent, tmp_path: Path, probe_image: str) -> None:
    profile = tmp_path / "only-vmsplice.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["vmsplice"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                ],
            }
        )
    )
    got = probe(agent, tmp_path, probe_image, dockerSecurityOptions=[f"seccomp={profile}"])
    assert got["Seccomp"] == "2"
    assert got["vmsplice"] == "ENOSYS" and got["kcmp"] == "ok"


def test_a_missing_profile_file_fails_the_container_with_its_name(
    agent: Agent, tmp_path: Path
) -> None:
    absent = tmp_path / "absent.json"
    td: dict[str, object] = {
        "family": "seccomp-missing",
        "containerDefinitions": [
            {
                "name": "app",
                "image": TEST_IMAGE,
                "command": ["true"],
                "dockerSecurityOptions": [f"seccomp={absent}"],
            }
        ],
    }
    proc = agent.cli("run", "-d", write_taskdef(tmp_path, td))
    task_id = proc.stdout.strip()
    if proc.returncode == 0:
        t = agent.wait_status(task_id, "STOPPED", timeout=30)
        assert str(absent) in json.dumps(t)
        agent.cli("rm", task_id, check=True)
    else:
        assert str(absent) in proc.stderr
    assert not leaks(agent)


# -- pids limit ------------------------------------------------------------------------------
LIMIT = 64


@pytest.fixture(scope="module")
def limited_agent() -> Iterator[Agent]:
    a, proc, base = start_agent(extra_env={"NSTASK_PIDS_LIMIT": str(LIMIT)})
    try:
        yield a
    finally:
        stop_agent(a, proc, base)  # includes the leak check


def test_a_fork_bomb_is_contained_by_the_task_pids_limit(
    limited_agent: Agent, tmp_path: Path
) -> None:
    a = limited_agent
    gate = tmp_path / "gate"
    gate.mkdir()
    # A classic bomb in the background, released only once the limit is seen in place (so a
    # missing limit fails the test instead of the machine); PID 1 then waits without forking.
    bomb = "until [ -e /gate/go ]; do sleep 0.05; done; f() { f | f & }; f; exec sleep 3600"
    td: dict[str, object] = {
        "family": "forkbomb",
        "cpu": "256",  # a quarter of a CPU: the bomb must not starve the shared machine
        "volumes": [{"name": "gate", "host": {"sourcePath": str(gate)}}],
        "containerDefinitions": [
            {
                "name": "bomb",
                "image": TEST_IMAGE,
                "essential": True,
                "command": ["sh", "-c", bomb],
                "mountPoints": [{"sourceVolume": "gate", "containerPath": "/gate"}],
            }
        ],
    }
    task_id = a.cli("run", "-d", write_taskdef(tmp_path, td), check=True).stdout.strip()
    a.wait_status(task_id, "RUNNING")
    cg = Path(f"/sys/fs/cgroup/pids/nstask/{task_id}")
    assert (cg / "pids.max").read_text().strip() == str(LIMIT)
    (gate / "go").touch()
    peak = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        peak = max(peak, int((cg / "pids.current").read_text()))
        time.sleep(0.02)
    assert peak <= LIMIT
    # Fork failures are counted where the forking process lives (the container's cgroup, on
    # cgroup v1), whichever ancestor's limit was hit.
    failures = 0
    for events in cg.glob("**/pids.events"):
        words = events.read_text().split()
        failures += int(words[words.index("max") + 1])
    assert failures > 0, f"the bomb never reached the limit (peak {peak})"
    # The host is unaffected: the agent answers and another task runs to completion.
    t0 = time.monotonic()
    assert a.cli("ps", check=True, timeout=10).returncode == 0
    other = a.cli(
        "run",
        "-d",
        write_taskdef(
            tmp_path,
            {
                "family": "bystander",
                "containerDefinitions": [
                    {"name": "echo", "image": TEST_IMAGE, "command": ["echo", "still-here"]}
                ],
            },
            name="other.json",
        ),
        check=True,
    ).stdout.strip()
    a.wait_status(other, "STOPPED", timeout=30)
    assert "still-here" in a.cli("logs", other, check=True).stdout
    assert time.monotonic() - t0 < 20
    a.cli("rm", other, check=True)
    # The bomb's task stops and leaves nothing behind.
    a.cli("stop", "-t", "0", task_id, check=True, timeout=60)
    assert not cg.exists()
    a.cli("rm", task_id, check=True)
    assert not leaks(a)
