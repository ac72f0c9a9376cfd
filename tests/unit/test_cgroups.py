"""The task cgroup's limits on fake v1 and v2 trees. Removal needs cgroupfs (rmdir of a
directory that holds control files) and is covered by the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import cgroups
from agent.errors import InvalidInput


def _v1(root: Path) -> Path:
    for c in ("memory", "cpu", "pids"):
        (root / c).mkdir(parents=True)
        (root / c / "cgroup.procs").write_text("")
    return root


def test_v1_limits_and_leftovers_in_every_hierarchy(tmp_path: Path) -> None:
    root = _v1(tmp_path)
    cgroups.create("t1", memory_mib=96, cpu_units=512, root=root)
    assert (root / "memory/nstask/t1/memory.limit_in_bytes").read_text() == str(96 << 20)
    assert (root / "cpu/nstask/t1/cpu.cfs_quota_us").read_text() == "50000"
    (root / "pids/nstask/t1/leaf").mkdir(parents=True)  # as runc leaves parents behind
    assert sorted(cgroups.leftovers(root=root)) == [
        str(root / h / "nstask/t1") for h in ("cpu", "memory", "pids")
    ]
    cgroups.remove("t-absent", root=root)  # absent is fine


def test_v2_limits(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids")
    (tmp_path / "cgroup.procs").write_text("")
    cgroups.create("t2", memory_mib=64, cpu_units=1024, root=tmp_path)
    assert (tmp_path / "nstask/t2/memory.max").read_text() == str(64 << 20)
    assert (tmp_path / "nstask/t2/cpu.max").read_text() == "100000 100000"


def test_v1_pids_limit_on_the_task_cgroup(tmp_path: Path) -> None:
    root = _v1(tmp_path)
    cgroups.create("t3", memory_mib=None, cpu_units=None, pids_limit=64, root=root)
    assert (root / "pids/nstask/t3/pids.max").read_text() == "64"
    cgroups.create("t4", memory_mib=None, cpu_units=None, pids_limit=None, root=root)
    assert not (root / "pids/nstask/t4/pids.max").exists()  # no limit: the parent's applies


def test_v2_pids_limit(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids")
    (tmp_path / "cgroup.procs").write_text("")
    cgroups.create("t5", memory_mib=None, cpu_units=None, pids_limit=4096, root=tmp_path)
    assert (tmp_path / "nstask/t5/pids.max").read_text() == "4096"


def test_pids_limit_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.config import load_config

    assert load_config().pids_limit == 4096
    monkeypatch.setenv("NSTASK_PIDS_LIMIT", "64")
    assert load_config().pids_limit == 64
    assert load_config(pids_limit=128).pids_limit == 128  # a flag wins over the variable
    monkeypatch.setenv("NSTASK_PIDS_LIMIT", "lots")
    with pytest.raises(InvalidInput, match="NSTASK_PIDS_LIMIT"):
        load_config()
