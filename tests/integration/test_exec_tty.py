"""`nstask exec -it` / `-i` on the real stack, driven through a real terminal (tmux): typing,
the pty's size and resizes, Ctrl-C and Ctrl-D reaching the process, exit codes, the local
terminal restored, and the exec's processes gone when the client goes away."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import NSTASK, TEST_IMAGE, WAIT_FOREVER, Agent, leaks, write_taskdef

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="needs tmux (Debian package tmux; bootstrap --test)"
)


class Tmux:
    """One tmux server of our own (its socket in the test's directory), one detached
    session in it."""

    def __init__(self, workdir: Path) -> None:
        self.name = f"nstask-exec-{uuid.uuid4().hex[:8]}"
        self.socket = str(workdir / "tmux.sock")

    def run(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", self.socket, *args], check=True, capture_output=True, text=True
        ).stdout

    def start(self, command: str, *, columns: int = 100, rows: int = 30) -> None:
        # remain-on-exit: the pane stays to be looked at when the command has ended.
        self.run(
            "-f", "/dev/null", "start-server", ";", "set-option", "-g", "remain-on-exit", "on",
            ";", "new-session", "-d", "-s", self.name, "-x", str(columns), "-y", str(rows),
            command,
        )  # fmt: skip

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.name, *keys)

    def type(self, text: str) -> None:
        self.run("send-keys", "-t", self.name, "-l", text)
        self.keys("Enter")

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.name)

    def wait_for(self, check: Callable[[str], bool], what: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if check(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} never showed; the screen:\n{screen}")
            time.sleep(0.05)

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True)
        Path(self.socket).unlink(missing_ok=True)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    t = Tmux(tmp_path)
    try:
        yield t
    finally:
        t.kill()


def start_task(agent: Agent, tmp_path: Path, **extra: Any) -> str:
    td: dict[str, Any] = {
        "family": "exectty",
        "containerDefinitions": [
            {
                "name": "app",
                "image": TEST_IMAGE,
                "essential": True,
                "command": ["sh", "-c", WAIT_FOREVER],
                **extra,
            }
        ],
    }
    task_id = agent.cli("run", "-d", write_taskdef(tmp_path, td), check=True).stdout.strip()
    agent.wait_status(task_id, "RUNNING")
    return task_id


def session_command(agent: Agent, tmp_path: Path, task_id: str, *args: str) -> str:
    """A shell line for tmux: the terminal's settings before and after `nstask exec -it`,
    and its exit code, into files."""
    nstask = shlex.join(
        ["env", f"NSTASK_SOCKET={agent.socket}", NSTASK, "exec", "-it", task_id, "--", *args]
    )
    # The client's own pid into client.pid (sh's $$, then exec).
    client = f"sh -c 'echo $$ > client.pid; exec \"$@\"' sh {nstask}"
    return (
        f"cd {shlex.quote(str(tmp_path))}; stty -g > before; "
        f"{client} 2> client.err; echo $? > rc; stty -g > after; sleep 600"
    )


def wait_file(path: Path, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path.name} was never written"
        time.sleep(0.05)
    return path.read_text().strip()


def exec_fifos(agent: Agent, task_id: str) -> list[Path]:
    d = agent.state_dir / "tasks" / task_id / "exec"
    return sorted(d.iterdir()) if d.is_dir() else []


def finish(agent: Agent, task_id: str) -> None:
    agent.cli("stop", "-t", "0", task_id)
    agent.cli("rm", task_id, check=True)
    assert not leaks(agent)


def processes(agent: Agent, task_id: str) -> str:
    return agent.cli("exec", task_id, "--", "ps", "-o", "pid,args", check=True).stdout


def wait_process(agent: Agent, task_id: str, text: str, what: str) -> None:
    """Until a process whose command line holds `text` runs in the task."""
    deadline = time.monotonic() + 15
    while text not in processes(agent, task_id):
        assert time.monotonic() < deadline, f"{what} never started"
        time.sleep(0.1)


def wait_no_process(agent: Agent, task_id: str, text: str, what: str) -> None:
    """Until no process whose command line holds `text` runs in the task."""
    deadline = time.monotonic() + 15
    while text in (ps := processes(agent, task_id)):
        assert time.monotonic() < deadline, f"{what}:\n{ps}"
        time.sleep(0.1)


def test_a_shell_in_a_terminal(agent: Agent, tmp_path: Path, tmux: Tmux) -> None:
    task_id = start_task(agent, tmp_path)
    try:
        tmux.start(session_command(agent, tmp_path, task_id, "sh"), columns=100, rows=30)
        tmux.wait_for(lambda s: "#" in s or "$" in s, "the shell's prompt")
        # Typing echoes (the pty's echo), and the command's output follows.
        tmux.type("echo typed-$((6*7))")
        screen = tmux.wait_for(lambda s: "typed-42" in s.split("echo typed-")[-1], "the output")
        assert "echo typed-$((6*7))" in screen
        # The pty has the terminal's size, and follows a resize.
        tmux.type("stty size")
        tmux.wait_for(lambda s: "30 100" in s, "stty size 30 100")
        tmux.run("resize-window", "-t", tmux.name, "-x", "120", "-y", "40")
        tmux.type("stty size")
        tmux.wait_for(lambda s: "40 120" in s, "stty size 40 120 after the resize")
        # Ctrl-C interrupts the foreground command, not the shell.
        tmux.type("sleep 100; echo sleep-ended-$?")
        time.sleep(0.3)
        tmux.keys("C-c")
        tmux.type("echo shell-alive")
        tmux.wait_for(lambda s: "shell-alive\n" in s.split("echo shell-alive")[-1] + "\n", "alive")
        assert "sleep-ended" not in tmux.screen().replace("echo sleep-ended", "")
        # Ctrl-D is the end of input for cat.
        tmux.type("cat; echo cat-ended")
        tmux.type("line-for-cat")
        tmux.keys("C-d")
        tmux.wait_for(lambda s: "\ncat-ended" in s, "cat ending at Ctrl-D")
        assert exec_fifos(agent, task_id), "the exec's FIFOs live in the task's directory"
        # The exit code is nstask's, and the local terminal is as it was.
        tmux.type("exit 3")
        assert wait_file(tmp_path / "rc") == "3", (tmp_path / "client.err").read_text()
        assert wait_file(tmp_path / "after") == wait_file(tmp_path / "before")
        assert exec_fifos(agent, task_id) == []
    finally:
        finish(agent, task_id)


def test_stdin_piped_without_a_terminal(agent: Agent, tmp_path: Path) -> None:
    task_id = start_task(agent, tmp_path)
    try:
        proc = agent.cli("exec", "-i", task_id, "--", "cat", input="hi\n")
        assert (proc.returncode, proc.stdout) == (0, "hi\n"), proc.stderr
        big = "".join(f"line {i}\n" for i in range(20000))  # more than a pipe holds
        proc = agent.cli("exec", "-i", task_id, "--", "wc", "-l", input=big)
        assert proc.stdout.split() == ["20000"], proc.stderr
        # stderr stays apart without a terminal; -e, --workdir and --user apply.
        proc = agent.cli(
            "exec", "-i", "-e", "GREETING=hello", "-w", "/tmp", "-u", "65534:65534", task_id,
            "--", "sh", "-c", 'echo "$GREETING $(pwd) $(id -u):$(id -g)"; echo err >&2; exit 5',
            input="",
        )  # fmt: skip
        assert (proc.returncode, proc.stdout) == (5, "hello /tmp 65534:65534\n")
        assert proc.stderr == "err\n"
        bad = agent.cli("exec", "-i", "-w", "tmp", task_id, "--", "true", input="")
        assert bad.returncode == 2 and "absolute" in bad.stderr
        bad = agent.cli("exec", "-i", "-u", "nosuchuser", task_id, "--", "true", input="")
        assert bad.returncode == 2 and "nosuchuser" in bad.stderr
        # A command that is not there: a message naming it, nothing left behind.
        bad = agent.cli("exec", "-i", task_id, "--", "nosuchcommand", input="")
        assert bad.returncode != 0 and "nosuchcommand" in bad.stderr, bad
        # -t without -i: a terminal, no input.
        tty = agent.cli("exec", "-t", task_id, "--", "sh", "-c", "tty; echo two")
        assert tty.returncode == 0 and tty.stdout.startswith("/dev/pts/"), tty
        assert tty.stdout.endswith("two\n")
        assert exec_fifos(agent, task_id) == []
    finally:
        finish(agent, task_id)


def test_the_task_stopped_mid_session_restores_the_terminal(
    agent: Agent, tmp_path: Path, tmux: Tmux
) -> None:
    task_id = start_task(agent, tmp_path)
    try:
        tmux.start(session_command(agent, tmp_path, task_id, "sh"))
        tmux.wait_for(lambda s: "#" in s or "$" in s, "the shell's prompt")
        agent.cli("stop", "-t", "0", task_id, check=True)
        assert wait_file(tmp_path / "rc") != "0"
        assert wait_file(tmp_path / "after") == wait_file(tmp_path / "before")
    finally:
        finish(agent, task_id)


def test_a_signal_to_the_client_restores_the_terminal(
    agent: Agent, tmp_path: Path, tmux: Tmux
) -> None:
    task_id = start_task(agent, tmp_path)
    try:
        tmux.start(session_command(agent, tmp_path, task_id, "sh"))
        tmux.wait_for(lambda s: "#" in s or "$" in s, "the shell's prompt")
        os.kill(int(wait_file(tmp_path / "client.pid")), 15)
        assert wait_file(tmp_path / "rc") == "143"
        assert wait_file(tmp_path / "after") == wait_file(tmp_path / "before")
        deadline = time.monotonic() + 5
        while exec_fifos(agent, task_id):
            assert time.monotonic() < deadline, f"FIFOs left: {exec_fifos(agent, task_id)}"
            time.sleep(0.1)
    finally:
        finish(agent, task_id)


def test_the_exec_is_killed_when_the_client_goes_away(
    agent: Agent, tmp_path: Path, tmux: Tmux
) -> None:
    task_id = start_task(agent, tmp_path)
    try:
        tmux.start(session_command(agent, tmp_path, task_id, "sh", "-c", "sleep 1001 & sleep 1002"))
        client = int(wait_file(tmp_path / "client.pid"))
        wait_process(agent, task_id, "sleep 1001", "the exec's processes")
        os.kill(client, 9)
        wait_no_process(agent, task_id, "sleep 100", "the exec outlived its client")
        # Without a terminal (no hangup for the children when it closes) too.
        piped = subprocess.Popen(
            [NSTASK, "exec", "-i", task_id, "--", "sh", "-c", "sleep 1003 & sleep 1004"],
            env=agent.env(),
            stdin=subprocess.PIPE,
        )
        try:
            wait_process(agent, task_id, "sleep 1003", "the piped exec's processes")
        finally:
            piped.kill()
            piped.wait()
            assert piped.stdin is not None
            piped.stdin.close()
        wait_no_process(agent, task_id, "sleep 100", "the piped exec outlived its client")
        deadline = time.monotonic() + 5
        while exec_fifos(agent, task_id):
            assert time.monotonic() < deadline, f"FIFOs left: {exec_fifos(agent, task_id)}"
            time.sleep(0.1)
    finally:
        finish(agent, task_id)


def log_entries(agent: Agent, task_id: str, name: str) -> list[dict[str, Any]]:
    """The container's json-file log entries (stream and line)."""
    import json

    t = agent.inspect(task_id)
    path = next(c["logPath"] for c in t["containers"] if c["name"] == name)
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def wait_log(agent: Agent, task_id: str, text: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while text not in (out := agent.cli("logs", task_id, check=True).stdout):
        assert time.monotonic() < deadline, f"{text!r} never appeared in the logs: {out!r}"
        time.sleep(0.05)
    return out


def test_pseudo_terminal_and_interactive_for_the_main_process(agent: Agent, tmp_path: Path) -> None:
    script = (
        "tty; [ -t 0 ] && echo stdin-is-a-tty; echo to-stderr >&2; "
        "read line; echo read-returned; " + WAIT_FOREVER
    )
    task_id = start_task(agent, tmp_path, command=["sh", "-c", script], pseudoTerminal=True)
    try:
        out = wait_log(agent, task_id, "to-stderr")
        assert "/dev/pts/" in out and "stdin-is-a-tty" in out
        entries = log_entries(agent, task_id, "app")
        # One stream, the terminal's, on stdout (as Docker logs a tty container).
        assert {e["stream"] for e in entries} == {"stdout"}
        # stdin is the terminal: open, read waits (no EOF), as with docker run -t.
        time.sleep(1)
        assert "read-returned" not in agent.cli("logs", task_id, check=True).stdout
    finally:
        finish(agent, task_id)
    # interactive + pseudoTerminal, as `docker run -dit busybox sh`: the shell runs on.
    task_id = start_task(agent, tmp_path, command=["sh"], interactive=True, pseudoTerminal=True)
    try:
        time.sleep(1)
        assert agent.inspect(task_id)["lastStatus"] == "RUNNING"
        assert agent.cli("exec", task_id, "--", "echo", "ok", check=True).stdout == "ok\n"
    finally:
        finish(agent, task_id)
    # Neither: stdin is empty, the same read ends at once.
    task_id = start_task(
        agent, tmp_path, command=["sh", "-c", "read line; echo read-returned; " + WAIT_FOREVER]
    )
    try:
        wait_log(agent, task_id, "read-returned")
    finally:
        finish(agent, task_id)


def test_execs_left_by_a_killed_agent_are_removed_at_its_next_start(tmp_path: Path) -> None:
    from conftest import launch_agent, start_agent, stop_agent

    a, proc, base = start_agent()
    try:
        task_id = start_task(a, tmp_path)
        client = subprocess.Popen(
            [NSTASK, "exec", "-i", task_id, "--", "sh", "-c", "sleep 1007 & sleep 1008"],
            env=a.env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_process(a, task_id, "sleep 1007", "the exec's processes")
            assert exec_fifos(a, task_id)
            proc.kill()  # the agent dies mid-session: nobody kills the exec
            proc.wait()
            assert client.wait(timeout=10) != 0
        finally:
            client.kill()
            client.wait()
            assert client.stdin is not None
            client.stdin.close()
        proc = launch_agent(a)
        wait_no_process(a, task_id, "sleep 100", "the orphaned exec still runs")
        assert exec_fifos(a, task_id) == []
        finish(a, task_id)
    finally:
        stop_agent(a, proc, base)


def test_an_agent_stopping_ends_its_sessions_and_their_execs(tmp_path: Path) -> None:
    from conftest import launch_agent, start_agent, stop_agent

    a, proc, base = start_agent()
    try:
        task_id = start_task(a, tmp_path)
        client = subprocess.Popen(
            [NSTASK, "exec", "-i", task_id, "--", "sh", "-c", "sleep 1009 & sleep 1010"],
            env=a.env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_process(a, task_id, "sleep 1009", "the exec's processes")
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
            # Not held up by the open session (aiohttp would wait for it otherwise).
            assert time.monotonic() - t0 < 10
            _, err = client.communicate(timeout=10)
            assert client.returncode == 1 and "agent is stopping" in err, err
        finally:
            client.kill()
            client.communicate()
        proc = launch_agent(a)
        ps = processes(a, task_id)
        assert "sleep 100" not in ps, ps
        assert exec_fifos(a, task_id) == []
        finish(a, task_id)
    finally:
        stop_agent(a, proc, base)
