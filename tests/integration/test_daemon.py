"""The agent process itself: private state files, one agent per state dir, a damaged store,
and API input that is too deep, too large or cut off."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

from conftest import launch_agent, start_agent, stop_agent
from support import WAIT_FOREVER, Agent, busybox_task, write_taskdef

DEEP = 100_000


def _modes(root: Path) -> dict[str, int]:
    """Every directory and file under root (root included), relative path -> permission bits."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode) or stat.S_ISSOCK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
                continue
            out[str(p.relative_to(root))] = stat.S_IMODE(st.st_mode)
    return out


def _assert_private(state: dict[str, int], run: dict[str, int]) -> None:
    """The state and run dirs and the store are the agent's alone. Task dirs are made for
    containers (bind-mounted hosts, resolv.conf, volumes) and sit inside the 0700 tasks dir;
    container logs are the shim's (0750 dirs, 0640 files) inside the 0700 logs dir."""
    assert state["."] == 0o700 and run["."] == 0o700, (state, run)
    for d in ("logs", "tasks", "secrets"):
        if d in state:
            assert state[d] == 0o700, (d, oct(state[d]))
    for name in ("state.db", "state.db-wal", "state.db-shm", "agent.log", "agent.lock"):
        if name in state:
            assert state[name] == 0o600, (name, oct(state[name]))
    for path, mode in {**state, **run}.items():
        if path.startswith(("tasks/", "logs/")):
            continue  # containers need these (tasks) / the shim owns these (logs)
        assert not mode & 0o077, f"{path} is {oct(mode)}"
    assert "state.db-wal" in state  # the WAL holds task definitions and -e values


class _Detached:
    """The part of Popen that stop_agent uses, for an agent started with --detach."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not Path(f"/proc/{self.pid}").exists():
            self.returncode = 0
        elif self.returncode is None:
            with open(f"/proc/{self.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    self.returncode = 0
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (timeout or 60)
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("agent", timeout or 60)
            time.sleep(0.05)
        return 0


def _run_dir(a: Agent) -> Path:
    return Path(a.socket).parent


def test_state_files_are_private_from_the_first_run(tmp_path: Path) -> None:
    a, proc, base = start_agent()
    try:
        td = write_taskdef(tmp_path, busybox_task("private", ["sh", "-c", WAIT_FOREVER]))
        task_id = a.cli("run", "-d", "-e", "TOKEN=hunter2", td, check=True).stdout.strip()
        a.wait_status(task_id, "RUNNING")
        state, run = _modes(a.state_dir), _modes(_run_dir(a))
        _assert_private(state, run)
        logs = {p: oct(m) for p, m in state.items() if p.startswith("logs/")}
        print("container log modes:", logs)
        a.cli("stop", "-t", "0", task_id, check=True)

        # Again from nothing, the way a user starts it: `nstask agent --detach`, which opens
        # agent.log in the state dir before the agent runs.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        shutil.rmtree(a.state_dir)
        shutil.rmtree(_run_dir(a))
        args, env = a.launch
        out = subprocess.run(
            [*args, "--detach"], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        detached = _Detached(int(out.stdout.strip()))
        proc = detached  # type: ignore[assignment]
        task_id = a.cli("run", "-d", "-e", "TOKEN=hunter2", td, check=True).stdout.strip()
        a.wait_status(task_id, "RUNNING")
        state, run = _modes(a.state_dir), _modes(_run_dir(a))
        assert "agent.log" in state
        _assert_private(state, run)
        a.cli("stop", "-t", "0", task_id, check=True)

        # Modes someone loosened (or an older nstask left) are fixed at start, with a warning.
        detached.send_signal(signal.SIGTERM)
        detached.wait(timeout=20)
        os.chmod(a.state_dir, 0o755)
        os.chmod(a.state_dir / "state.db", 0o644)
        os.chmod(a.state_dir / "agent.log", 0o644)
        os.chmod(_run_dir(a), 0o755)
        proc = launch_agent(a)
        _assert_private(_modes(a.state_dir), _modes(_run_dir(a)))
        log = a.log_path.read_text()
        for path, old in (
            (a.state_dir, "0o755"),
            (a.state_dir / "state.db", "0o644"),
            (a.state_dir / "agent.log", "0o644"),
            (_run_dir(a), "0o755"),
        ):
            assert any(
                "mode_fixed" in line and f"path='{path}'" in line and f"old_mode='{old}'" in line
                for line in log.splitlines()
            ), log
    finally:
        stop_agent(a, proc, base)


def test_a_second_agent_on_the_same_state_dir_exits_and_leaves_the_first_alone(
    tmp_path: Path,
) -> None:
    a, proc, base = start_agent()
    try:
        td = write_taskdef(tmp_path, busybox_task("single", ["sh", "-c", WAIT_FOREVER]))
        task_id = a.cli("run", "-d", td, check=True).stdout.strip()
        a.wait_status(task_id, "RUNNING")
        args, env = a.launch
        second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=20)
        assert second.returncode != 0
        assert f"pid {proc.pid}" in second.stderr and str(a.state_dir) in second.stderr
        assert "Traceback" not in second.stderr

        # Another state dir but the same socket: it must not take the socket either.
        other = base / "other-state"
        i = args.index("--state-dir")
        args2 = [*args[: i + 1], str(other), *args[i + 2 :]]
        j = args2.index("--run-dir")
        args2[j + 1] = str(base / "other-run")
        third = subprocess.run(args2, env=env, capture_output=True, text=True, timeout=20)
        assert third.returncode != 0
        assert a.socket in third.stderr and "Traceback" not in third.stderr

        assert Path(a.socket).exists()
        assert a.inspect(task_id)["lastStatus"] == "RUNNING"
        assert a.cli("stop", "-t", "0", task_id, check=True).returncode == 0
        assert a.inspect(task_id)["lastStatus"] == "STOPPED"
    finally:
        stop_agent(a, proc, base)


def test_a_damaged_store_stops_the_agent_with_a_way_forward(tmp_path: Path) -> None:
    a, proc, base = start_agent()
    try:
        # Enough records that the tables span many pages.
        env = [f"{'K' * 8}{i}={'v' * 2000}" for i in range(20)]
        td = busybox_task("damaged", ["true"], environment=[])
        path = write_taskdef(tmp_path, td)
        for _ in range(6):
            args = ["run", "-d"]
            for e in env:
                args += ["-e", e]
            task_id = a.cli(*args, path, check=True).stdout.strip()
            a.wait_status(task_id, "STOPPED")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        db = a.state_dir / "state.db"
        size = db.stat().st_size
        assert size > 16 * 4096, size
        with open(db, "r+b") as f:
            f.seek((size // 4096 // 2) * 4096)
            f.write(os.urandom(4096 * 2))
        offset = a.log_path.stat().st_size
        args, env_ = a.launch
        with open(a.log_path, "ab") as log:
            broken = subprocess.Popen(args, env=env_, stdout=log, stderr=log)
            code = broken.wait(timeout=30)
        assert code != 0
        text = a.log_path.read_bytes()[offset:].decode()
        assert "Traceback" not in text, text
        assert str(db) in text and "nstask gc --dry-run" in text and "aside" in text, text
    finally:
        stop_agent(a, proc, base)


# -- API input --------------------------------------------------------------------------------
def _raw(a: Agent, method: str, path: str, body: bytes) -> tuple[int, dict[str, object]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(a.socket)
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        s.sendall(head + body)  # the agent may answer before the whole body is in
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    status_line, _, rest = data.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(payload)


def test_deeply_nested_json_is_bad_input(agent: Agent, tmp_path: Path) -> None:
    deep = b'{"definition": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    status, body = _raw(agent, "POST", "/v1/tasks", deep)
    assert status == 400 and "deep" in str(body["message"]), body
    # Below Python's recursion limit but deeper than any task definition.
    mid = b'{"definition": {"family": "x", "containerDefinitions": ' + b"[" * 500 + b"]" * 500
    status, body = _raw(agent, "POST", "/v1/tasks", mid + b"}}")
    assert status == 400 and "deep" in str(body["message"]), body

    f = tmp_path / "deep.json"
    f.write_text('{"family": "x", "containerDefinitions": ' + "[" * DEEP + "]" * DEEP + "}")
    for cmd in (["run", "-d", str(f)], ["validate", str(f)]):
        out = agent.cli(*cmd)
        assert out.returncode == 2, (cmd, out.stderr)
        assert "Traceback" not in out.stderr and "deep" in out.stderr, out.stderr


def test_a_body_over_the_limit_is_refused_with_the_limit_named(
    agent: Agent, tmp_path: Path
) -> None:
    from agent.errors import MAX_REQUEST_BYTES

    assert MAX_REQUEST_BYTES >= 64 * 1024 + 8 * 1024  # ECS: 64 KiB definition, 8 KiB overrides
    big = b'{"definition": {"family": "' + b"x" * 50_000_000 + b'"}}'  # 50 MB
    status, body = _raw(agent, "POST", "/v1/tasks", big)
    assert status == 413, body
    message = str(body["message"])
    assert str(MAX_REQUEST_BYTES) in message, message

    td = busybox_task("big", ["true"])
    td["containerDefinitions"][0]["environment"] = [  # type: ignore[index]
        {"name": "PAD", "value": "x" * (MAX_REQUEST_BYTES + 1)}
    ]
    path = write_taskdef(tmp_path, td)
    for cmd in (["run", "-d", path], ["validate", path]):
        out = agent.cli(*cmd)
        assert out.returncode == 2, (cmd, out.stdout, out.stderr)
        assert str(MAX_REQUEST_BYTES) in out.stderr and "Traceback" not in out.stderr
    assert not agent.cli("ps", "-a", "-q").stdout.count("big")


def test_a_client_that_goes_away_mid_body_is_a_normal_event(agent: Agent) -> None:
    offset = agent.log_path.stat().st_size
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(agent.socket)
    s.sendall(
        b"POST /v1/tasks HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: 400000\r\n\r\n" + b'{"definition": "' + b"x" * 200_000
    )
    time.sleep(0.2)
    s.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = agent.log_path.read_bytes()[offset:].decode()
        if "client_disconnected" in text:
            break
        time.sleep(0.05)
    assert "client_disconnected" in text, text
    assert "api_internal_error" not in text and "Traceback" not in text, text
    assert agent.cli("ps").returncode == 0


def test_damage_found_while_running_is_a_json_error_with_the_way_forward(
    agent: Agent, tmp_path: Path
) -> None:
    """Page damage is found at start (quick_check); what a running agent can still meet is a
    record whose bytes went bad. Made here through SQLite, so the agent's page cache sees it."""
    import sqlite3

    path = write_taskdef(tmp_path, busybox_task("damaged", ["true"]))
    broken = []
    for _ in range(2):
        broken.append(agent.cli("run", "-d", path, check=True).stdout.strip())
        agent.wait_status(broken[-1], "STOPPED")
    db = agent.state_dir / "state.db"
    offset = agent.log_path.stat().st_size
    for column, value in (("definition", "'{not json'"), ("overrides", "CAST(x'a5a5' AS TEXT)")):
        task_id = broken.pop()
        with contextlib.closing(sqlite3.connect(db, timeout=10)) as c:
            c.execute(f"UPDATE tasks SET {column}={value} WHERE id=?", (task_id,))
            c.commit()
        status, body = _raw(agent, "GET", f"/v1/tasks/{task_id}", b"")
        assert status == 500 and body["error"] == "state_error", body
        assert str(db) in str(body["message"]) and "aside" in str(body["message"]), body
        out = agent.cli("ps", "-a")
        assert out.returncode == 1 and "nstask gc --dry-run" in out.stderr, out.stderr
        with contextlib.closing(sqlite3.connect(db, timeout=10)) as c:
            c.execute("DELETE FROM containers WHERE task_id=?", (task_id,))
            c.execute("DELETE FROM tasks WHERE id=?", (task_id,))
            c.commit()
    text = agent.log_path.read_bytes()[offset:].decode()
    assert "Traceback" not in text, text
    assert agent.cli("ps", "-a").returncode == 0
