"""The first slice end to end: tasks run on the real stack through the agent and the CLI."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import start_agent, stop_agent
from support import TEST_IMAGE, Agent, bridge_conflist, busybox_task, fetch, leaks, write_taskdef


def test_task_output_reaches_logs_with_streams_apart(agent: Agent, tmp_path: Path) -> None:
    td = busybox_task(
        "printer", ["sh", "-c", "for i in 1 2 3; do echo out-$i; done; echo err-1 >&2; exit 0"]
    )
    task_id = agent.cli("run", "-d", write_taskdef(tmp_path, td), check=True).stdout.strip()
    task = agent.wait_status(task_id, "STOPPED")
    assert task["exitCode"] == 0
    assert task["stopReason"] == "Essential container in task exited"
    out = agent.cli("logs", task_id, check=True)
    assert out.stdout == "out-1\nout-2\nout-3\n"
    assert out.stderr == "err-1\n"
    # --tail counts the container's last lines across both streams.
    stamped = agent.cli("logs", "--timestamps", "--tail", "2", task_id, "printer", check=True)
    assert stamped.stdout.startswith("20") and stamped.stdout.endswith("Z out-3\n")
    assert stamped.stderr.startswith("20") and stamped.stderr.endswith("Z err-1\n")
    agent.cli("rm", task_id, check=True)


def test_run_attached_streams_output_and_exits_with_container_code(
    agent: Agent, tmp_path: Path
) -> None:
    td = busybox_task("exiter", ["sh", "-c", "echo about to fail; exit 3"])
    proc = agent.cli("run", "--rm", write_taskdef(tmp_path, td))
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "about to fail\n"
    # --rm: the task and its logs are gone once it stopped.
    assert "exiter" not in agent.cli("ps", "-a", check=True).stdout


def test_two_tasks_talk_over_the_task_network_and_host_reaches_them(
    agent: Agent, tmp_path: Path
) -> None:
    web_def = json.loads((Path(__file__).parents[2] / "examples" / "web.json").read_text())
    web_id = agent.cli(
        "run", "-d", write_taskdef(tmp_path, web_def, "web.json"), check=True
    ).stdout.strip()
    web = agent.wait_status(web_id, "RUNNING")
    ip = str(web["ip"])
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(agent.subnet)
    # The host reaches the task at its own address.
    page = fetch(f"http://{ip}:8080/")
    assert "hello from the web task" in page
    # A second task reaches the first over the bridge.
    hello = agent.cli("run", "--rm", "-e", f"WEB_URL=http://{ip}:8080/", "examples/hello.json")
    assert hello.returncode == 0, hello.stderr
    assert "hello from the web task" in hello.stdout
    hello_ip = [
        line.split()[-1] for line in hello.stdout.splitlines() if line.startswith("eth0 address:")
    ]
    assert hello_ip and ipaddress.ip_interface(hello_ip[0]).ip in ipaddress.ip_network(agent.subnet)
    assert ipaddress.ip_interface(hello_ip[0]).ip != ipaddress.ip_address(ip)
    # ps shows the running task with its address.
    ps = agent.cli("ps", check=True).stdout
    assert web_id[:12] in ps and ip in ps and "RUNNING" in ps
    assert [t["id"] for t in json.loads(agent.cli("ps", "--json", check=True).stdout)] == [web_id]
    stopped = json.loads(agent.cli("inspect", web_id, check=True).stdout)
    assert stopped["lastStatus"] == "RUNNING"
    t0 = time.monotonic()
    agent.cli("stop", web_id, check=True)
    assert time.monotonic() - t0 < 5  # the trap exits on SIGTERM: no wait for SIGKILL
    after = agent.inspect(web_id)
    assert after["lastStatus"] == "STOPPED" and after["exitCode"] == 0
    assert "web: stopping" in agent.cli("logs", web_id, check=True).stdout
    agent.cli("rm", web_id, check=True)
    assert not leaks(agent)


def test_stop_of_container_ignoring_sigterm_ends_with_sigkill_after_timeout(
    agent: Agent, tmp_path: Path
) -> None:
    td = busybox_task(
        "stubborn",
        ["sh", "-c", "trap '' TERM; echo ready; while true; do sleep 1; done"],
        stopTimeout=2,
    )
    task_id = agent.cli("run", "-d", write_taskdef(tmp_path, td), check=True).stdout.strip()
    agent.wait_status(task_id, "RUNNING")
    t0 = time.monotonic()
    agent.cli("stop", task_id, check=True)
    took = time.monotonic() - t0
    task = agent.inspect(task_id)
    assert 2.0 <= took < 8, took
    assert task["exitCode"] == 137  # 128 + SIGKILL
    assert task["lastStatus"] == "STOPPED"
    agent.cli("rm", task_id, check=True)


def test_logs_follow_ends_when_the_task_ends(agent: Agent, tmp_path: Path) -> None:
    td = busybox_task(
        "ticker", ["sh", "-c", "for i in 1 2 3 4 5; do echo tick-$i; sleep 0.2; done"]
    )
    task_id = agent.cli("run", "-d", write_taskdef(tmp_path, td), check=True).stdout.strip()
    proc = agent.cli("logs", "-f", task_id, timeout=30)
    assert proc.returncode == 0
    assert proc.stdout.split() == [f"tick-{i}" for i in range(1, 6)]
    agent.cli("rm", task_id, check=True)


def test_inspect_shows_per_phase_timings(agent: Agent, tmp_path: Path) -> None:
    td = busybox_task("timed", ["true"])
    proc = agent.cli("run", write_taskdef(tmp_path, td))
    assert proc.returncode == 0, proc.stderr
    task = json.loads(agent.cli("ps", "-a", "--json", check=True).stdout)
    timed = next(t for t in task if t["family"] == "timed")
    timings = timed["timings"]
    # The network came from the warm pool, or was made for the task.
    network = ("network.pool",) if "network.pool" in timings else ("network.netns", "network.cni")
    for phase in (
        "accept",
        *network,
        "images",
        "container.timed.create",
        "container.timed.start",
        "start_total",
        "stop.teardown",
    ):
        assert phase in timings and timings[phase] >= 0, (phase, timings)
    agent.cli("rm", timed["id"], check=True)


BAD_DEFINITIONS = [
    ("not json", "{ this is not json", "is not valid JSON"),
    ("no containers", {"family": "x"}, "containerDefinitions"),
    (
        "missing image",
        {"family": "x", "containerDefinitions": [{"name": "a"}]},
        "containerDefinitions[0].image",
    ),
    (
        "unknown network mode",
        {
            "family": "x",
            "networkMode": "overlay",
            "containerDefinitions": [{"name": "a", "image": TEST_IMAGE}],
        },
        "networkMode",
    ),
    (
        "command not a list",
        {"containerDefinitions": [{"name": "a", "image": TEST_IMAGE, "command": "echo hi"}]},
        "containerDefinitions[0].command",
    ),
    (
        "duplicate names",
        {
            "containerDefinitions": [
                {"name": "a", "image": TEST_IMAGE},
                {"name": "a", "image": TEST_IMAGE},
            ]
        },
        "containerDefinitions[1].name",
    ),
    (
        "no essential container",
        {"containerDefinitions": [{"name": "a", "image": TEST_IMAGE, "essential": False}]},
        "essential",
    ),
    (
        "stopTimeout over 120",
        {"containerDefinitions": [{"name": "a", "image": TEST_IMAGE, "stopTimeout": 121}]},
        "containerDefinitions[0].stopTimeout",
    ),
]


@pytest.mark.parametrize(
    ("label", "definition", "expected"), BAD_DEFINITIONS, ids=[b[0] for b in BAD_DEFINITIONS]
)
def test_bad_task_definition_is_refused_with_a_located_error_and_nothing_created(
    agent: Agent, tmp_path: Path, label: str, definition: object, expected: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(definition if isinstance(definition, str) else json.dumps(definition))
    before = agent.cli("ps", "-a", "-q", check=True).stdout
    netns_before = _netns(agent)
    for cmd in (["run", "--rm"], ["run", "-d"], ["validate"]):
        proc = agent.cli(*cmd, str(path))
        assert proc.returncode == 2, (label, cmd, proc.stdout, proc.stderr)
        assert expected in proc.stderr, (label, proc.stderr)
        assert str(path) in proc.stderr or "JSON" in proc.stderr
    assert agent.cli("ps", "-a", "-q", check=True).stdout == before
    assert _netns(agent) == netns_before
    assert not leaks(agent)


def _netns(agent: Agent) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], text=True, stdout=subprocess.PIPE).stdout
    return sorted(
        line.split()[0]
        for line in out.splitlines()
        if line.startswith(agent.netns_prefix) and "-pool-" not in line  # the warm pool refills
    )


def test_missing_image_gets_a_clear_error_and_leaves_nothing(agent: Agent, tmp_path: Path) -> None:
    td = busybox_task("ghost", ["true"])
    td["containerDefinitions"][0]["image"] = "nstask.local/no-such-image:1"  # type: ignore[index]
    proc = agent.cli("run", "--rm", write_taskdef(tmp_path, td))
    assert proc.returncode != 0
    assert "nstask.local/no-such-image:1" in proc.stderr
    assert "not present" in proc.stderr or "import" in proc.stderr
    assert not leaks(agent)


def test_agent_not_running_says_how_to_start_it(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["nstask", "--socket", str(tmp_path / "none.sock"), "ps"],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:" + os.environ["PATH"]},
    )
    assert proc.returncode == 1
    assert "agent is not running" in proc.stderr and "nstask agent --detach" in proc.stderr


def test_api_socket_is_root_only(agent: Agent) -> None:
    mode = os.stat(agent.socket).st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_failing_cni_plugin_mid_list_rolls_back_everything(tmp_path: Path) -> None:
    """A plugin that fails after the bridge and portmap ran: the task fails to start and
    nothing of the earlier plugins (veth, IP allocation, cache entry) or the netns is left."""
    plugin_dir = tmp_path / "cni-bin"
    plugin_dir.mkdir()
    failing = plugin_dir / "nstask-test-fail"
    failing.write_text(
        "#!/bin/sh\ncat >/dev/null\n"
        'if [ "$CNI_COMMAND" = ADD ]; then\n'
        '  echo \'{"cniVersion":"1.0.0","code":100,"msg":"injected failure"}\'\n'
        "  exit 1\nfi\n"
        'if [ "$CNI_COMMAND" = VERSION ]; then\n'
        '  echo \'{"cniVersion":"1.0.0","supportedVersions":["1.0.0"]}\'\nfi\n'
        "exit 0\n"
    )
    failing.chmod(0o755)

    def conflist(a: Agent) -> dict[str, object]:
        return bridge_conflist(
            a,
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "nstask-test-fail"},
        )

    a, proc, base = start_agent(conflist_for=conflist, cni_path=f"{plugin_dir}:/usr/lib/cni")
    try:
        run = a.cli("run", "--rm", write_taskdef(tmp_path, busybox_task("doomed", ["true"])))
        assert run.returncode == 125, run.stderr
        assert "injected failure" in run.stderr and "nstask-test-fail" in run.stderr
        assert not leaks(a)
        # Detached, the failure is recorded as the stop reason; the task has no output.
        task_id = a.cli(
            "run", "-d", write_taskdef(tmp_path, busybox_task("doomed", ["true"])), check=True
        ).stdout.strip()
        task = a.wait_status(task_id, "STOPPED")
        assert "injected failure" in str(task["stopReason"]) and task["exitCode"] is None
        logs = a.cli("logs", task_id)
        assert logs.returncode == 0 and logs.stdout == ""
        a.cli("rm", task_id, check=True)
        assert not leaks(a)
    finally:
        stop_agent(a, proc, base)


def test_container_gets_the_spec_nstask_builds(agent: Agent, tmp_path: Path) -> None:
    """Inside the container: Docker's default capabilities, no_new_privileges, the memory
    limit and CPU shares given, the task's hostname and /etc/hosts, masked /proc paths."""
    script = (
        "grep -E '^(CapEff|NoNewPrivs):' /proc/self/status; "
        "echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes); "
        "echo shares=$(cat /sys/fs/cgroup/cpu/cpu.shares); "
        'echo host=$(hostname); echo hosts=$(grep -w "$(hostname)" /etc/hosts | cut -f1); '
        "echo timer_list=$(head -c 40 /proc/timer_list | wc -c); echo env=$GREETING"
    )
    td = busybox_task(
        "specced",
        ["sh", "-c", script],
        memory=64,
        cpu=128,
        environment=[{"name": "GREETING", "value": "hi"}],
    )
    proc = agent.cli("run", "-d", write_taskdef(tmp_path, td), check=True)
    task_id = proc.stdout.strip()
    task = agent.wait_status(task_id, "STOPPED")
    out = agent.cli("logs", task_id, check=True).stdout.split("\n")
    lines = [line.replace(":\t", "=", 1) for line in out]
    fields = dict(line.split("=", 1) for line in lines if "=" in line)
    # Docker's 14 default capabilities (CHOWN ... SETFCAP) and nothing else.
    assert fields["CapEff"] == "00000000a80425fb", out
    assert fields["NoNewPrivs"] == "1"
    assert fields["mem"] == str(64 * 1024 * 1024)
    assert fields["shares"] == "128"
    assert fields["host"] == task_id[:12]
    assert fields["hosts"] == task["ip"]  # /etc/hosts maps the hostname to the task's IP
    assert fields["timer_list"] == "0"  # masked (the host's has content)
    assert fields["env"] == "hi"
    agent.cli("rm", task_id, check=True)


def test_every_invalid_corpus_definition_is_refused_by_run_and_leaves_nothing(agent: Agent) -> None:
    corpus = sorted((Path(__file__).parents[1] / "taskdefs" / "invalid").glob("*.json"))
    assert len(corpus) >= 40
    before = agent.cli("ps", "-a", "-q", check=True).stdout
    for path in corpus:
        proc = agent.cli("run", "-d", str(path))
        assert proc.returncode == 2, (path.name, proc.stderr)
        first = path.with_suffix(".expected").read_text().splitlines()[0]
        assert first in proc.stderr, (path.name, proc.stderr)
    assert agent.cli("ps", "-a", "-q", check=True).stdout == before
    assert not _netns(agent)
    assert not leaks(agent)
