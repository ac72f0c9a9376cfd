"""The examples in examples/ run as the README says they do."""

from __future__ import annotations

import time
import urllib.request

from support import Agent


def test_batch_example_runs_its_job_after_the_fetch_succeeds(agent: Agent) -> None:
    proc = agent.cli("run", "--rm", "examples/batch.json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["fetched 5 records", "total: 15"]


def test_web_sidecar_example_publishes_and_the_sidecar_waits_for_healthy(agent: Agent) -> None:
    task_id = agent.cli("run", "-d", "examples/web-sidecar.json", check=True).stdout.strip()
    deadline = time.monotonic() + 30
    while True:
        t = agent.inspect(task_id)
        cs = {c["name"]: c for c in t["containers"]}
        if cs["poller"]["lastStatus"] == "RUNNING":
            break
        assert time.monotonic() < deadline, t
        time.sleep(0.2)
    assert cs["web"]["health"] == "HEALTHY"
    (port,) = t["ports"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port['hostPort']}/", timeout=5) as r:
        assert r.read().decode().startswith("web task ")
    t0 = time.monotonic()
    agent.cli("stop", task_id, check=True)
    assert time.monotonic() - t0 < 5  # tini forwards SIGTERM: no wait for SIGKILL
    agent.cli("rm", task_id, check=True)
