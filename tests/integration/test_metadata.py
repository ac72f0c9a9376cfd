"""What a task reads at 169.254.170.2 (task metadata v2/v3/v4, task-role credentials) and
what the host reads on the introspection API, on the real stack, from inside real tasks
(busybox wget), and botocore's own container credential provider from a task's netns.

One agent for the module, with free metadata and introspection ports of its own; its leak
check (stop_agent) includes the metadata endpoint's iptables chains.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import start_agent, stop_agent
from support import NSTASK, TEST_IMAGE, WAIT_FOREVER, Agent, leaks, write_taskdef

from agent.metadata import arns, netfilter

ROLE = "arn:aws:iam::123456789012:role/nstask-test-app"
KEYS = {
    "AccessKeyId": "AKIANSTASKTEST000001",
    "SecretAccessKey": "nstask-test-secret-value-0123456789abcdef",
    "Token": "nstask-test-session-token-value",
    "Expiration": "2031-01-01T00:00:00Z",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


class Ports:
    metadata = _free_port()
    introspection = _free_port()


@pytest.fixture(scope="module")
def md_agent() -> Iterator[Agent]:
    a, proc, base = start_agent(
        extra_env={
            "NSTASK_METADATA_PORT": str(Ports.metadata),
            "NSTASK_INTROSPECTION_PORT": str(Ports.introspection),
            "NSTASK_CLUSTER": "nstask-test",
            "NSTASK_REGION": "eu-west-3",
            "NSTASK_ACCOUNT_ID": "123456789012",
        }
    )
    try:
        yield a
    finally:
        stop_agent(a, proc, base)


def host_get(url: str) -> Any:
    """GET JSON from the host side (closing the connection)."""
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def gateway(a: Agent) -> str:
    return a.subnet.rsplit(".", 1)[0] + ".1"


def task_def(family: str, **extra: Any) -> dict[str, Any]:
    return {
        "family": family,
        "revision": 7,
        "cpu": "256",
        "memory": "512",
        "containerDefinitions": [
            {
                "name": "app",
                "image": TEST_IMAGE,
                "essential": True,
                "command": ["sh", "-c", WAIT_FOREVER],
                "memory": 128,
                "dockerLabels": {"team": "platform"},
            }
        ],
        **extra,
    }


def run(a: Agent, tmp_path: Path, td: dict[str, Any], name: str) -> dict[str, Any]:
    task_id = a.cli("run", "-d", write_taskdef(tmp_path, td, name), check=True).stdout.strip()
    return a.wait_status(task_id, "RUNNING")


def sh(a: Agent, task_id: str, script: str) -> subprocess.CompletedProcess[str]:
    return a.cli("exec", task_id, "--", "sh", "-c", script)


def get_json(a: Agent, task_id: str, url_expr: str) -> Any:
    out = sh(a, task_id, f"timeout 5 wget -q -O- {url_expr}")
    assert out.returncode == 0, f"{url_expr}: {out.stdout} {out.stderr}\n{a.log_tail()}"
    return json.loads(out.stdout)


def env_of(a: Agent, task_id: str) -> dict[str, str]:
    out = sh(a, task_id, "env").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def finish(a: Agent, *task_ids: str) -> None:
    for t in task_ids:
        a.cli("stop", "-t", "0", t, check=True)
        a.cli("rm", t, check=True)
    assert not leaks(a)


def test_v4_v3_and_v2_answer_each_task_with_its_own_data(md_agent: Agent, tmp_path: Path) -> None:
    a = md_agent
    tags = [{"key": "env", "value": "test"}, {"key": "owner", "value": "nstask"}]
    t = run(a, tmp_path, task_def("md-one", tags=tags), "one.json")
    c = t["containers"][0]
    try:
        env = env_of(a, t["id"])
        v4 = env["ECS_CONTAINER_METADATA_URI_V4"]
        assert v4.startswith("http://169.254.170.2/v4/") and len(v4.rsplit("/", 1)[1]) == 32
        assert env["ECS_CONTAINER_METADATA_URI"] == v4.replace("/v4/", "/v3/")
        assert "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI" not in env  # no role, no variable

        me = get_json(a, t["id"], "$ECS_CONTAINER_METADATA_URI_V4")
        assert me["DockerId"] == c["containerdId"] and me["Name"] == "app"
        assert me["Image"] == TEST_IMAGE and me["ImageID"].startswith("sha256:")
        assert me["KnownStatus"] == "RUNNING" and me["Type"] == "NORMAL"
        assert me["Limits"] == {"CPU": 0, "Memory": 128}
        assert me["Labels"]["team"] == "platform"
        assert me["Labels"]["com.amazonaws.ecs.task-definition-version"] == "7"
        assert me["CreatedAt"].endswith("Z") and "StartedAt" in me and "FinishedAt" not in me
        # OpenTelemetry's ECS detector reads region and account from ContainerARN.
        arn = arns.parse(me["ContainerARN"])
        assert (arn.region, arn.account, arn.resource_type) == (
            "eu-west-3",
            "123456789012",
            "container",
        )
        assert arn.resource.split("/")[:2] == ["nstask-test", t["id"]]
        net = me["Networks"][0]
        mac = sh(a, t["id"], "cat /sys/class/net/eth0/address").stdout.strip()
        assert net["NetworkMode"] == "awsvpc" and net["IPv4Addresses"] == [t["ip"]]
        assert net["MACAddress"] == mac and net["IPv4SubnetCIDRBlock"] == a.subnet
        assert net["SubnetGatewayIpv4Address"] == gateway(a) + "/24"
        assert net["PrivateDNSName"] == f"ip-{t['ip'].replace('.', '-')}.eu-west-3.compute.internal"

        task = get_json(a, t["id"], "$ECS_CONTAINER_METADATA_URI_V4/task")
        assert task["Cluster"] == "arn:aws:ecs:eu-west-3:123456789012:cluster/nstask-test"
        assert task["TaskARN"] == f"arn:aws:ecs:eu-west-3:123456789012:task/nstask-test/{t['id']}"
        assert (task["Family"], task["Revision"], task["LaunchType"]) == ("md-one", "7", "FARGATE")
        assert task["Limits"] == {"CPU": 0.25, "Memory": 512}
        assert task["AvailabilityZone"] == "eu-west-3a"
        assert task["PullStartedAt"] <= task["PullStoppedAt"]
        assert [x["DockerId"] for x in task["Containers"]] == [c["containerdId"]]
        assert "TaskTags" not in task and "ExecutionStoppedAt" not in task
        tagged = get_json(a, t["id"], "$ECS_CONTAINER_METADATA_URI_V4/taskWithTags")
        assert tagged["TaskTags"] == {"env": "test", "owner": "nstask"}
        v3 = get_json(a, t["id"], "$ECS_CONTAINER_METADATA_URI/task")
        assert v3["TaskARN"] == task["TaskARN"] and v3["Containers"][0]["Name"] == "app"
        v2 = get_json(a, t["id"], "http://169.254.170.2/v2/metadata")
        assert v2["TaskARN"] == task["TaskARN"]
        # The stats paths are agent.stats's (wired at merge); not served by this module.
        missing = sh(a, t["id"], "timeout 5 wget -q -O- http://169.254.170.2/v4/nosuchid")
        assert missing.returncode != 0
    finally:
        finish(a, t["id"])


def test_a_task_cannot_read_another_tasks_metadata_or_credentials(
    md_agent: Agent, tmp_path: Path
) -> None:
    a = md_agent
    a.cli("credentials", "put", ROLE, input=json.dumps(KEYS), check=True)
    first = run(a, tmp_path, task_def("md-first", taskRoleArn=ROLE), "first.json")
    second = run(a, tmp_path, task_def("md-second", taskRoleArn=ROLE), "second.json")
    try:
        env1, env2 = env_of(a, first["id"]), env_of(a, second["id"])
        creds1 = env1["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"]
        assert creds1 != env2["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"]
        # Its own: answered.
        got = get_json(
            a, first["id"], "http://169.254.170.2$AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"
        )
        assert got == {"RoleArn": ROLE, **KEYS}
        # The first task's URIs, from the second task's address: refused, and logged.
        for url in (
            env1["ECS_CONTAINER_METADATA_URI_V4"],
            env1["ECS_CONTAINER_METADATA_URI_V4"] + "/task",
            env1["ECS_CONTAINER_METADATA_URI"],
            "http://169.254.170.2" + creds1,
        ):
            out = sh(a, second["id"], f"timeout 5 wget -S -O- {url} 2>&1")
            assert out.returncode != 0 and "404" in out.stdout, (url, out.stdout)
        log = a.log_path.read_text()
        assert "metadata_refused" in log and second["ip"] in log
        # v2 answers each with its own task.
        assert get_json(a, first["id"], "http://169.254.170.2/v2/metadata")["Family"] == "md-first"
        assert (
            get_json(a, second["id"], "http://169.254.170.2/v2/metadata")["Family"] == "md-second"
        )
        # The keys are in no log line, no inspect, no listing; the ids are not in inspect.
        shown = a.cli("inspect", first["id"], check=True).stdout
        listing = a.cli("credentials", "ls", check=True).stdout
        assert ROLE in listing
        for value in (KEYS["SecretAccessKey"], KEYS["Token"], creds1.rsplit("/", 1)[1]):
            assert value not in a.log_path.read_text()
            assert value not in shown and value not in listing
    finally:
        finish(a, first["id"], second["id"])
        a.cli("credentials", "rm", ROLE, check=True)


def test_botocore_container_provider_gets_the_role_credentials_from_the_task(
    md_agent: Agent, tmp_path: Path
) -> None:
    """botocore's own ContainerProvider, unchanged, run in the task's network namespace with
    the task's variable: the request comes from the task's address through 169.254.170.2."""
    a = md_agent
    profile = tmp_path / "aws-credentials"
    profile.write_text(
        "[dev]\naws_access_key_id = AKIANSTASKPROFILE001\n"
        "aws_secret_access_key = nstask-profile-secret\naws_session_token = tok\n"
    )
    put = subprocess.run(
        [NSTASK, "credentials", "put", ROLE, "--profile", "dev"],
        env={**a.env(), "AWS_SHARED_CREDENTIALS_FILE": str(profile)},
        capture_output=True,
        text=True,
    )
    assert put.returncode == 0, put.stderr
    t = run(a, tmp_path, task_def("md-boto", taskRoleArn=ROLE), "boto.json")
    try:
        relative = env_of(a, t["id"])["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"]
        script = (
            "from botocore.credentials import ContainerProvider\n"
            "c = ContainerProvider().load().get_frozen_credentials()\n"
            "print(c.access_key, c.secret_key, c.token)\n"
        )
        out = subprocess.run(
            ["ip", "netns", "exec", Path(t["netns"]).name, sys.executable, "-c", script],
            env={"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": relative, "PATH": os.environ["PATH"]},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["AKIANSTASKPROFILE001", "nstask-profile-secret", "tok"]
        # The same URI from the host (not the task's address) is refused.
        with pytest.raises(urllib.error.HTTPError) as refused:
            host_get(f"http://{gateway(a)}:{Ports.metadata}{relative}")
        assert refused.value.code == 404
        refused.value.close()
    finally:
        finish(a, t["id"])
        a.cli("credentials", "rm", ROLE, check=True)


def test_only_169_254_170_2_reaches_the_agent_and_nothing_else_of_the_host(
    md_agent: Agent, tmp_path: Path
) -> None:
    a = md_agent
    t = run(a, tmp_path, task_def("md-reach"), "reach.json")
    try:
        routes = sh(a, t["id"], "ip route").stdout
        assert f"169.254.170.2 via {gateway(a)}" in routes
        # The listener itself, hit directly at the gateway: dropped (only the DNAT path).
        direct = sh(
            a, t["id"], f"timeout 3 wget -q -O- http://{gateway(a)}:{Ports.metadata}/v2/metadata"
        )
        assert direct.returncode != 0
        # The introspection API is on the host's loopback only.
        intro = sh(
            a,
            t["id"],
            f"timeout 3 wget -q -O- http://{gateway(a)}:{Ports.introspection}/v1/metadata",
        )
        assert intro.returncode != 0
        # The host reads it.
        meta = host_get(f"http://127.0.0.1:{Ports.introspection}/v1/metadata")
        assert meta["Cluster"] == "nstask-test"
        assert arns.parse(meta["ContainerInstanceArn"]).resource_type == "container-instance"
        docker_id = t["containers"][0]["containerdId"]
        one = host_get(f"http://127.0.0.1:{Ports.introspection}/v1/tasks?dockerid={docker_id}")
        assert one["Arn"].endswith(f"/nstask-test/{t['id']}") and one["Family"] == "md-reach"
        assert one["Version"] == "7" and one["KnownStatus"] == "RUNNING"
        assert one["Containers"][0]["DockerId"] == docker_id
        by_arn = host_get(f"http://127.0.0.1:{Ports.introspection}/v1/tasks?taskarn={one['Arn']}")
        assert by_arn == one
        every = host_get(f"http://127.0.0.1:{Ports.introspection}/v1/tasks")
        assert one in every["Tasks"]
        # The rules are this bridge's alone.
        nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
        jump = next(
            line for line in nat.splitlines() if f"-j {netfilter.NAT_PREFIX}{a.bridge}" in line
        )
        assert f"-i {a.bridge}" in jump and "169.254.170.2/32" in jump
        assert f"-j {netfilter.HOST_PREFIX}{a.bridge}" not in nat  # host mode is off
    finally:
        finish(a, t["id"])


def test_gc_removes_the_rules_of_a_recorded_bridge_that_is_gone(md_agent: Agent) -> None:
    """An agent that died after its bridge went (or ran with another --bridge) leaves its
    recorded chains: `nstask gc` finds and removes them."""
    a = md_agent
    gone = "nstaskgone" + a.bridge[-5:]
    record = a.state_dir / "metadata-chains.json"
    record.write_text(json.dumps(sorted({*json.loads(record.read_text()), gone})))
    netfilter.install(gone, "10.213.99.1", 51679)
    try:
        assert len(netfilter.present(gone)) == 2
        report = json.loads(a.cli("gc", "--json", check=True).stdout)
        kinds = {(r["kind"], r["name"], r["status"]) for r in report}
        assert ("metadata-rules", f"{netfilter.NAT_PREFIX}{gone}", "removed") in kinds
        assert netfilter.present(gone) == []
        assert gone not in record.read_text()
    finally:
        netfilter.remove(gone)
    assert not leaks(a)


def test_an_agent_that_starts_before_its_bridge_keeps_its_rules(tmp_path: Path) -> None:
    """No warm pool: the bridge is made by the first task's ADD, after the agent installed
    its metadata chains. They are not stale (they were removed as such at start, and the
    first task could not reach 169.254.170.2)."""
    a, proc, base = start_agent(
        extra_env={"NSTASK_WARM_POOL_SIZE": "0", "NSTASK_METADATA_PORT": str(_free_port())}
    )
    try:
        assert subprocess.run(["ip", "link", "show", a.bridge], capture_output=True).returncode
        assert len(netfilter.present(a.bridge)) == 2
        t = run(a, tmp_path, task_def("md-late-bridge"), "late.json")
        assert (
            get_json(a, t["id"], "http://169.254.170.2/v2/metadata")["Family"] == "md-late-bridge"
        )
        finish(a, t["id"])
    finally:
        stop_agent(a, proc, base)


def test_credentials_put_refuses_bad_input_with_exit_2_and_stores_nothing(
    md_agent: Agent, tmp_path: Path
) -> None:
    a = md_agent
    bad_role = a.cli("credentials", "put", "role/app", input=json.dumps(KEYS))
    assert bad_role.returncode == 2 and "IAM role ARN" in bad_role.stderr
    no_secret = a.cli("credentials", "put", ROLE, input='{"AccessKeyId": "AKIAONLY"}')
    assert no_secret.returncode == 2 and "missing SecretAccessKey" in no_secret.stderr
    assert "AKIAONLY" not in no_secret.stderr
    missing = a.cli("credentials", "put", ROLE, "--profile", "nope")
    assert missing.returncode == 2
    keys = tmp_path / "keys.txt"
    keys.write_text("aws_access_key_id=AKIAFROMFILE\naws_secret_access_key=s\n")
    a.cli("credentials", "put", ROLE, "--file", str(keys), check=True)
    assert a.cli("credentials", "ls", check=True).stdout.split()[0] == ROLE
    a.cli("credentials", "rm", ROLE, check=True)
    assert a.cli("credentials", "ls", check=True).stdout == ""
    assert a.cli("credentials", "rm", ROLE).returncode != 0


def test_the_uris_survive_an_agent_restart(tmp_path: Path) -> None:
    """The ids are kept with the records: a task started before a restart reads its
    metadata and credentials at the same URIs after it."""
    from conftest import launch_agent

    port = _free_port()
    a, proc, base = start_agent(
        extra_env={"NSTASK_METADATA_PORT": str(port), "NSTASK_INTROSPECTION_PORT": "0"}
    )
    try:
        a.cli("credentials", "put", ROLE, input=json.dumps(KEYS), check=True)
        t = run(a, tmp_path, task_def("md-restart", taskRoleArn=ROLE), "restart.json")
        before = get_json(a, t["id"], "$ECS_CONTAINER_METADATA_URI_V4")
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        proc = launch_agent(a)
        after = get_json(a, t["id"], "$ECS_CONTAINER_METADATA_URI_V4")
        assert after["DockerId"] == before["DockerId"]
        assert after["ContainerARN"] == before["ContainerARN"]
        creds = get_json(a, t["id"], "http://169.254.170.2$AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        assert creds["AccessKeyId"] == KEYS["AccessKeyId"]
        finish(a, t["id"])
    finally:
        stop_agent(a, proc, base)


def test_host_mode_tasks_reach_the_endpoint_when_the_agent_owns_host_mode(
    tmp_path: Path,
) -> None:
    """The only test that turns metadata_host_mode on: its nat OUTPUT rule sends every host
    process's 169.254.170.2:80 to this agent, so no other agent of the suite may own it (the
    others keep the default, off). The rule goes with the agent's bridge."""
    port = _free_port()
    a, proc, base = start_agent(
        extra_env={
            "NSTASK_METADATA_PORT": str(port),
            "NSTASK_INTROSPECTION_PORT": "0",
            "NSTASK_METADATA_HOST_MODE": "1",
        }
    )
    try:
        a.cli("credentials", "put", ROLE, input=json.dumps(KEYS), check=True)
        td = task_def("md-host", taskRoleArn=ROLE, networkMode="host")
        t = run(a, tmp_path, td, "host.json")
        me = get_json(a, t["id"], "$ECS_CONTAINER_METADATA_URI_V4")
        assert me["Networks"] == [{"NetworkMode": "host"}]
        task = get_json(a, t["id"], "$ECS_CONTAINER_METADATA_URI_V4/task")
        assert task["Family"] == "md-host"
        creds = get_json(a, t["id"], "http://169.254.170.2$AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        assert creds["SecretAccessKey"] == KEYS["SecretAccessKey"]
        nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
        assert "-A OUTPUT -d 169.254.170.2/32 -p tcp" in nat
        assert f"-j {netfilter.HOST_PREFIX}{a.bridge}" in nat
        # An awsvpc task of the same agent: still only through its bridge, its own data.
        other = run(a, tmp_path, task_def("md-awsvpc"), "awsvpc.json")
        assert get_json(a, other["id"], "http://169.254.170.2/v2/metadata")["Family"] == "md-awsvpc"
        finish(a, t["id"], other["id"])
    finally:
        stop_agent(a, proc, base)  # its leak check includes the OUTPUT chain


def test_another_agents_task_cannot_reach_this_agents_endpoint(
    md_agent: Agent, agent: Agent, tmp_path: Path
) -> None:
    """The session's agent (another bridge): its task reaches its own agent's endpoint at
    169.254.170.2, and not this agent's listener, not even directly at its gateway."""
    mine = run(md_agent, tmp_path, task_def("md-mine"), "mine.json")
    theirs = run(agent, tmp_path, task_def("md-theirs"), "theirs.json")
    try:
        own = get_json(agent, theirs["id"], "http://169.254.170.2/v2/metadata")
        assert own["Family"] == "md-theirs"
        direct = sh(
            agent,
            theirs["id"],
            f"timeout 3 wget -q -O- http://{gateway(md_agent)}:{Ports.metadata}/v2/metadata",
        )
        assert direct.returncode != 0 and "md-mine" not in direct.stdout
    finally:
        finish(agent, theirs["id"])
        finish(md_agent, mine["id"])


def test_a_bridge_mode_task_reaches_the_endpoint_too(md_agent: Agent, tmp_path: Path) -> None:
    a = md_agent
    td = task_def("md-bridge", networkMode="bridge")
    td["containerDefinitions"][0]["portMappings"] = [{"containerPort": 8080}]
    t = run(a, tmp_path, td, "bridge.json")
    try:
        me = get_json(a, t["id"], "$ECS_CONTAINER_METADATA_URI_V4")
        assert me["Networks"] == [{"NetworkMode": "bridge", "IPv4Addresses": [t["ip"]]}]
        host_port = t["ports"][0]["hostPort"]
        assert me["Ports"] == [
            {"ContainerPort": 8080, "Protocol": "tcp", "HostPort": host_port, "HostIp": "0.0.0.0"}
        ]
        v2 = get_json(a, t["id"], "http://169.254.170.2/v2/metadata")
        assert v2["Family"] == "md-bridge"
    finally:
        finish(a, t["id"])


def test_task_role_credentials_come_from_sts_and_change_at_refresh(tmp_path: Path) -> None:
    """No local credentials for the role: the agent assumes it through STS (moto's server on
    loopback) with its own keys; the task gets them at its credentials URI, and new ones once
    the old are within the refresh margin of their expiry."""
    from moto_support import MotoServer

    moto = MotoServer()
    role = "arn:aws:iam::123456789012:role/nstask-test-sts"
    env = {
        **moto.agent_env(tmp_path),
        # 900 s credentials renewed when fewer than 899 s are left: after a second.
        "NSTASK_STS_DURATION": "900",
        "NSTASK_STS_REFRESH_MARGIN": "899",
        "NSTASK_METADATA_PORT": str(_free_port()),
        "NSTASK_INTROSPECTION_PORT": "0",
    }
    a, proc, base = start_agent(extra_env=env)
    task_id = None
    try:
        task_id = run(a, tmp_path, task_def("md-sts", taskRoleArn=role), "sts.json")["id"]
        url = "http://169.254.170.2$AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"
        first = get_json(a, task_id, url)
        assert first["RoleArn"] == role and first["AccessKeyId"] and first["Token"]
        assert first["Expiration"].endswith("Z")
        assert "sts_assumed_role" in a.log_path.read_text()
        sh(a, task_id, "sleep 1.5")  # past the refresh margin
        again = get_json(a, task_id, url)
        assert again["AccessKeyId"] != first["AccessKeyId"]
        assert first["SecretAccessKey"] not in a.log_path.read_text()
        a.cli("stop", "-t", "0", task_id, check=True)
        a.cli("rm", task_id, check=True)
        task_id = None
        assert not leaks(a)
    finally:
        if task_id is not None:
            a.cli("rm", "-f", task_id)
        stop_agent(a, proc, base)
        moto.stop()


def test_stats_paths_answer_the_tasks_own_containers_in_dockers_shape(
    md_agent: Agent, tmp_path: Path
) -> None:
    a = md_agent
    first = run(a, tmp_path, task_def("md-stats"), "stats.json")
    other = run(a, tmp_path, task_def("md-stats-other"), "stats-other.json")
    try:
        (cid,) = [c["containerdId"] for c in first["containers"]]
        one = get_json(a, first["id"], "$ECS_CONTAINER_METADATA_URI_V4/stats")
        assert one["id"] == cid and one["name"] == "/app"
        for key in ("read", "preread", "cpu_stats", "precpu_stats", "memory_stats", "pids_stats"):
            assert key in one, key
        assert one["memory_stats"]["usage"] > 0 and one["pids_stats"]["current"] >= 1
        assert one["networks"]["eth0"]["rx_packets"] >= 0 and "network_rate_stats" in one
        for url in (
            "$ECS_CONTAINER_METADATA_URI_V4/task/stats",
            "$ECS_CONTAINER_METADATA_URI/task/stats",
            "http://169.254.170.2/v2/stats",
        ):
            by_id = get_json(a, first["id"], url)
            assert list(by_id) == [cid] and by_id[cid]["id"] == cid, url
        assert get_json(a, first["id"], f"http://169.254.170.2/v2/stats/{cid}")["id"] == cid
        # Another task: not with the first's URI, not by the first's container id.
        uri = env_of(a, first["id"])["ECS_CONTAINER_METADATA_URI_V4"]
        for url in (uri + "/stats", uri + "/task/stats", f"http://169.254.170.2/v2/stats/{cid}"):
            out = sh(a, other["id"], f"timeout 5 wget -S -O- {url} 2>&1")
            assert out.returncode != 0 and "404" in out.stdout, (url, out.stdout)
    finally:
        finish(a, first["id"], other["id"])
