"""Container stats on the real stack: containerd's cgroup metrics and the task netns' counters
in Docker's stats shape, `nstask stats`, the Prometheus listener, the start timeline and its
OTLP export."""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import start_agent, stop_agent
from support import TEST_IMAGE, Agent, busybox_task, write_taskdef

from agent import stats

MIB = 1 << 20
# Fills 48 MiB of /dev/shm (tmpfs pages are charged to the container's memory cgroup and are
# not page cache docker stats subtracts), serves files on 8080, then keeps one CPU busy.
BURNER = (
    "dd if=/dev/zero of=/dev/shm/fill bs=1M count=48 2>/dev/null; "
    "httpd -p 8080 -h /; while :; do :; done"
)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.path)


def api_get(a: Agent, path: str) -> tuple[int, Any]:
    conn = _UnixConnection(a.socket)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


@pytest.fixture
def cleanup(agent: Agent) -> Iterator[list[str]]:
    """Task ids to remove (stopping them first) when the test ends, passed or failed: a
    task left running would show in the next tests' leak checks and listings."""
    ids: list[str] = []
    yield ids
    for task_id in ids:
        agent.cli("rm", "-f", task_id)


def run_burner(
    a: Agent, tmp_path: Path, cleanup: list[str], family: str = "burner"
) -> dict[str, Any]:
    td = busybox_task(family, ["sh", "-c", BURNER])
    task_id = a.cli("run", "-d", write_taskdef(tmp_path, td), check=True).stdout.strip()
    cleanup.append(task_id)
    return a.wait_status(task_id, "RUNNING")


def fetch_bytes(url: str, timeout: float = 15) -> bytes:
    """The body at `url`, retried while nothing listens yet (httpd starts after dd)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return bytes(r.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wait_memory(a: Agent, task_id: str, at_least: int) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        status, body = api_get(a, f"/v1/tasks/{task_id}/stats")
        assert status == 200, body
        (one,) = body.values()
        if one is not None and stats.memory_usage(one)[0] >= at_least:
            return dict(one)
        assert time.monotonic() < deadline, f"memory never reached {at_least}: {one}"
        time.sleep(0.2)


def test_stats_move_with_cpu_memory_and_traffic(
    agent: Agent, tmp_path: Path, cleanup: list[str]
) -> None:
    task = run_burner(agent, tmp_path, cleanup)
    cid = task["containers"][0]["containerdId"]
    first = wait_memory(agent, task["id"], 40 * MIB)
    assert first["id"] == cid and first["name"] == "/burner"
    assert first["pids_stats"]["current"] >= 2  # the shell and httpd
    assert first["memory_stats"]["limit"] > 40 * MIB
    rx0, tx0 = stats.net_io(first)
    assert list(first["networks"]) == ["eth0"]
    # Traffic into and out of the task netns: the host fetches a 1+ MiB file from httpd.
    size = len(fetch_bytes(f"http://{task['ip']}:8080/bin/busybox"))
    assert size > MIB
    time.sleep(1.0)
    status, body = api_get(agent, f"/v1/tasks/{task['id']}/stats")
    assert status == 200
    second = body[cid]
    # precpu is an earlier sample of this container (the latest one at least MIN_GAP_S older:
    # wait_memory polled): docker stats' CPU % works on one answer
    assert second["preread"] != stats.ZERO_TIME and second["preread"] < second["read"]
    assert second["read"] > first["read"]
    assert (
        second["cpu_stats"]["cpu_usage"]["total_usage"]
        > first["cpu_stats"]["cpu_usage"]["total_usage"]
    )
    # A busy loop keeps one CPU busy: ~100% when the host is idle; other tests share it.
    assert stats.cpu_percent(second) > 25, second["cpu_stats"]
    rx1, tx1 = stats.net_io(second)
    assert tx1 - tx0 >= size and rx1 > rx0
    assert second["network_rate_stats"]["tx_bytes_per_sec"] > 0
    agent.cli("stop", "-t", "0", task["id"], check=True)
    status, body = api_get(agent, f"/v1/tasks/{task['id']}/stats")
    assert (status, body) == (200, {cid: None})  # not running: no stats
    agent.cli("rm", task["id"], check=True)
    status, body = api_get(agent, "/v1/tasks/nosuchtask/stats")
    assert status == 404 and body["error"]


def test_stats_cli_no_stream_table_and_json(
    agent: Agent, tmp_path: Path, cleanup: list[str]
) -> None:
    task = run_burner(agent, tmp_path, cleanup, "statscli")
    wait_memory(agent, task["id"], 40 * MIB)
    host, blank, *table = agent.cli(
        "stats", "--no-stream", task["id"], check=True
    ).stdout.splitlines()
    # The host line first: this task's one busy container counts against the host's cores.
    assert host.startswith("host: 1 task(s), 1 of 1 container(s) running; CPU ") and not blank
    assert f"of {os.cpu_count()} core(s)" in host and "MiB in containers" in host, host
    head = ["TASK", "CONTAINER", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O"]
    assert table[0].split("   ")[:1] == ["TASK"] and all(h in table[0] for h in head), table
    assert table[0].rstrip().endswith("PIDS")
    (row,) = table[1:]
    assert row.startswith(task["id"][:12]) and "statscli" in row
    # CPU % from two samples a second apart (one busy CPU), memory in MiB as docker shows it
    cpu = float(row.split()[2].rstrip("%"))
    assert cpu > 25, row
    assert "MiB / " in row, row
    proc = agent.cli("stats", "--no-stream", "--json", task["id"], check=True)
    (one,) = json.loads(proc.stdout)
    assert one["task"] == task["id"] and one["container"] == "statscli" and one["running"]
    assert one["cpuPercent"] > 25 and one["memoryUsage"] >= 40 * MIB
    assert one["memoryPercent"] == round(one["memoryUsage"] / one["memoryLimit"] * 100, 2)
    assert one["pids"] >= 2 and one["stats"]["id"] == task["containers"][0]["containerdId"]
    # Without TASK: every running task; a stopped one named is shown without numbers.
    listed = json.loads(agent.cli("stats", "--no-stream", "--json", check=True).stdout)
    assert task["id"] in {r["task"] for r in listed}
    agent.cli("stop", "-t", "0", task["id"], check=True)
    stopped = agent.cli("stats", "--no-stream", task["id"], check=True).stdout.splitlines()
    assert "0 of 1 container(s) running" in stopped[0] and "--" in stopped[3]
    bad = agent.cli("stats", "--no-stream", "nosuchtask")
    assert bad.returncode == 1 and "no such task" in bad.stderr
    agent.cli("rm", task["id"], check=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(url: str) -> dict[str, Any]:
    """{family name: [(sample name, labels, value)]} parsed by prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {
        fam.name: [(s.name, s.labels, s.value) for s in fam.samples]
        for fam in text_string_to_metric_families(text)
    }


def test_prometheus_scrape_shows_tasks_phases_containers_and_logging(tmp_path: Path) -> None:
    port = _free_port()
    a, proc, base = start_agent(extra_env={"NSTASK_METRICS_ADDRESS": f"127.0.0.1:{port}"})
    try:
        td = busybox_task(
            "promtask", ["sh", "-c", "for i in 1 2 3; do echo line$i; done; " + BURNER]
        )
        task_id = a.cli("run", "-d", write_taskdef(tmp_path, td), check=True).stdout.strip()
        a.wait_status(task_id, "RUNNING")
        wait_memory(a, task_id, 40 * MIB)
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 10
        while True:  # the shim writes its counters about once a second
            fams = _scrape(url)
            logged = [
                v for _, labels, v in fams.get("nstask_log_lines", []) if labels["task"] == task_id
            ]
            if (logged and logged[0] >= 3) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert logged == [3.0], fams.get("nstask_log_lines")
        tasks = {labels["status"]: v for _, labels, v in fams["nstask_tasks"]}
        assert tasks["RUNNING"] == 1.0 and tasks["STOPPED"] == 0.0
        starts = {
            labels["result"]: v
            for n, labels, v in fams["nstask_task_starts"]
            if n.endswith("_total")
        }
        assert starts == {"running": 1.0}
        phases = {
            labels["phase"]: v
            for n, labels, v in fams["nstask_task_start_phase_seconds"]
            if n.endswith("_count")
        }
        assert phases["container.start"] == 1.0 and phases["start_total"] == 1.0, phases
        assert "images" in phases and "container.create" in phases
        mine = {"task": task_id, "family": "promtask", "container": "promtask"}
        (cpu,) = [v for _, labels, v in fams["nstask_container_cpu_seconds"] if labels == mine]
        assert cpu > 0
        (mem,) = [
            v for _, labels, v in fams["nstask_container_memory_usage_bytes"] if labels == mine
        ]
        assert mem >= 40 * MIB
        (pids,) = [v for _, labels, v in fams["nstask_container_pids"] if labels == mine]
        assert pids >= 2
        (rx,) = [
            v
            for _, labels, v in fams["nstask_task_network_receive_bytes"]
            if labels == {"task": task_id, "family": "promtask", "interface": "eth0"}
        ]
        assert rx > 0
        a.cli("stop", "-t", "0", task_id, check=True)
        fams = _scrape(url)
        tasks = {labels["status"]: v for _, labels, v in fams["nstask_tasks"]}
        assert tasks["RUNNING"] == 0.0 and tasks["STOPPED"] == 1.0
        assert not [1 for _, labels, _ in fams["nstask_container_cpu_seconds"] if labels == mine]
    finally:
        stop_agent(a, proc, base)


def test_inspect_timeline_draws_the_start_phases_in_order(
    agent: Agent, tmp_path: Path, cleanup: list[str]
) -> None:
    td = busybox_task("timeline", ["sleep", "30"])
    td["containerDefinitions"].append(  # type: ignore[attr-defined]
        {"name": "second", "image": TEST_IMAGE, "essential": False, "command": ["sleep", "30"]}
    )
    task_id = agent.cli("run", "-d", write_taskdef(tmp_path, td), check=True).stdout.strip()
    cleanup.append(task_id)
    task = agent.wait_status(task_id, "RUNNING")
    starts, took = task["timeline"], task["timings"]
    assert set(starts) <= set(took) and "container.second.start" in starts
    # the sequence: the network and the images side by side, both done before the first
    # container is created, then each container after the one before it
    net_phase = "network.pool" if "network.pool" in starts else "network.cni"
    create = starts["container.timeline.create"]
    for phase in (net_phase, "images"):
        assert starts[phase] + took[phase] <= create + 0.1, (phase, starts, took)
    first_done = starts["container.timeline.start"] + took["container.timeline.start"]
    assert starts["container.second.create"] >= first_done - 0.1
    out = agent.cli("inspect", "--timeline", task_id, check=True).stdout.splitlines()
    assert out[0].startswith(f"task {task_id[:12]} (timeline)")
    names = [line.split()[0] for line in out[2:]]
    assert names == sorted(starts, key=lambda k: (starts[k], k))
    bars = {line.split()[0]: line.split("|")[1] for line in out[2:]}
    width = len(bars["images"])
    assert all(len(b) == width for b in bars.values())
    # the later container's bar begins right of the earlier one's
    assert bars["container.second.start"].index(bars["container.second.start"].strip()[0]) > (
        bars["container.timeline.create"].index(bars["container.timeline.create"].strip()[0])
    )
    agent.cli("rm", "-f", task_id, check=True)


class _OtlpReceiver:
    """A small OTLP/HTTP trace receiver on loopback: keeps every span it is sent."""

    def __init__(self) -> None:
        import gzip
        import http.server
        import threading

        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.spans: list[Any] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                receiver.paths.append(self.path)
                for rs in req.resource_spans:
                    for ss in rs.scope_spans:
                        receiver.spans.extend(ss.spans)
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_task_start_arrives_as_an_otlp_trace_one_span_per_phase(tmp_path: Path) -> None:
    receiver = _OtlpReceiver()
    try:
        a, proc, base = start_agent(
            extra_env={"NSTASK_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}"}
        )
        try:
            td = busybox_task("traced", ["sleep", "30"])
            task_id = a.cli("run", "-d", write_taskdef(tmp_path, td), check=True).stdout.strip()
            task = a.wait_status(task_id, "RUNNING")
            deadline = time.monotonic() + 15
            while not any(s.name == "task.start" for s in receiver.spans):
                assert time.monotonic() < deadline, f"no trace arrived: {receiver.spans}"
                time.sleep(0.1)
            a.cli("rm", "-f", task_id, check=True)
        finally:
            stop_agent(a, proc, base)
    finally:
        receiver.close()
    assert set(receiver.paths) == {"/v1/traces"}
    (root,) = [s for s in receiver.spans if s.name == "task.start"]
    children = [s for s in receiver.spans if s.trace_id == root.trace_id and s is not root]
    attrs = {kv.key: kv.value.string_value for kv in root.attributes}
    assert attrs["nstask.task.id"] == task_id and attrs["nstask.task.family"] == "traced"
    want = {k for k in task["timeline"] if k != "start_total"}
    assert {s.name for s in children} == want
    assert {"accept", "images", "container.traced.create", "container.traced.start"} <= want
    assert all(s.parent_span_id == root.span_id for s in children)
    assert not root.parent_span_id
    created_ns = int(task["createdAt"] * 1e9)
    for s in children:
        # real times: where the phase began on the task's timeline, as long as it took
        assert abs(s.start_time_unix_nano - created_ns - task["timeline"][s.name] * 1e6) < 1e6
        took_ns = s.end_time_unix_nano - s.start_time_unix_nano
        assert abs(took_ns - task["timings"][s.name] * 1e6) < 1e6
        assert root.start_time_unix_nano <= s.start_time_unix_nano
        assert s.end_time_unix_nano <= root.end_time_unix_nano
