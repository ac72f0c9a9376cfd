"""FireLens: the task's log router starts first and receives the app containers' lines over
the unix socket the agent gives it, in Fluentd Forward messages tagged as FireLens tags them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest
from support import Agent, static_fixture_image, write_taskdef

ROUTER_IMAGE = "nstask.local/test-router:1"
SOURCE = Path(__file__).parent / "fixtures" / "unix_sink.c"


@pytest.fixture(scope="module")
def router_image(agent: Agent, tmp_path_factory: pytest.TempPathFactory) -> str:
    """busybox plus a static unix-socket sink standing in for fluent-bit."""
    return static_fixture_image(
        agent,
        tmp_path_factory.mktemp("router"),
        ROUTER_IMAGE,
        SOURCE,
        "router",
        dirs=("var/run/fluent", "out"),
    )


def _firelens_task(
    family: str, router_image: str, out: Path, script: str, log_configuration: dict[str, Any]
) -> dict[str, Any]:
    """The test router (writing what it receives to `out`/received) and an app whose output
    goes to it through awsfirelens."""
    return {
        "family": family,
        "volumes": [{"name": "out", "host": {"sourcePath": str(out)}}],
        "containerDefinitions": [
            {
                "name": "log_router",
                "image": router_image,
                "essential": True,
                "command": ["/bin/router", "/var/run/fluent/fluent.sock", "/out/received"],
                "firelensConfiguration": {"type": "fluentbit"},
                "mountPoints": [{"sourceVolume": "out", "containerPath": "/out"}],
            },
            {
                "name": "app",
                "image": "nstask.local/busybox:latest",
                "essential": True,
                "command": ["sh", "-c", script],
                "logConfiguration": log_configuration,
                "dependsOn": [{"containerName": "log_router", "condition": "START"}],
            },
        ],
    }


def test_app_lines_arrive_at_the_router_container(
    agent: Agent, tmp_path: Path, router_image: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    td = _firelens_task(
        "firelens",
        router_image,
        out,
        "sleep 0.5; for i in 1 2 3; do echo line-$i; done; echo oops >&2; sleep 1",
        {"logDriver": "awsfirelens", "options": {"Name": "cloudwatch", "region": "local"}},
    )
    task_id = agent.cli("run", "-d", write_taskdef(tmp_path, td), check=True).stdout.strip()
    t = agent.wait_status(task_id, "STOPPED", timeout=40)
    assert t["stopReason"] == "Essential container in task exited"
    unpacker = msgpack.Unpacker(raw=False, ext_hook=lambda code, data: (code, data))
    unpacker.feed((out / "received").read_bytes())
    messages = list(unpacker)
    assert messages, "the router received nothing"
    tags = {m[0] for m in messages}
    assert tags == {f"app-firelens-{task_id}"}
    records = [m[2] for m in messages]
    assert [r["log"] for r in records if r["source"] == "stdout"] == ["line-1", "line-2", "line-3"]
    assert [r["log"] for r in records if r["source"] == "stderr"] == ["oops"]
    assert all(r["container_name"] == "app" and r["Name"] == "cloudwatch" for r in records)
    # FireLens's ECS metadata (enable-ecs-log-metadata defaults to "true"): the session
    # agent's defaults, cluster nstask in us-east-1 of account 000000000000, revision "1".
    assert all(r["ecs_cluster"] == "nstask" for r in records)
    assert all(
        r["ecs_task_arn"] == f"arn:aws:ecs:us-east-1:000000000000:task/nstask/{task_id}"
        for r in records
    )
    assert all(r["ecs_task_definition"] == "firelens:1" for r in records)
    # EventTime: msgpack ext type 0, 8 bytes.
    assert all(isinstance(m[1], tuple) and m[1][0] == 0 and len(m[1][1]) == 8 for m in messages)
    assert "router listening" in agent.cli("logs", task_id, "log_router", check=True).stdout
    agent.cli("rm", task_id, check=True)


def _shim_cmdlines(task_id: str) -> list[str]:
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "nstask-shim-logger" in cmd and task_id in cmd:
            out.append(cmd)
    return out


def test_secret_options_reach_the_router_and_never_the_shims_argv(
    agent: Agent, tmp_path: Path, router_image: str
) -> None:
    """Issue 9, finding 17: secretOptions were checked but never used, and log options were
    in the shim's argv, which every local user can read in /proc/PID/cmdline."""
    secret = "nstask-dd-key-7f3a9c"
    agent.cli("secret", "put", "nstask-test/dd-key", input=secret, check=True)
    out = tmp_path / "out"
    out.mkdir()
    td = _firelens_task(
        "firelens-secret",
        router_image,
        out,
        "sleep 0.5; echo hello; sleep 2",
        {
            "logDriver": "awsfirelens",
            "options": {"Name": "datadog"},
            "secretOptions": [
                {
                    "name": "apikey",
                    "valueFrom": "arn:aws:secretsmanager:us-east-1:123456789012:"
                    "secret:nstask-test/dd-key-AbCdEf",
                }
            ],
        },
    )
    try:
        task_id = agent.cli("run", "-d", write_taskdef(tmp_path, td), check=True).stdout.strip()
        agent.wait_status(task_id, "RUNNING", timeout=30)
        shims = _shim_cmdlines(task_id)
        assert shims, "no logging shim of the task found"
        assert all(secret not in c and "datadog" not in c for c in shims), shims
        # The options file is gone once the shims have read it.
        assert not list((agent.state_dir / "tasks" / task_id).glob("shim/*.options"))
        t = agent.wait_status(task_id, "STOPPED", timeout=40)
        assert t["stopReason"] == "Essential container in task exited"
        unpacker = msgpack.Unpacker(raw=False, ext_hook=lambda code, data: (code, data))
        unpacker.feed((out / "received").read_bytes())
        records = [m[2] for m in unpacker]
        assert [r["log"] for r in records] == ["hello"]
        assert records[0]["apikey"] == secret and records[0]["Name"] == "datadog"
        assert secret not in agent.log_path.read_text()
        assert secret not in json.dumps(agent.inspect(task_id))
        agent.cli("rm", task_id, check=True)
    finally:
        agent.cli("secret", "rm", "nstask-test/dd-key")


def test_enable_ecs_log_metadata_false_leaves_the_ecs_fields_out(
    agent: Agent, tmp_path: Path, router_image: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    td = _firelens_task(
        "firelens-plain",
        router_image,
        out,
        "sleep 0.5; echo plain; sleep 1",
        {"logDriver": "awsfirelens", "options": {"Name": "null"}},
    )
    router = td["containerDefinitions"][0]
    router["firelensConfiguration"]["options"] = {"enable-ecs-log-metadata": "false"}
    task_id = agent.cli("run", "-d", write_taskdef(tmp_path, td), check=True).stdout.strip()
    agent.wait_status(task_id, "STOPPED", timeout=40)
    unpacker = msgpack.Unpacker(raw=False, ext_hook=lambda code, data: (code, data))
    unpacker.feed((out / "received").read_bytes())
    records = [m[2] for m in unpacker]
    assert [r["log"] for r in records] == ["plain"]
    assert "ecs_cluster" not in records[0] and "ecs_task_arn" not in records[0]
    agent.cli("rm", task_id, check=True)
