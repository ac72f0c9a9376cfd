"""A task must not reach host services bound to 127.0.0.1 (the CVE-2020-8558 bug class).

portmap sets route_localnet=1 on the bridge so published ports answer on 127.0.0.1; without
a guard, a task with CAP_NET_RAW (a default capability) can then send a SYN to 127.0.0.1 over
the bridge and get a SYN-ACK from any host service listening on loopback only. The agent
installs an INPUT guard for its bridge and puts route_localnet back to 0 once no task on the
bridge publishes ports. All traffic here stays between the task netns and host loopback.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import launch_agent, start_agent, stop_agent
from support import TEST_IMAGE, Agent, bridge_conflist, fetch, leaks, write_taskdef

from agent import hostguard
from agent.hostguard import chain_name

SOURCE = Path(__file__).parent / "fixtures" / "localnet_probe.c"
WEB = (
    "mkdir -p /www && echo served-by-$(hostname) > /www/index.html && "
    "httpd -f -p 8080 -h /www & trap 'exit 0' TERM; wait"
)


def route_localnet(bridge: str) -> str:
    return Path(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet").read_text().strip()


def guard_present(bridge: str) -> bool:
    chain = subprocess.run(["iptables", "-w", "-S", chain_name(bridge)], capture_output=True)
    rules = subprocess.run(["iptables", "-w", "-S", "INPUT"], capture_output=True, text=True)
    return chain.returncode == 0 or chain_name(bridge) in rules.stdout


def container(name: str, script: str) -> dict[str, Any]:
    return {"name": name, "image": TEST_IMAGE, "essential": True, "command": ["sh", "-c", script]}


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the raw-packet probe (Debian package gcc)")
    d = tmp_path / "probe"
    d.mkdir()
    subprocess.run(["gcc", "-static", "-O2", "-o", str(d / "probe"), str(SOURCE)], check=True)
    return d


def run(a: Agent, tmp_path: Path, td: dict[str, Any], name: str) -> str:
    return a.cli("run", "-d", write_taskdef(tmp_path, td, name), check=True).stdout.strip()


def user_conflist(a: Agent) -> dict[str, object]:
    """A user's --conflist naming the bridge itself (the guard follows the list's bridge)."""
    return bridge_conflist(a, {"type": "portmap", "capabilities": {"portMappings": True}})


@pytest.mark.parametrize("network", ["default", "conflist"])
def test_a_task_gets_no_answer_from_a_loopback_only_host_service(
    tmp_path: Path, probe: Path, network: str
) -> None:
    a, proc, base = start_agent(conflist_for=user_conflist if network == "conflist" else None)
    server = socket.socket()
    try:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        # A bridge-mode task with a published port: portmap turns route_localnet on.
        web_td = {
            "family": "guard-web",
            "networkMode": "bridge",
            "containerDefinitions": [
                {**container("web", WEB), "portMappings": [{"containerPort": 8080}]}
            ],
        }
        web_id = run(a, tmp_path, web_td, "web.json")
        web = a.wait_status(web_id, "RUNNING")
        assert route_localnet(a.bridge) == "1"
        host_port = web["ports"][0]["hostPort"]
        gateway = a.subnet.rsplit(".", 1)[0] + ".1"  # host-local's gateway, on the bridge
        # Published ports still answer from the host, on loopback and on a host address.
        assert fetch(f"http://127.0.0.1:{host_port}/").startswith("served-by-")
        assert fetch(f"http://{gateway}:{host_port}/").startswith("served-by-")

        probe_td = {
            "family": "guard-probe",
            "volumes": [{"name": "probe", "host": {"sourcePath": str(probe)}}],
            "containerDefinitions": [
                {
                    **container(
                        "probe",
                        f"/probe/probe eth0 {gateway} {port}; "
                        # (busybox wget -T segfaults in the test image; timeout bounds it)
                        f"timeout 5 wget -q -O- http://{web['ip']}:8080/",
                    ),
                    "mountPoints": [
                        {"sourceVolume": "probe", "containerPath": "/probe", "readOnly": True}
                    ],
                }
            ],
        }
        probe_id = run(a, tmp_path, probe_td, "probe.json")
        a.wait_status(probe_id, "STOPPED", timeout=30)
        out = a.cli("logs", probe_id, check=True).stdout
        assert "NO-ANSWER" in out, f"the task reached 127.0.0.1:{port} on the host: {out!r}"
        assert "served-by-" in out, f"tasks no longer reach each other: {out!r}"  # task to task
        a.cli("rm", probe_id, check=True)

        # A restarted agent knows from the CNI cache, not memory, that no port is left.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert guard_present(a.bridge), "the guard went while a task kept the bridge"
        proc = launch_agent(a)
        a.cli("stop", "-t", "0", web_id, check=True)
        assert route_localnet(a.bridge) == "0"
        a.cli("rm", web_id, check=True)
        assert not leaks(a)
    finally:
        server.close()
        try:
            stop_agent(a, proc, base)  # its leak check includes the guard
        finally:
            left = guard_present(a.bridge)
            if left:
                hostguard.remove(a.bridge)
    assert not left, "the guard chain outlived the agent and its bridge"


def test_gc_removes_a_guard_whose_bridge_is_gone(tmp_path: Path) -> None:
    # No warm pool: its attachments would make the bridge this test needs gone.
    a, proc, base = start_agent(extra_env={"NSTASK_WARM_POOL_SIZE": "0"})
    try:
        # What an agent killed after its bridge went would leave: a guard and no bridge.
        hostguard.install(a.bridge)
        assert guard_present(a.bridge)
        report = a.cli("gc", "--json", check=True).stdout
        assert chain_name(a.bridge) in report
        assert not guard_present(a.bridge)
    finally:
        if guard_present(a.bridge):
            hostguard.remove(a.bridge)
        stop_agent(a, proc, base)
