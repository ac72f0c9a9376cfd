"""The agent's state store: SQLite in WAL mode under the state dir.

Three tables: tasks, containers, and resources. A resource row (netns, CNI attachment,
lease, snapshot, container, task, log dir) is written as an *intent* before the host is
changed, marked `created` after, and deleted once removed, so that an agent that dies at any
point finds on its next start exactly what it may have left behind.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import StateError

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    family TEXT NOT NULL,
    definition TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    overrides TEXT NOT NULL DEFAULT '{}',
    last_status TEXT NOT NULL,
    desired_status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    stopped_at REAL,
    stop_reason TEXT,
    netns TEXT,
    ip TEXT,
    timings TEXT NOT NULL DEFAULT '{}',
    ports TEXT NOT NULL DEFAULT '[]',
    timeline TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS containers (
    task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    containerd_id TEXT NOT NULL UNIQUE,
    image TEXT NOT NULL,
    image_digest TEXT,
    last_status TEXT NOT NULL,
    exit_code INTEGER,
    pid INTEGER,
    started_at REAL,
    finished_at REAL,
    log_path TEXT NOT NULL,
    essential INTEGER NOT NULL,
    health TEXT,
    reason TEXT,
    stop_signal INTEGER,
    PRIMARY KEY (task_id, name)
);
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    task_id TEXT NOT NULL,
    state TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    PRIMARY KEY (kind, key)
);
"""

# Columns added after the first release, for stores created before them.
MIGRATIONS = (
    ("tasks", "ports", "TEXT NOT NULL DEFAULT '[]'"),
    ("containers", "health", "TEXT"),
    ("containers", "reason", "TEXT"),
    ("containers", "stop_signal", "INTEGER"),
    # agent.metadata: the unguessable ids in a container's metadata URI and a task's
    # credentials URI (kept so a restarted agent answers the same URIs).
    ("containers", "metadata_id", "TEXT"),
    ("tasks", "credentials_id", "TEXT"),
    ("tasks", "pull_started_at", "REAL"),
    ("tasks", "pull_stopped_at", "REAL"),
    ("containers", "created_at", "REAL"),
    ("tasks", "timeline", "TEXT NOT NULL DEFAULT '{}'"),
    ("containers", "restart_count", "INTEGER NOT NULL DEFAULT 0"),  # restartPolicy (issue 12)
)


@dataclass
class ContainerRecord:
    task_id: str
    name: str
    position: int
    containerd_id: str
    image: str
    log_path: str
    essential: bool
    last_status: str = "PENDING"
    image_digest: str | None = None
    exit_code: int | None = None
    pid: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    health: str | None = None
    reason: str | None = None
    stop_signal: int | None = None
    metadata_id: str | None = None  # never in to_dict: it is a capability
    created_at: float | None = None  # containerd container created (metadata CreatedAt)
    restart_count: int = 0  # restartPolicy: restarts in place (agent.lifecycle.restart)

    def to_dict(self) -> dict[str, Any]:
        return {
            "health": self.health,
            "reason": self.reason,
            "name": self.name,
            "containerdId": self.containerd_id,
            "image": self.image,
            "imageDigest": self.image_digest,
            "lastStatus": self.last_status,
            "exitCode": self.exit_code,
            "pid": self.pid,
            "essential": self.essential,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "logPath": self.log_path,
            "restartCount": self.restart_count,
        }


@dataclass
class TaskRecord:
    id: str
    family: str
    definition: dict[str, Any]
    last_status: str
    desired_status: str
    created_at: float
    source: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    started_at: float | None = None
    stopped_at: float | None = None
    stop_reason: str | None = None
    netns: str | None = None
    ip: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    ports: list[dict[str, Any]] = field(default_factory=list)
    # When each phase of `timings` began: ms after created_at (runtime.phase records both).
    timeline: dict[str, float] = field(default_factory=dict)
    containers: list[ContainerRecord] = field(default_factory=list)
    credentials_id: str | None = None  # never in to_dict: it unlocks the role's credentials
    pull_started_at: float | None = None  # the images step (metadata PullStartedAt/StoppedAt)
    pull_stopped_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "family": self.family,
            "lastStatus": self.last_status,
            "desiredStatus": self.desired_status,
            "createdAt": self.created_at,
            "startedAt": self.started_at,
            "stoppedAt": self.stopped_at,
            "stopReason": self.stop_reason,
            "netns": self.netns,
            "ip": self.ip,
            "networkMode": self.definition.get("networkMode", "awsvpc"),
            "source": self.source,
            "timings": self.timings,
            "timeline": self.timeline,
            "ports": self.ports,
            "exitCode": self.exit_code,
            "containers": [c.to_dict() for c in self.containers],
        }

    @property
    def exit_code(self) -> int | None:
        """The task's exit code: the first essential container's (what `run` exits with)."""
        for c in self.containers:
            if c.essential and c.exit_code is not None:
                return c.exit_code
        for c in self.containers:
            if c.exit_code is not None:
                return c.exit_code
        return None


@dataclass(frozen=True)
class Resource:
    kind: str
    key: str
    task_id: str
    state: str
    data: dict[str, Any]


class Store:
    """A thin, synchronous layer over SQLite (calls are short; the agent calls them inline)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._guard():
            # Created 0600 before SQLite opens it: SQLite gives the -wal and -shm files the
            # database file's mode, and the WAL holds task definitions and `-e` values.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL, not FULL: in WAL mode a commit then survives the agent's crash (the
            # failure recovery is for) without an fsync per commit. FULL cost 2.5 ms of
            # blocking fsync per commit here, dozens per task, all on the event loop. What
            # a power loss can take, the last commits, goes with what a reboot clears anyway
            # (netns, links, rules, running tasks); objects left in containerd or the CNI
            # cache by an intent lost that way are found by `nstask gc` by their labels/ids.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            # Damage in the middle of the file shows only when that page is read: look at
            # every page now, so a damaged store stops the agent at start, not mid-task.
            problems = [r[0] for r in self.db.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems))
            self.db.executescript(SCHEMA)
            self._migrate()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Every SQLite error of the store becomes a StateError here, naming the file, what is
        wrong and, for a damaged file, the way forward."""
        try:
            yield
        except sqlite3.OperationalError as e:
            # SQLite's own (locked, disk full, read-only, I/O error): the file may be fine.
            # Without an SQLite error code it is Python's: text that is not UTF-8.
            if getattr(e, "sqlite_errorcode", None) is None:
                raise self._damaged(e) from e
            raise StateError(f"the state store {self.path} failed: {e}", path=str(self.path)) from e
        except (sqlite3.DatabaseError, json.JSONDecodeError) as e:  # CORRUPT, NOTADB, bad JSON
            raise self._damaged(e) from e

    def _damaged(self, e: Exception) -> StateError:
        return StateError(
            f"the state store {self.path} is damaged: {e}. Stop the agent, move {self.path}"
            " (with its -wal and -shm files) aside and start the agent again: it starts"
            " with an empty store. That store does not know the tasks this host may still"
            " run; `nstask gc --dry-run` shows what the host holds, `nstask gc` removes it.",
            path=str(self.path),
        )

    def _migrate(self) -> None:
        for table, column, decl in MIGRATIONS:
            have = {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._guard():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # -- tasks ---------------------------------------------------------------------------
    def insert_task(self, t: TaskRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO tasks (id, family, definition, source, overrides, last_status,"
                " desired_status, created_at, timings, credentials_id, timeline)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    t.id,
                    t.family,
                    json.dumps(t.definition),
                    t.source,
                    json.dumps(t.overrides),
                    t.last_status,
                    t.desired_status,
                    t.created_at,
                    json.dumps(t.timings),
                    t.credentials_id,
                    json.dumps(t.timeline),
                ),
            )
            for c in t.containers:
                db.execute(
                    "INSERT INTO containers (task_id, name, position, containerd_id, image,"
                    " last_status, log_path, essential, metadata_id) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        t.id,
                        c.name,
                        c.position,
                        c.containerd_id,
                        c.image,
                        c.last_status,
                        c.log_path,
                        int(c.essential),
                        c.metadata_id,
                    ),
                )

    def update_task(self, t: TaskRecord) -> None:
        """The task's own fields. Containers are written one at a time (update_container):
        their state changes come from several places (start, exit events, health checks)
        and a stale copy of the task must never overwrite them."""
        with self._tx() as db:
            db.execute(
                "UPDATE tasks SET last_status=?, desired_status=?, started_at=?, stopped_at=?,"
                " stop_reason=?, netns=?, ip=?, timings=?, ports=?, pull_started_at=?,"
                " pull_stopped_at=?, timeline=? WHERE id=?",
                (
                    t.last_status,
                    t.desired_status,
                    t.started_at,
                    t.stopped_at,
                    t.stop_reason,
                    t.netns,
                    t.ip,
                    json.dumps(t.timings),
                    json.dumps(t.ports),
                    t.pull_started_at,
                    t.pull_stopped_at,
                    json.dumps(t.timeline),
                    t.id,
                ),
            )

    def update_container(self, c: ContainerRecord) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE containers SET last_status=?, exit_code=?, pid=?, started_at=?,"
                " finished_at=?, image_digest=?, health=?, reason=?, stop_signal=?,"
                " created_at=?, restart_count=? WHERE task_id=? AND name=?",
                (
                    c.last_status,
                    c.exit_code,
                    c.pid,
                    c.started_at,
                    c.finished_at,
                    c.image_digest,
                    c.health,
                    c.reason,
                    c.stop_signal,
                    c.created_at,
                    c.restart_count,
                    c.task_id,
                    c.name,
                ),
            )

    def delete_task(self, task_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM containers WHERE task_id=?", (task_id,))
            db.execute("DELETE FROM tasks WHERE id=?", (task_id,))

    def get_task(self, task_id: str) -> TaskRecord | None:
        with self._guard():
            row = self.db.execute("SELECT * FROM tasks WHERE id=?", (task_id,)).fetchone()
            return self._task(row) if row else None

    def list_tasks(self) -> list[TaskRecord]:
        with self._guard():
            rows = self.db.execute("SELECT * FROM tasks ORDER BY created_at").fetchall()
            return [self._task(r) for r in rows]

    def _task(self, row: sqlite3.Row) -> TaskRecord:
        crows = self.db.execute(
            "SELECT * FROM containers WHERE task_id=? ORDER BY position", (row["id"],)
        ).fetchall()
        return TaskRecord(
            id=row["id"],
            family=row["family"],
            definition=json.loads(row["definition"]),
            source=row["source"],
            overrides=json.loads(row["overrides"]),
            last_status=row["last_status"],
            desired_status=row["desired_status"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            stopped_at=row["stopped_at"],
            stop_reason=row["stop_reason"],
            netns=row["netns"],
            ip=row["ip"],
            timings=json.loads(row["timings"]),
            ports=json.loads(row["ports"]),
            credentials_id=row["credentials_id"],
            pull_started_at=row["pull_started_at"],
            pull_stopped_at=row["pull_stopped_at"],
            timeline=json.loads(row["timeline"]),
            containers=[
                ContainerRecord(
                    task_id=c["task_id"],
                    name=c["name"],
                    position=c["position"],
                    containerd_id=c["containerd_id"],
                    image=c["image"],
                    image_digest=c["image_digest"],
                    last_status=c["last_status"],
                    exit_code=c["exit_code"],
                    pid=c["pid"],
                    started_at=c["started_at"],
                    finished_at=c["finished_at"],
                    log_path=c["log_path"],
                    essential=bool(c["essential"]),
                    health=c["health"],
                    reason=c["reason"],
                    stop_signal=c["stop_signal"],
                    metadata_id=c["metadata_id"],
                    created_at=c["created_at"],
                    restart_count=c["restart_count"] or 0,
                )
                for c in crows
            ],
        )

    # -- resources (intents) -------------------------------------------------------------
    def intend(self, kind: str, key: str, task_id: str, **data: Any) -> None:
        """Record that `kind/key` is about to be created for `task_id`, before the host changes."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO resources (kind, key, task_id, state, data, created_at)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT(kind, key) DO UPDATE SET"
                " state='intent', data=excluded.data, task_id=excluded.task_id",
                (kind, key, task_id, "intent", json.dumps(data), time.time()),
            )

    def created(self, kind: str, key: str, **data: Any) -> None:
        with self._tx() as db:
            if data:
                db.execute(
                    "UPDATE resources SET state='created', data=? WHERE kind=? AND key=?",
                    (json.dumps(data), kind, key),
                )
            else:
                db.execute(
                    "UPDATE resources SET state='created' WHERE kind=? AND key=?", (kind, key)
                )

    def removed(self, kind: str, key: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM resources WHERE kind=? AND key=?", (kind, key))

    def reassign(
        self, kinds_keys: Sequence[tuple[str, str]], from_task_id: str, new_task_id: str
    ) -> bool:
        """Give the resource rows `kinds_keys` of `from_task_id` to `new_task_id`, all or none,
        in one transaction (a warm pool entry taken by a task). False when any row is gone or
        no longer `from_task_id`'s (taken already): then nothing changed."""

        class _Lost(Exception):
            pass

        try:
            with self._tx() as db:
                for kind, key in kinds_keys:
                    cur = db.execute(
                        "UPDATE resources SET task_id=? WHERE kind=? AND key=? AND task_id=?",
                        (new_task_id, kind, key, from_task_id),
                    )
                    if cur.rowcount != 1:
                        raise _Lost
        except _Lost:
            return False
        return True

    def resources(self, task_id: str | None = None) -> list[Resource]:
        with self._guard():
            if task_id is None:
                rows = self.db.execute("SELECT * FROM resources ORDER BY created_at").fetchall()
            else:
                rows = self.db.execute(
                    "SELECT * FROM resources WHERE task_id=? ORDER BY created_at", (task_id,)
                ).fetchall()
            return [
                Resource(r["kind"], r["key"], r["task_id"], r["state"], json.loads(r["data"]))
                for r in rows
            ]
