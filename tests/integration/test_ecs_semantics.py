"""ECS task semantics on the real stack: dependsOn, essential, stop order and signals, init
process, health checks, limits, ports, network modes, environment and secrets."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support import TEST_IMAGE, WAIT_FOREVER, Agent, fetch, leaks, write_taskdef


def container(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": TEST_IMAGE,
        "essential": True,
        "command": ["sh", "-c", script],
        **extra,
    }


def task(family: str, *containers: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"family": family, "containerDefinitions": list(containers), **extra}


SHARED = {"volumes": [{"name": "shared"}]}
MOUNT = {"mountPoints": [{"sourceVolume": "shared", "containerPath": "/shared"}]}
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-password-AbCdEf"


def run_detached(agent: Agent, tmp_path: Path, td: dict[str, Any]) -> str:
    return agent.cli("run", "-d", write_taskdef(tmp_path, td), check=True).stdout.strip()


def containers_of(t: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in t["containers"]}


def wait_for_log(agent: Agent, task_id: str, text: str, timeout: float = 15) -> str:
    """The task's output once it holds `text` (deadline polling, no fixed sleep)."""
    deadline = time.monotonic() + timeout
    while text not in (out := agent.cli("logs", task_id, check=True).stdout):
        assert time.monotonic() < deadline, f"{text!r} never appeared in the logs: {out!r}"
        time.sleep(0.05)
    return out


def wait_for_processes(task_id: str, count: int, timeout: float = 15) -> None:
    """Until the task's cgroup holds at least `count` processes (its script has got as far
    as starting them)."""
    root = Path(f"/sys/fs/cgroup/memory/nstask/{task_id}")
    deadline = time.monotonic() + timeout
    while True:
        pids = {p for f in root.rglob("cgroup.procs") for p in f.read_text().split()}
        if len(pids) >= count:
            return
        assert time.monotonic() < deadline, f"{len(pids)} processes in {root}, not {count}"
        time.sleep(0.05)


def finish(agent: Agent, task_id: str) -> None:
    agent.cli("stop", "-t", "0", task_id)
    agent.cli("rm", task_id, check=True)
    assert not leaks(agent)


# -- dependsOn -------------------------------------------------------------------------------
def test_depends_on_start_and_complete_order_containers(agent: Agent, tmp_path: Path) -> None:
    td = task(
        "deps",
        container("init", "echo init-ran >> /shared/order; exit 3", essential=False, **MOUNT),
        container(
            "side",
            "echo side-started >> /shared/order; " + WAIT_FOREVER,
            essential=False,
            **MOUNT,
            dependsOn=[{"containerName": "init", "condition": "COMPLETE"}],
        ),
        container(
            "app",
            "cat /shared/order; echo app-done",
            **MOUNT,
            dependsOn=[
                {"containerName": "side", "condition": "START"},
                {"containerName": "init", "condition": "COMPLETE"},
            ],
        ),
        **SHARED,
    )
    task_id = run_detached(agent, tmp_path, td)
    t = agent.wait_status(task_id, "STOPPED")
    out = agent.cli("logs", task_id, "app", check=True).stdout
    # app saw init's line, and side's (START: side was running before app started).
    assert out.splitlines()[0] == "init-ran"
    assert "side-started" in out and out.endswith("app-done\n")
    cs = containers_of(t)
    assert cs["init"]["exitCode"] == 3  # COMPLETE accepts any exit code
    assert cs["app"]["exitCode"] == 0
    assert t["stopReason"] == "Essential container in task exited"
    agent.cli("rm", task_id, check=True)


def test_depends_on_success_with_a_failed_dependency_stops_the_task(
    agent: Agent, tmp_path: Path
) -> None:
    td = task(
        "deps-fail",
        container("migrate", "echo migrating; exit 4", essential=False),
        container(
            "app",
            "echo app must not run",
            dependsOn=[{"containerName": "migrate", "condition": "SUCCESS"}],
        ),
    )
    task_id = run_detached(agent, tmp_path, td)
    t = agent.wait_status(task_id, "STOPPED")
    assert "migrate" in t["stopReason"] and "exited with code 4" in t["stopReason"]
    cs = containers_of(t)
    assert cs["migrate"]["exitCode"] == 4
    assert cs["app"]["exitCode"] is None and cs["app"]["startedAt"] is None
    assert "app must not run" not in agent.cli("logs", task_id, check=True).stdout
    agent.cli("rm", task_id, check=True)
    assert not leaks(agent)


def test_depends_on_success_with_exit_zero_runs_the_dependent(agent: Agent, tmp_path: Path) -> None:
    td = task(
        "deps-ok",
        container("migrate", "echo migrated", essential=False),
        container(
            "app", "echo app ran", dependsOn=[{"containerName": "migrate", "condition": "SUCCESS"}]
        ),
    )
    proc = agent.cli("run", "--rm", write_taskdef(tmp_path, td))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["migrated", "app ran"]


def test_depends_on_healthy_waits_for_the_health_check(agent: Agent, tmp_path: Path) -> None:
    td = task(
        "deps-healthy",
        container(
            "web",
            "sleep 1; touch /tmp/ready; " + WAIT_FOREVER,
            essential=False,
            healthCheck={
                "command": ["CMD-SHELL", "test -f /tmp/ready"],
                "interval": 5,
                "timeout": 2,
                "retries": 3,
                "startPeriod": 10,
            },
        ),
        container(
            "client",
            "echo client started",
            dependsOn=[{"containerName": "web", "condition": "HEALTHY"}],
        ),
    )
    t0 = time.monotonic()
    task_id = run_detached(agent, tmp_path, td)
    t = agent.wait_status(task_id, "STOPPED", timeout=40)
    cs = containers_of(t)
    assert cs["web"]["health"] == "HEALTHY"
    assert cs["client"]["exitCode"] == 0
    # The first check (at start) fails inside startPeriod; the next one, 5 s later, passes.
    assert cs["client"]["startedAt"] - cs["web"]["startedAt"] >= 4.5
    assert time.monotonic() - t0 < 30
    agent.cli("rm", task_id, check=True)


# -- essential, health, stop -----------------------------------------------------------------
def test_non_essential_exit_keeps_the_task_running(agent: Agent, tmp_path: Path) -> None:
    td = task(
        "nonessential",
        container("helper", "echo done early", essential=False),
        container("main", WAIT_FOREVER),
    )
    task_id = run_detached(agent, tmp_path, td)
    agent.wait_status(task_id, "RUNNING")
    deadline = time.monotonic() + 10
    while containers_of(agent.inspect(task_id))["helper"]["exitCode"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    t = agent.inspect(task_id)
    assert t["lastStatus"] == "RUNNING"
    assert "helper(0)" in agent.cli("ps", check=True).stdout
    finish(agent, task_id)


def test_unhealthy_essential_container_stops_the_task(agent: Agent, tmp_path: Path) -> None:
    td = task(
        "unhealthy",
        container(
            "app",
            WAIT_FOREVER,
            healthCheck={
                "command": ["CMD-SHELL", "exit 1"],
                "interval": 5,
                "timeout": 2,
                "retries": 1,
            },
        ),
    )
    task_id = run_detached(agent, tmp_path, td)
    t = agent.wait_status(task_id, "STOPPED", timeout=20)
    assert t["stopReason"] == "Task failed container health checks"
    assert containers_of(t)["app"]["health"] == "UNHEALTHY"
    agent.cli("rm", task_id, check=True)


def test_health_status_shows_healthy_in_ps(agent: Agent, tmp_path: Path) -> None:
    td = task(
        "healthy",
        container(
            "app",
            WAIT_FOREVER,
            healthCheck={"command": ["CMD", "true"], "interval": 5, "timeout": 2, "retries": 3},
        ),
    )
    task_id = run_detached(agent, tmp_path, td)
    deadline = time.monotonic() + 10
    while containers_of(agent.inspect(task_id))["app"]["health"] != "HEALTHY":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "RUNNING (healthy)" in agent.cli("ps", check=True).stdout
    finish(agent, task_id)


def test_stop_goes_in_reverse_dependency_order(agent: Agent, tmp_path: Path) -> None:
    td = task(
        "stoporder",
        container("db", "trap 'sleep 0.3; exit 0' TERM; while true; do sleep 0.1; done"),
        container(
            "app",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
            dependsOn=[{"containerName": "db", "condition": "START"}],
        ),
    )
    task_id = run_detached(agent, tmp_path, td)
    agent.wait_status(task_id, "RUNNING")
    agent.cli("stop", task_id, check=True)
    cs = containers_of(agent.inspect(task_id))
    assert cs["app"]["finishedAt"] < cs["db"]["finishedAt"]
    assert cs["app"]["exitCode"] == 0 and cs["db"]["exitCode"] == 0
    agent.cli("rm", task_id, check=True)


@pytest.mark.parametrize(
    ("init", "expected_code", "max_seconds"),
    [(True, 143, 1.9), (False, 137, 8.0)],
    ids=["init", "no-init"],
)
def test_init_process_forwards_sigterm_to_a_shell_command(
    agent: Agent, tmp_path: Path, init: bool, expected_code: int, max_seconds: float
) -> None:
    # `sh -c` without exec: as PID 1 the shell ignores SIGTERM; under tini it gets it.
    c = container("app", "sleep 1000; echo never", stopTimeout=2)
    c["command"] = ["sh", "-c", "sleep 1000; echo never"]
    if init:
        c["linuxParameters"] = {"initProcessEnabled": True}
    task_id = run_detached(agent, tmp_path, task("init", c))
    agent.wait_status(task_id, "RUNNING")
    wait_for_processes(task_id, 3 if init else 2)  # (tini,) sh and its sleep
    t0 = time.monotonic()
    agent.cli("stop", task_id, check=True)
    took = time.monotonic() - t0
    t = agent.inspect(task_id)
    assert t["exitCode"] == expected_code
    assert took < max_seconds and (init or took >= 2.0), took
    agent.cli("rm", task_id, check=True)


def test_validate_warns_about_the_graceful_shutdown_pitfall(agent: Agent, tmp_path: Path) -> None:
    td = task("pitfall", container("app", "sleep 1000"))
    proc = agent.cli("validate", write_taskdef(tmp_path, td))
    assert proc.returncode == 0
    assert "containerDefinitions[0]" in proc.stderr and "SIGKILL" in proc.stderr


def test_stop_signal_from_the_definition(agent: Agent, tmp_path: Path) -> None:
    td = task(
        "stopsig",
        container(
            "app",
            "trap 'echo got QUIT; exit 7' QUIT; trap '' TERM; echo trapped; "
            "while true; do sleep 0.1; done",
            stopSignal="SIGQUIT",
            stopTimeout=5,
        ),
    )
    task_id = run_detached(agent, tmp_path, td)
    agent.wait_status(task_id, "RUNNING")
    wait_for_log(agent, task_id, "trapped")
    agent.cli("stop", task_id, check=True)
    assert agent.inspect(task_id)["exitCode"] == 7
    assert "got QUIT" in agent.cli("logs", task_id, check=True).stdout
    agent.cli("rm", task_id, check=True)


# -- limits ----------------------------------------------------------------------------------
def test_memory_limit_is_enforced_and_the_oom_kill_recorded(agent: Agent, tmp_path: Path) -> None:
    td = task(
        "oom",
        container(
            "hog",
            "head -c 200m /dev/zero > /big/fill; echo survived",
            memory=32,
            linuxParameters={"tmpfs": [{"containerPath": "/big", "size": 512}]},
        ),
    )
    task_id = run_detached(agent, tmp_path, td)
    t = agent.wait_status(task_id, "STOPPED", timeout=30)
    hog = containers_of(t)["hog"]
    assert "survived" not in agent.cli("logs", task_id, check=True).stdout
    assert hog["exitCode"] != 0
    assert hog["reason"] is not None and "OutOfMemory" in hog["reason"]
    agent.cli("rm", task_id, check=True)


def test_task_level_limits_land_on_the_task_cgroup(agent: Agent, tmp_path: Path) -> None:
    td = task(
        "tasklimits",
        container("app", "grep memory /proc/self/cgroup; " + WAIT_FOREVER),
        cpu="512",
        memory="96",
    )
    task_id = run_detached(agent, tmp_path, td)
    agent.wait_status(task_id, "RUNNING")
    mem = Path(f"/sys/fs/cgroup/memory/nstask/{task_id}")
    cpu = Path(f"/sys/fs/cgroup/cpu/nstask/{task_id}")
    assert (mem / "memory.limit_in_bytes").read_text().strip() == str(96 * 1024 * 1024)
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"  # 0.5 vCPU
    # The container's cgroup sits under the task's.
    wait_for_log(agent, task_id, f"/nstask/{task_id}/")
    agent.cli("stop", task_id, check=True)
    assert not mem.exists() and not cpu.exists()  # removed at stop, in every hierarchy
    assert not list(Path("/sys/fs/cgroup").glob(f"*/nstask/{task_id}"))
    agent.cli("rm", task_id, check=True)


def test_ulimits_user_readonly_rootfs_and_capabilities(agent: Agent, tmp_path: Path) -> None:
    script = (
        "echo nofile=$(ulimit -n); echo uid=$(id -u):$(id -g); "
        "touch /x 2>/dev/null && echo rootfs=rw || echo rootfs=ro; "
        "touch /tmp/y 2>/dev/null && echo tmp=rw || echo tmp=ro; "
        "grep CapEff /proc/self/status"
    )
    td = task(
        "limits",
        container(
            "app",
            script,
            user="1000:1001",
            readonlyRootFilesystem=True,
            ulimits=[{"name": "nofile", "softLimit": 100, "hardLimit": 200}],
            linuxParameters={
                "capabilities": {"drop": ["NET_RAW", "CHOWN"], "add": ["SYS_TIME"]},
                "tmpfs": [{"containerPath": "/tmp", "size": 16}],
            },
        ),
    )
    task_id = run_detached(agent, tmp_path, td)
    agent.wait_status(task_id, "STOPPED")
    out = agent.cli("logs", task_id, check=True).stdout
    assert "nofile=100" in out and "uid=1000:1001" in out
    assert "rootfs=ro" in out and "tmp=rw" in out
    # Non-root: no effective capabilities, whatever the bounding set.
    assert "CapEff:\t0000000000000000" in out
    agent.cli("rm", task_id, check=True)


def test_capabilities_add_and_drop_for_root(agent: Agent, tmp_path: Path) -> None:
    td = task(
        "caps",
        container(
            "app",
            "grep CapEff /proc/self/status",
            linuxParameters={"capabilities": {"drop": ["NET_RAW", "CHOWN"], "add": ["SYS_TIME"]}},
        ),
    )
    task_id = run_detached(agent, tmp_path, td)
    agent.wait_status(task_id, "STOPPED")
    line = agent.cli("logs", task_id, check=True).stdout.strip()
    caps = int(line.split()[-1], 16)
    assert not caps & (1 << 13)  # CAP_NET_RAW dropped
    assert not caps & (1 << 0)  # CAP_CHOWN dropped
    assert caps & (1 << 25)  # CAP_SYS_TIME added
    assert caps & (1 << 5)  # CAP_KILL kept from the default set
    agent.cli("rm", task_id, check=True)


def test_ulimit_above_the_host_hard_limit_is_a_clear_error(agent: Agent, tmp_path: Path) -> None:
    td = task(
        "bigulimit",
        container(
            "app", "true", ulimits=[{"name": "nofile", "softLimit": 1024, "hardLimit": 100_000_000}]
        ),
    )
    proc = agent.cli("run", "--rm", write_taskdef(tmp_path, td))
    assert proc.returncode != 0
    assert "ulimit nofile" in proc.stderr and "hard limit" in proc.stderr
    assert not leaks(agent)


# -- ports and network modes -----------------------------------------------------------------
WEB = (
    "mkdir -p /www && echo served-by-$(hostname) > /www/index.html && "
    "httpd -f -p 8080 -h /www & trap 'exit 0' TERM; wait"
)


def test_published_port_answers_on_localhost_and_is_gone_after_stop(
    agent: Agent, tmp_path: Path
) -> None:
    td = task(
        "published",
        container("web", WEB, portMappings=[{"containerPort": 8080}]),
        networkMode="bridge",
    )
    task_id = run_detached(agent, tmp_path, td)
    t = agent.wait_status(task_id, "RUNNING")
    (port,) = t["ports"]
    assert port["containerPort"] == 8080 and port["hostPort"] > 0
    assert f"{port['hostPort']}->8080/tcp" in agent.cli("ps", check=True).stdout
    url = f"http://127.0.0.1:{port['hostPort']}/"
    assert fetch(url).startswith("served-by-")
    agent.cli("stop", task_id, check=True)
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=1)
    agent.cli("rm", task_id, check=True)
    assert not leaks(agent)


def test_host_port_in_use_is_refused_and_nothing_is_left(agent: Agent, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        busy = s.getsockname()[1]
        td = task(
            "busyport",
            container("web", WEB, portMappings=[{"containerPort": 8080, "hostPort": busy}]),
            networkMode="bridge",
        )
        before = agent.cli("ps", "-a", "-q", check=True).stdout
        proc = agent.cli("run", "-d", write_taskdef(tmp_path, td))
    assert proc.returncode == 1
    assert f"host port {busy}/tcp is already in use" in proc.stderr
    assert agent.cli("ps", "-a", "-q", check=True).stdout == before
    assert not leaks(agent)


@pytest.mark.parametrize("mode", ["awsvpc", "bridge", "none", "host"])
def test_network_modes(agent: Agent, tmp_path: Path, mode: str) -> None:
    td = task(
        f"net-{mode}",
        container("app", "ip -o link show | awk -F': ' '{print $2}'"),
        networkMode=mode,
    )
    task_id = run_detached(agent, tmp_path, td)
    t = agent.wait_status(task_id, "STOPPED")
    links = {x.split("@")[0] for x in agent.cli("logs", task_id, check=True).stdout.split()}
    host_out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    host_links = {line.split(": ")[1].split("@")[0] for line in host_out.splitlines()}
    if mode in ("awsvpc", "bridge"):
        assert links == {"lo", "eth0"} and t["ip"] is not None and t["netns"] is not None
    elif mode == "none":
        assert links == {"lo"} and t["ip"] is None and t["netns"] is not None
    else:
        assert t["netns"] is None and t["ip"] is None
        assert links == host_links  # the host's own interfaces
    agent.cli("rm", task_id, check=True)
    assert not leaks(agent)


# -- environment and secrets -----------------------------------------------------------------
def test_secrets_are_injected_and_appear_nowhere_else(agent: Agent, tmp_path: Path) -> None:
    value = "s3cr3t-" + str(time.time_ns())
    agent.cli("secret", "put", "prod/db-password", input=value + "\n", check=True)
    assert "prod/db-password" in agent.cli("secret", "ls", check=True).stdout
    td = task(
        "secretive",
        container(
            "app",
            'echo "pw=$DB_PASSWORD" | md5sum',
            secrets=[
                {
                    "name": "DB_PASSWORD",
                    "valueFrom": SECRET_ARN,
                }
            ],
        ),
    )
    task_id = run_detached(agent, tmp_path, td)
    t = agent.wait_status(task_id, "STOPPED")
    assert t["exitCode"] == 0
    expected = subprocess.run(
        ["md5sum"], input=f"pw={value}\n", capture_output=True, text=True
    ).stdout.split()[0]
    assert agent.cli("logs", task_id, check=True).stdout.split()[0] == expected
    # Nowhere else: inspect, ps, the API's task list, the agent's log, the state store.
    for out in (
        agent.cli("inspect", task_id, check=True).stdout,
        agent.cli("ps", "-a", "--json", check=True).stdout,
        agent.log_tail(10_000),
    ):
        assert value not in out
    db = sqlite3.connect(agent.state_dir / "state.db")
    for table in ("tasks", "containers", "resources"):
        assert value not in json.dumps(db.execute(f"SELECT * FROM {table}").fetchall())
    db.close()
    assert (agent.state_dir / "secrets").stat().st_mode & 0o077 == 0
    agent.cli("rm", task_id, check=True)
    agent.cli("secret", "rm", "prod/db-password", check=True)


def test_missing_secret_fails_before_anything_is_created(agent: Agent, tmp_path: Path) -> None:
    td = task(
        "nosecret",
        container(
            "app",
            "true",
            secrets=[
                {
                    "name": "X",
                    "valueFrom": "arn:aws:ssm:us-east-1:123456789012:parameter/team/missing",
                }
            ],
        ),
    )
    before = agent.cli("ps", "-a", "-q", check=True).stdout
    proc = agent.cli("run", "--rm", write_taskdef(tmp_path, td))
    assert proc.returncode == 1
    assert "team/missing" in proc.stderr and "nstask secret put" in proc.stderr
    assert agent.cli("ps", "-a", "-q", check=True).stdout == before
    assert not leaks(agent)


def test_environment_files_and_precedence(agent: Agent, tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("# comment\nFROM_FILE=file\nBOTH=file\n\n")
    td = task(
        "envfiles",
        container(
            "app",
            "echo $FROM_FILE $BOTH $PLAIN",
            environmentFiles=[{"value": str(env_file), "type": "s3"}],
            environment=[{"name": "BOTH", "value": "environment"}, {"name": "PLAIN", "value": "p"}],
        ),
    )
    proc = agent.cli("run", "--rm", write_taskdef(tmp_path, td))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "file environment p\n"


def test_host_volume_is_shared_with_the_container(agent: Agent, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from the host\n")
    td = task(
        "hostvol",
        container(
            "app",
            "cat /data/in.txt; echo from the task > /data/out.txt",
            mountPoints=[{"sourceVolume": "data", "containerPath": "/data"}],
        ),
        volumes=[{"name": "data", "host": {"sourcePath": str(data)}}],
    )
    proc = agent.cli("run", "--rm", write_taskdef(tmp_path, td))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "from the host\n"
    assert (data / "out.txt").read_text() == "from the task\n"


def test_logs_follow_of_one_container_ends_when_it_exits(agent: Agent, tmp_path: Path) -> None:
    td = task(
        "follow-one",
        container("short", "echo one; sleep 0.5; echo two", essential=False),
        container("long", WAIT_FOREVER),
    )
    task_id = run_detached(agent, tmp_path, td)
    agent.wait_status(task_id, "RUNNING")
    t0 = time.monotonic()
    proc = agent.cli("logs", "-f", task_id, "short", timeout=30)
    assert proc.returncode == 0 and proc.stdout == "one\ntwo\n"
    assert time.monotonic() - t0 < 10
    assert agent.inspect(task_id)["lastStatus"] == "RUNNING"  # the task runs on
    finish(agent, task_id)


def test_exec_runs_a_command_in_a_running_container(agent: Agent, tmp_path: Path) -> None:
    td = task(
        "execme",
        container("app", WAIT_FOREVER, environment=[{"name": "FROM_TASK", "value": "t"}]),
        container("side", WAIT_FOREVER, essential=False),
    )
    task_id = run_detached(agent, tmp_path, td)
    agent.wait_status(task_id, "RUNNING")
    proc = agent.cli(
        "exec",
        "-c",
        "app",
        "-e",
        "EXTRA=x",
        task_id,
        "--",
        "sh",
        "-c",
        "echo $FROM_TASK $EXTRA $(hostname); echo oops >&2; exit 3",
    )
    assert proc.returncode == 3
    assert proc.stdout == f"t x {task_id[:12]}\n" and proc.stderr == "oops\n"
    # Several containers: one must be named; a bad name is a located error.
    assert agent.cli("exec", task_id, "--", "true").returncode == 2
    bad = agent.cli("exec", "-c", "nope", task_id, "--", "true")
    assert bad.returncode == 2 and "no container named 'nope'" in bad.stderr
    finish(agent, task_id)
    gone = agent.cli("exec", "-c", "app", task_id, "--", "true")
    assert gone.returncode == 1


def test_volumes_from_shm_size_privileged_and_extra_hosts(agent: Agent, tmp_path: Path) -> None:
    td = task(
        "misc",
        container(
            "writer",
            "echo shared > /data/f; " + WAIT_FOREVER,
            essential=False,
            mountPoints=[{"sourceVolume": "data", "containerPath": "/data"}],
        ),
        container(
            "reader",
            "cat /data/f; touch /data/g 2>/dev/null && echo rw || echo ro; "
            "df -m /dev/shm | tail -1 | awk '{print \"shm=\" $2}'; "
            "grep CapEff /proc/self/status; grep -w db.internal /etc/hosts | cut -f1",
            volumesFrom=[{"sourceContainer": "writer", "readOnly": True}],
            linuxParameters={"sharedMemorySize": 128},
            privileged=True,
            extraHosts=[{"hostname": "db.internal", "ipAddress": "10.213.250.9"}],
            dependsOn=[{"containerName": "writer", "condition": "START"}],
        ),
        volumes=[{"name": "data"}],
    )
    task_id = run_detached(agent, tmp_path, td)
    agent.wait_status(task_id, "STOPPED")
    out = agent.cli("logs", task_id, "reader", check=True).stdout.splitlines()
    assert out[0] == "shared" and out[1] == "ro"  # writer's volume, read-only here
    assert out[2] == "shm=128"
    caps = int(out[3].split()[-1], 16)
    assert caps & (1 << 21)  # CAP_SYS_ADMIN: privileged gets every capability
    assert out[4] == "10.213.250.9"
    agent.cli("rm", task_id, check=True)
