"""FireLens: the task's log router starts first and receives the app containers' lines over
the unix socket the agent gives it, in Fluentd Forward messages tagged as FireLens tags them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import msgpack
import pytest
from support import Agent, write_taskdef

ROUTER_IMAGE = "nstask.local/test-router:1"
SOURCE = Path(__file__).parent / "fixtures" / "unix_sink.c"


@pytest.fixture(scope="module")
def router_image(agent: Agent, tmp_path_factory: pytest.TempPathFactory) -> str:
    """busybox plus a static unix-socket sink standing in for fluent-bit."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the test log router (Debian package gcc)")
    d = tmp_path_factory.mktemp("router")
    rootfs = d / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    for sub in ("var/run/fluent", "out", "proc", "sys", "dev", "etc", "tmp"):
        (rootfs / sub).mkdir(parents=True)
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    (rootfs / "bin" / "sh").symlink_to("busybox")
    subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(rootfs / "bin" / "router"), str(SOURCE)], check=True
    )
    archive = d / "router.tar"
    agent.cli("image", "pack", str(rootfs), ROUTER_IMAGE, "-o", str(archive), check=True)
    agent.cli("image", "import", str(archive), check=True)
    return ROUTER_IMAGE


def test_app_lines_arrive_at_the_router_container(
    agent: Agent, tmp_path: Path, router_image: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    td: dict[str, Any] = {
        "family": "firelens",
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
                "command": [
                    "sh",
                    "-c",
                    "sleep 0.5; for i in 1 2 3; do echo line-$i; done; echo oops >&2; sleep 1",
                ],
                "logConfiguration": {
                    "logDriver": "awsfirelens",
                    "options": {"Name": "cloudwatch", "region": "local"},
                },
                "dependsOn": [{"containerName": "log_router", "condition": "START"}],
            },
        ],
    }
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
    # EventTime: msgpack ext type 0, 8 bytes.
    assert all(isinstance(m[1], tuple) and m[1][0] == 0 and len(m[1][1]) == 8 for m in messages)
    assert "router listening" in agent.cli("logs", task_id, "log_router", check=True).stdout
    agent.cli("rm", task_id, check=True)
