"""Issue 12 B container fields on the real stack: dockerLabels (containerd labels and the
metadata endpoint), hostname, dnsSearchDomains, disableNetworking, systemControls."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from support import TEST_IMAGE, Agent, ctr, leaks, write_taskdef


def container(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": TEST_IMAGE, "command": ["sh", "-c", script], **extra}


def run_detached(agent: Agent, tmp_path: Path, td: dict[str, Any]) -> str:
    return agent.cli("run", "-d", write_taskdef(tmp_path, td), check=True).stdout.strip()


def wait_for_log(agent: Agent, task_id: str, text: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while text not in (out := agent.cli("logs", task_id, check=True).stdout):
        assert time.monotonic() < deadline, f"{text!r} never appeared in the logs: {out!r}"
        time.sleep(0.05)
    return out


def finish(agent: Agent, task_id: str) -> None:
    agent.cli("stop", "-t", "0", task_id)
    agent.cli("rm", task_id, check=True)
    assert not leaks(agent)


def values(out: str) -> dict[str, str]:
    """`key=value` lines of a container's output."""
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_labels_hostname_search_domains_and_ipc_sysctl(agent: Agent, tmp_path: Path) -> None:
    script = (
        "echo host=$(hostname); echo etc_hostname=$(cat /etc/hostname); "
        "echo search=$(grep ^search /etc/resolv.conf); "
        "echo shmmax=$(cat /proc/sys/kernel/shmmax); "
        "echo somaxconn=$(cat /proc/sys/net/core/somaxconn); echo ready; "
        "trap 'exit 0' TERM; while :; do sleep 1; done"
    )
    td = {
        "family": "fields",
        "networkMode": "bridge",
        "containerDefinitions": [
            container(
                "app",
                script,
                hostname="web-1.example",
                dockerLabels={"team": "web", "com.example.tier": "front"},
                dnsSearchDomains=["example.com", "corp.example.com"],
                systemControls=[
                    {"namespace": "kernel.shmmax", "value": "123456789"},
                    {"namespace": "net.core.somaxconn", "value": "1234"},
                ],
            )
        ],
    }
    task_id = run_detached(agent, tmp_path, td)
    try:
        got = values(wait_for_log(agent, task_id, "ready"))
        assert got["host"] == "web-1.example" and got["etc_hostname"] == "web-1.example"
        assert got["search"] == "search example.com corp.example.com"
        assert got["shmmax"] == "123456789" and got["somaxconn"] == "1234"
        host_shmmax = Path("/proc/sys/kernel/shmmax").read_text().strip()
        assert host_shmmax != "123456789"  # the container's own IPC namespace only
        c = agent.inspect(task_id)["containers"][0]
        info = json.loads(ctr(agent.namespace, "containers", "info", c["containerdId"]))
        labels = info["Labels"]
        assert labels["team"] == "web" and labels["com.example.tier"] == "front"
        assert labels["nstask.task"] == task_id and labels["nstask.container"] == "app"
    finally:
        finish(agent, task_id)


def test_disable_networking_and_net_sysctls_in_the_task_netns(agent: Agent, tmp_path: Path) -> None:
    links = "echo links=$(ip -o link show | awk -F': ' '{print $2}' | tr '\\n' ' ')"
    td = {
        "family": "netfields",
        "containerDefinitions": [
            container(
                "setter",
                "echo set; trap 'exit 0' TERM; while :; do sleep 1; done",
                systemControls=[{"namespace": "net.ipv4.tcp_keepalive_time", "value": "321"}],
            ),
            container(
                "reader",
                f"{links}; echo keepalive=$(cat /proc/sys/net/ipv4/tcp_keepalive_time); "
                "echo reader-done",
                essential=False,
                dependsOn=[{"containerName": "setter", "condition": "START"}],
            ),
            container(
                "isolated",
                f"{links}; echo iso_keepalive=$(cat /proc/sys/net/ipv4/tcp_keepalive_time); "
                "echo isolated-done",
                essential=False,
                disableNetworking=True,
                dependsOn=[{"containerName": "setter", "condition": "START"}],
            ),
        ],
    }
    task_id = run_detached(agent, tmp_path, td)
    try:
        wait_for_log(agent, task_id, "reader-done")
        wait_for_log(agent, task_id, "isolated-done")
        by_name: dict[str, dict[str, str]] = {}
        for name in ("reader", "isolated"):
            out = agent.cli("logs", task_id, name, check=True).stdout
            by_name[name] = values(out)
        # awsvpc: the task's netns is shared, so the setter's net.* sysctl is the reader's too.
        assert by_name["reader"]["keepalive"] == "321"
        assert {x.split("@")[0] for x in by_name["reader"]["links"].split()} == {"lo", "eth0"}
        # disableNetworking: a netns of its own, only lo, the kernel's default sysctl.
        assert by_name["isolated"]["links"].split() == ["lo"]
        assert by_name["isolated"]["iso_keepalive"] == "7200"
        assert Path("/proc/sys/net/ipv4/tcp_keepalive_time").read_text().strip() != "321"
    finally:
        finish(agent, task_id)


def test_host_wide_sysctl_is_refused_at_submit(agent: Agent, tmp_path: Path) -> None:
    td: dict[str, Any] = {
        "family": "badsysctl",
        "containerDefinitions": [
            container("app", "true", systemControls=[{"namespace": "vm.swappiness", "value": "1"}])
        ],
    }
    proc = agent.cli("run", "-d", write_taskdef(tmp_path, td))
    assert proc.returncode == 2
    assert "containerDefinitions[0].systemControls[0].namespace" in proc.stderr
    assert "not namespaced" in proc.stderr
    assert not leaks(agent)


def test_devices_with_their_permissions(agent: Agent, tmp_path: Path) -> None:
    script = (
        "echo node=$(ls -l /dev/nstask-fuse | awk '{print $1 $5 $6}'); "
        "(exec 3</dev/nstask-fuse) 2>/dev/null && echo fuse_read=ok || echo fuse_read=denied; "
        "(exec 3>/dev/nstask-fuse) 2>/dev/null && echo fuse_write=ok || echo fuse_write=denied; "
        "(exec 3<>/dev/loop-control) 2>/dev/null && echo loop_rw=ok || echo loop_rw=denied; "
        "ls /dev/fuse 2>/dev/null || echo plain_fuse=absent"
    )
    td: dict[str, Any] = {
        "family": "devices",
        "containerDefinitions": [
            container(
                "app",
                script,
                linuxParameters={
                    "devices": [
                        {
                            "hostPath": "/dev/fuse",
                            "containerPath": "/dev/nstask-fuse",
                            "permissions": ["read"],
                        },
                        {"hostPath": "/dev/loop-control"},
                    ]
                },
            )
        ],
    }
    task_id = run_detached(agent, tmp_path, td)
    try:
        agent.wait_status(task_id, "STOPPED")
        got = values(agent.cli("logs", task_id, check=True).stdout)
        assert got["node"] == "crw-------10,229"  # the host's node numbers and mode
        assert got["fuse_read"] == "ok" and got["fuse_write"] == "denied"  # cgroup rule "r"
        assert got["loop_rw"] == "ok"  # no permissions given: rwm, as Docker
        assert got["plain_fuse"] == "absent"  # only what was asked, where it was asked
    finally:
        finish(agent, task_id)


def test_missing_device_is_refused_at_submit(agent: Agent, tmp_path: Path) -> None:
    td: dict[str, Any] = {
        "family": "nodevice",
        "containerDefinitions": [
            container(
                "app", "true", linuxParameters={"devices": [{"hostPath": "/dev/nstask-none"}]}
            )
        ],
    }
    proc = agent.cli("run", "-d", write_taskdef(tmp_path, td))
    assert proc.returncode == 2, proc.stderr
    assert "containerDefinitions[0].linuxParameters.devices[0].hostPath" in proc.stderr
    assert "/dev/nstask-none" in proc.stderr
    assert not leaks(agent)


def test_max_swap_and_swappiness_in_the_memory_cgroup(agent: Agent, tmp_path: Path) -> None:
    script = (
        "cd /sys/fs/cgroup/memory; echo swappiness=$(cat memory.swappiness); "
        "echo mem=$(cat memory.limit_in_bytes); echo memsw=$(cat memory.memsw.limit_in_bytes)"
    )
    td: dict[str, Any] = {
        "family": "swap",
        "containerDefinitions": [
            container(
                "tuned",
                script,
                memory=64,
                linuxParameters={"maxSwap": 32, "swappiness": 10},
                dependsOn=[{"containerName": "noswap", "condition": "COMPLETE"}],
            ),
            container("noswap", script, essential=False, memory=64, linuxParameters={"maxSwap": 0}),
        ],
    }
    assert Path("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()  # this host: v1
    task_id = run_detached(agent, tmp_path, td)
    try:
        agent.wait_status(task_id, "STOPPED")
        tuned = values(agent.cli("logs", task_id, "tuned", check=True).stdout)
        noswap = values(agent.cli("logs", task_id, "noswap", check=True).stdout)
        mib = 1024 * 1024
        assert tuned["swappiness"] == "10"
        assert (int(tuned["mem"]), int(tuned["memsw"])) == (64 * mib, 96 * mib)
        # maxSwap 0: memory+swap is the memory limit: no swap (Docker's --memory-swap=memory).
        assert int(noswap["memsw"]) == int(noswap["mem"]) == 64 * mib
        assert noswap["swappiness"] == "60"  # not asked: the kernel's default
    finally:
        finish(agent, task_id)


def _holders() -> list[int]:
    """Namespace holder processes of any nstask agent (agent.nsholder) still on the host."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and b"NSTASK_NSHOLDER=" in (d / "environ").read_bytes():
                out.append(int(d.name))
        except OSError:
            continue
    return out


def test_pid_and_ipc_mode_task_share_namespaces(agent: Agent, tmp_path: Path) -> None:
    ns = "echo pidns=$(readlink /proc/self/ns/pid); echo ipcns=$(readlink /proc/self/ns/ipc)"
    before = set(_holders())
    td: dict[str, Any] = {
        "family": "sharedns",
        "pidMode": "task",
        "ipcMode": "task",
        "containerDefinitions": [
            container(
                "first", f"{ns}; echo first-up; trap 'exit 0' TERM; while :; do sleep 1; done"
            ),
            container(
                "second",
                f"{ns}; echo procs=$(ps -o comm | tr '\\n' ' '); echo second-done",
                essential=False,
                dependsOn=[{"containerName": "first", "condition": "START"}],
            ),
        ],
    }
    task_id = run_detached(agent, tmp_path, td)
    try:
        wait_for_log(agent, task_id, "second-done")
        first = values(agent.cli("logs", task_id, "first", check=True).stdout)
        second = values(agent.cli("logs", task_id, "second", check=True).stdout)
        host_pid, host_ipc = (Path(f"/proc/self/ns/{k}").readlink().name for k in ("pid", "ipc"))
        assert first["pidns"] == second["pidns"] != host_pid
        assert first["ipcns"] == second["ipcns"] != host_ipc
        # The second container sees the first's processes, and the holder's init as PID 1.
        procs = second["procs"].split()
        assert "tini-static" in procs and "sleep" in procs and "sh" in procs
        assert len(set(_holders()) - before) == 3  # unshare, tini, sleep
    finally:
        finish(agent, task_id)
    assert set(_holders()) - before == set()  # the holder went with the task


def test_pid_and_ipc_mode_host(agent: Agent, tmp_path: Path) -> None:
    script = (
        "echo pidns=$(readlink /proc/self/ns/pid); echo ipcns=$(readlink /proc/self/ns/ipc); "
        "echo shm=$(grep ' /dev/shm ' /proc/self/mountinfo | wc -l)"
    )
    td: dict[str, Any] = {
        "family": "hostns",
        "pidMode": "host",
        "ipcMode": "host",
        "containerDefinitions": [container("app", script)],
    }
    task_id = run_detached(agent, tmp_path, td)
    try:
        agent.wait_status(task_id, "STOPPED")
        got = values(agent.cli("logs", task_id, check=True).stdout)
        assert got["pidns"] == Path("/proc/self/ns/pid").readlink().name
        assert got["ipcns"] == Path("/proc/self/ns/ipc").readlink().name
        assert got["shm"] == "1"  # the host's /dev/shm, bound once
    finally:
        finish(agent, task_id)


def test_another_cpu_architecture_is_refused_at_submit(agent: Agent, tmp_path: Path) -> None:
    import os

    host = {"x86_64": "X86_64", "aarch64": "ARM64"}[os.uname().machine]
    other = "ARM64" if host == "X86_64" else "X86_64"
    td: dict[str, Any] = {
        "family": "otherarch",
        "runtimePlatform": {"cpuArchitecture": other, "operatingSystemFamily": "LINUX"},
        "containerDefinitions": [container("app", "true")],
    }
    before = agent.cli("ps", "-a", "-q", check=True).stdout
    proc = agent.cli("run", "-d", write_taskdef(tmp_path, td))
    assert proc.returncode == 2, proc.stderr
    assert f"runtimePlatform.cpuArchitecture: the task needs {other}" in proc.stderr
    assert agent.cli("ps", "-a", "-q", check=True).stdout == before  # nothing accepted
    td["runtimePlatform"]["cpuArchitecture"] = host
    task_id = run_detached(agent, tmp_path, td)
    assert agent.wait_status(task_id, "STOPPED")["containers"][0]["exitCode"] == 0
    agent.cli("rm", task_id, check=True)
    assert not leaks(agent)


def test_docker_volume_tmpfs_is_shared_by_the_task_and_unmounted_with_it(
    agent: Agent, tmp_path: Path
) -> None:
    mount = "echo mount=$(grep ' /data ' /proc/mounts | awk '{print $3, $4}')"
    td: dict[str, Any] = {
        "family": "tmpvol",
        "volumes": [
            {
                "name": "scratch",
                "dockerVolumeConfiguration": {
                    "scope": "task",
                    "driver": "local",
                    "driverOpts": {"type": "tmpfs", "device": "tmpfs", "o": "size=8m"},
                },
            }
        ],
        "containerDefinitions": [
            container(
                "writer",
                "echo from-writer > /data/note",
                essential=False,
                mountPoints=[{"sourceVolume": "scratch", "containerPath": "/data"}],
            ),
            container(
                "reader",
                f"{mount}; echo note=$(cat /data/note); echo reader-done",
                dependsOn=[{"containerName": "writer", "condition": "SUCCESS"}],
                mountPoints=[{"sourceVolume": "scratch", "containerPath": "/data"}],
            ),
        ],
    }
    task_id = run_detached(agent, tmp_path, td)
    try:
        agent.wait_status(task_id, "STOPPED")
        got = values(agent.cli("logs", task_id, "reader", check=True).stdout)
        assert got["note"] == "from-writer"  # one tmpfs, shared by both containers
        fstype, options = got["mount"].split()
        assert fstype == "tmpfs" and "size=8192k" in options.split(",")
        assert {"nosuid", "nodev"} <= set(options.split(","))
    finally:
        finish(agent, task_id)
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(agent.state_dir) not in mounts and task_id not in mounts


def test_other_volume_drivers_are_refused_with_a_location(agent: Agent, tmp_path: Path) -> None:
    td: dict[str, Any] = {
        "family": "badvol",
        "volumes": [{"name": "ebs", "dockerVolumeConfiguration": {"driver": "rexray/ebs"}}],
        "containerDefinitions": [container("app", "true")],
    }
    proc = agent.cli("run", "-d", write_taskdef(tmp_path, td))
    assert proc.returncode == 2
    assert "volumes[0].dockerVolumeConfiguration.driver" in proc.stderr
    assert not leaks(agent)


def test_restart_policy_restarts_in_place_once_per_attempt_period(
    agent: Agent, tmp_path: Path
) -> None:
    """ECS's minimum restartAttemptPeriod is 60 s, so this test runs for about a minute."""
    script = (
        "if [ -f /state/ran ]; then echo second-run; exit 3; fi; "
        "touch /state/ran; echo first-run; sleep 62; exit 3"
    )
    policy = {"enabled": True, "restartAttemptPeriod": 60}
    td: dict[str, Any] = {
        "family": "restarts",
        "volumes": [{"name": "state"}],
        "containerDefinitions": [
            container(
                "app",
                script,
                restartPolicy=policy,
                mountPoints=[{"sourceVolume": "state", "containerPath": "/state"}],
            ),
            container(
                "ignored",
                "sleep 61; exit 0",
                essential=False,
                restartPolicy={**policy, "ignoredExitCodes": [0]},
            ),
        ],
    }
    task_id = run_detached(agent, tmp_path, td)
    try:
        t = agent.wait_status(task_id, "STOPPED", timeout=120)
        by_name = {c["name"]: c for c in t["containers"]}
        # Restarted after 62 s; the second run exited within the period: not restarted again,
        # and the essential container's restart did not stop the task meanwhile.
        assert by_name["app"]["restartCount"] == 1 and by_name["app"]["exitCode"] == 3
        out = agent.cli("logs", task_id, "app", check=True).stdout
        assert out.index("first-run") < out.index("second-run")
        assert t["stopReason"] == "Essential container in task exited"
        # An ignored exit code: stopped as without a policy.
        assert by_name["ignored"]["restartCount"] == 0 and by_name["ignored"]["exitCode"] == 0
    finally:
        agent.cli("stop", "-t", "0", task_id)
        agent.cli("rm", task_id, check=True)
    assert not leaks(agent)


def test_pid_mode_task_holder_survives_an_agent_restart_and_goes_with_the_task(
    tmp_path: Path,
) -> None:
    import signal

    from conftest import launch_agent, start_agent, stop_agent

    a, proc, base = start_agent()
    try:
        before = set(_holders())
        td: dict[str, Any] = {
            "family": "holdrestart",
            "pidMode": "task",
            "containerDefinitions": [
                container("app", "trap 'exit 0' TERM; echo up; while :; do sleep 0.1; done")
            ],
        }
        task_id = run_detached(a, tmp_path, td)
        a.wait_status(task_id, "RUNNING")
        holders = set(_holders()) - before
        assert len(holders) == 3
        proc.send_signal(signal.SIGKILL)  # a crash: nothing is stopped
        proc.wait(timeout=20)
        assert set(_holders()) - before == holders  # the task's namespaces are still held
        proc = launch_agent(a)
        assert a.inspect(task_id)["lastStatus"] == "RUNNING"
        a.cli("stop", task_id, check=True)
        a.cli("rm", task_id, check=True)
        assert set(_holders()) - before == set()
        assert not leaks(a)
    finally:
        stop_agent(a, proc, base)


def test_gc_removes_a_namespace_holder_of_a_task_it_does_not_know(agent: Agent) -> None:
    import os
    import uuid

    from agent import nsholder

    other = nsholder.key_of(agent.namespace + "-other", uuid.uuid4().hex)  # not this agent's
    key = nsholder.key_of(agent.namespace, uuid.uuid4().hex)
    nsholder.spawn(other, pid=True, ipc=False)
    try:
        nsholder.spawn(key, pid=True, ipc=True)
        deadline = time.monotonic() + 5
        while len(nsholder.find(key)) < 3 or len(nsholder.find(other)) < 3:  # sleep started
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert f"namespace holder {key}" in leaks(agent)  # the leak check sees it
        out = agent.cli("gc", check=True).stdout
        assert key in out
        assert nsholder.find(key) == []
        assert len(nsholder.find(other)) == 3  # another namespace's holder: not this gc's
    finally:
        nsholder.remove(key)
        nsholder.remove(other)
        for _ in range(2):  # the unshare processes were this test's children
            try:
                os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
    assert not leaks(agent)
