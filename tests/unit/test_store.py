"""The state store: tasks survive a reopen; resources are recorded as intents first."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from agent.errors import StateError
from agent.store import ContainerRecord, Store, TaskRecord


def _task() -> TaskRecord:
    return TaskRecord(
        id="t1",
        family="f",
        definition={"containerDefinitions": []},
        last_status="PROVISIONING",
        desired_status="RUNNING",
        created_at=1.0,
        containers=[
            ContainerRecord(
                task_id="t1",
                name="a",
                position=0,
                containerd_id="t1-0-a",
                image="img",
                log_path="/x",
                essential=True,
            )
        ],
    )


def test_task_round_trip_across_reopen(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    t = _task()
    s.insert_task(t)
    t.last_status, t.ip, t.timings = "RUNNING", "10.0.0.2", {"network.cni": 12.5}
    t.containers[0].exit_code = 3
    s.update_task(t)
    s.update_container(t.containers[0])
    s.close()
    again = Store(tmp_path / "state.db").get_task("t1")
    assert again is not None
    assert again.last_status == "RUNNING" and again.ip == "10.0.0.2"
    assert again.timings == {"network.cni": 12.5}
    assert again.containers[0].exit_code == 3 and again.exit_code == 3
    assert stat.S_IMODE((tmp_path / "state.db").stat().st_mode) == 0o600


def test_intent_then_created_then_removed(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    s.insert_task(_task())
    s.intend("netns", "nstask-t1", "t1")
    assert [(r.kind, r.state) for r in s.resources("t1")] == [("netns", "intent")]
    s.created("netns", "nstask-t1", path="/run/netns/nstask-t1")
    (r,) = s.resources("t1")
    assert r.state == "created" and r.data == {"path": "/run/netns/nstask-t1"}
    s.removed("netns", "nstask-t1")
    assert s.resources() == []


def test_corrupt_store_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match=r"is damaged.*move .* aside"):
        Store(tmp_path / "state.db")


def test_damage_in_the_middle_of_the_file_is_found_at_open(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = Store(path)
    for i in range(40):
        t = _task()
        t.id, t.overrides = f"t{i}", {"PAD": "v" * 3000}
        for c in t.containers:
            c.task_id, c.containerd_id = t.id, f"{t.id}-0-a"
        s.insert_task(t)
    s.close()
    size = path.stat().st_size
    assert size >= 20 * 4096
    with open(path, "r+b") as f:
        f.seek(size // 4096 // 2 * 4096)
        f.write(b"\xa5" * 8192)
    with pytest.raises(StateError) as info:
        Store(path)
    message = info.value.message
    assert str(path) in message and "aside" in message and "nstask gc --dry-run" in message


def test_an_error_while_running_is_a_state_error(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    s.insert_task(_task())

    class Broken:
        def execute(self, *_: object) -> object:
            raise sqlite3.DatabaseError("database disk image is malformed")

    s.db = Broken()  # type: ignore[assignment]
    for call in (s.list_tasks, lambda: s.get_task("t1"), s.resources, lambda: s.removed("a", "b")):
        with pytest.raises(StateError, match="is damaged"):
            call()


def test_the_wal_and_shm_files_are_private_from_the_start(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        s = Store(tmp_path / "state.db")
        s.insert_task(_task())
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir() if p.is_file()}
    finally:
        os.umask(old)
        s.close()
    assert modes == {"state.db": 0o600, "state.db-wal": 0o600, "state.db-shm": 0o600}, modes


def test_config_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.config import load_config

    monkeypatch.setenv("NSTASK_CNI_PATH", "/a:/b,/c")
    monkeypatch.setenv("NSTASK_INSECURE_REGISTRIES", "reg.example:5000, 10.0.0.1:80")
    monkeypatch.setenv("NSTASK_STOP_TIMEOUT", "12.5")
    monkeypatch.setenv("NSTASK_STOP_TASKS_ON_EXIT", "true")
    cfg = load_config(namespace="mine")
    assert cfg.cni_path == ("/a", "/b", "/c")
    assert cfg.insecure_registries == ("reg.example:5000", "10.0.0.1:80")
    assert cfg.stop_timeout == 12.5 and cfg.stop_tasks_on_exit is True
    assert cfg.namespace == "mine"


def test_timeline_is_kept_and_an_older_store_gains_the_column(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    old = sqlite3.connect(db)  # a store from before the timeline column
    old.executescript(
        "CREATE TABLE tasks (id TEXT PRIMARY KEY, family TEXT NOT NULL, definition TEXT NOT NULL,"
        " source TEXT NOT NULL DEFAULT '', overrides TEXT NOT NULL DEFAULT '{}', last_status"
        " TEXT NOT NULL, desired_status TEXT NOT NULL, created_at REAL NOT NULL, started_at"
        " REAL, stopped_at REAL, stop_reason TEXT, netns TEXT, ip TEXT, timings TEXT NOT NULL"
        " DEFAULT '{}');"
        "INSERT INTO tasks (id, family, definition, last_status, desired_status, created_at)"
        " VALUES ('old', 'f', '{}', 'STOPPED', 'STOPPED', 1.0);"
    )
    old.close()
    s = Store(db)
    before = s.get_task("old")
    assert before is not None and before.timeline == {}
    t = _task()
    t.timeline = {"accept": -1.5}
    s.insert_task(t)
    t.timings, t.timeline = {"images": 3.0}, {"accept": -1.5, "images": 7.25}
    s.update_task(t)
    s.close()
    again = Store(db).get_task("t1")
    assert again is not None and again.timeline == {"accept": -1.5, "images": 7.25}
    assert again.to_dict()["timeline"] == again.timeline
