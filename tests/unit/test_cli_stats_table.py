"""`nstask stats`' table: docker stats' columns and units."""

from __future__ import annotations

import cli


def test_table_shows_docker_units_and_dashes_for_a_stopped_container() -> None:
    running = {
        "task": "0123456789abcdef",
        "container": "web",
        "running": True,
        "cpuPercent": 99.5,
        "memoryUsage": 48 << 20,
        "memoryLimit": 512 << 20,
        "memoryPercent": 9.38,
        "netRx": 1_050_000,
        "netTx": 980,
        "blockRead": 0,
        "blockWrite": 4_096_000,
        "pids": 3,
    }
    stopped = {"task": "0123456789abcdef", "container": "sidecar", "running": False}
    head, row, dash = cli._stats_table([running, stopped])
    assert head.split()[:3] == ["TASK", "CONTAINER", "CPU"] and head.endswith("PIDS")
    assert row.split()[:2] == ["0123456789ab", "web"]
    for cell in ("99.50%", "48MiB / 512MiB", "9.38%", "1.05MB / 980B", "0B / 4.096MB", "3"):
        assert cell in row, (cell, row)
    assert dash.startswith("0123456789ab   sidecar") and dash.split()[2] == "--"


def test_units_switch_at_their_base() -> None:
    assert cli._binary(1023) == "1023B"
    assert cli._binary(1024) == "1KiB" and cli._binary(1536 << 20) == "1.5GiB"
    assert cli._decimal(999) == "999B" and cli._decimal(1000) == "1kB"


def test_host_line_sums_the_containers_against_the_hosts_cores_and_memory() -> None:
    rows = [
        {
            "task": "t1",
            "container": "a",
            "running": True,
            "cpuPercent": 150.0,
            "memoryUsage": 1 << 30,
        },
        {
            "task": "t1",
            "container": "b",
            "running": True,
            "cpuPercent": 50.0,
            "memoryUsage": 1 << 30,
        },
        {"task": "t2", "container": "c", "running": False},
    ]
    line = cli._host_summary(rows, (16 << 30, 4 << 30), 4)
    assert line == (
        "host: 2 task(s), 2 of 3 container(s) running; CPU 50.00% of 4 core(s); "
        "memory 2GiB in containers, host 4GiB / 16GiB in use"
    )
    total, used = cli._host_memory()
    assert total > used > 0
