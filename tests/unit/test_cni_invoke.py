"""Reading plugin answers, finding plugins, the CNI environment (no root)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from cni.errors import CNIError, InvalidNetworkConfig, PluginCancelled
from cni.invoke import SubprocessExec, build_env, find_plugin, format_cni_args, invoke


class Canned:
    def __init__(self, status: int, out: bytes, err: bytes = b"") -> None:
        self.answer = (status, out, err)
        self.stdin = b""

    def run(
        self,
        path: str,
        env: dict[str, str],
        stdin: bytes,
        *,
        cancel: threading.Event | None = None,
    ) -> tuple[int, bytes, bytes]:
        self.stdin = stdin
        return self.answer


ENV = {"CNI_COMMAND": "ADD"}


def test_result_json_is_returned_and_config_sent_on_stdin() -> None:
    runner = Canned(0, b'{"cniVersion": "1.0.0", "ips": []}')
    assert invoke(runner, "/x/p", ENV, {"a": 1}, plugin="p") == {"cniVersion": "1.0.0", "ips": []}
    assert json.loads(runner.stdin) == {"a": 1}


def test_empty_output_is_no_result() -> None:
    assert invoke(Canned(0, b"\n"), "/x/p", {"CNI_COMMAND": "DEL"}, {}, plugin="p") is None


def test_error_json_becomes_structured_error() -> None:
    body = {"cniVersion": "1.0.0", "code": 11, "msg": "locked", "details": "xtables"}
    with pytest.raises(CNIError) as info:
        invoke(Canned(1, json.dumps(body).encode()), "/x/portmap", ENV, {}, plugin="portmap")
    err = info.value
    assert (err.code, err.msg, err.cni_details, err.plugin, err.command) == (
        11,
        "locked",
        "xtables",
        "portmap",
        "ADD",
    )
    assert err.retryable
    assert str(err).startswith("CNI plugin portmap ADD failed: locked")


def test_error_json_on_stderr_is_understood_too() -> None:
    body = b'{"code": 7, "msg": "bad"}'
    with pytest.raises(InvalidNetworkConfig):
        invoke(Canned(1, b"", body), "/x/p", ENV, {}, plugin="p")


def test_non_json_failure_is_code_999_with_stderr() -> None:
    with pytest.raises(CNIError) as info:
        invoke(Canned(2, b"", b"panic: nil map\n"), "/x/p", ENV, {}, plugin="p")
    assert info.value.code == 999
    assert info.value.cni_details == "panic: nil map"
    assert "status 2" in info.value.msg


def test_garbage_success_output_is_an_error() -> None:
    with pytest.raises(CNIError, match="not JSON"):
        invoke(Canned(0, b"ok!"), "/x/p", ENV, {}, plugin="p")


def test_find_plugin_searches_in_order(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for d in (first, second):
        d.mkdir()
        (d / "tool").write_text("#!/bin/sh\n")
        (d / "tool").chmod(0o755)
    (first / "noexec").write_text("")
    assert find_plugin("tool", [str(first), str(second)]) == str(first / "tool")
    with pytest.raises(InvalidNetworkConfig, match="'noexec' not found"):
        find_plugin("noexec", [str(first)])


def test_default_path_finds_debian_plugins_when_installed() -> None:
    if not Path("/usr/lib/cni/host-local").exists():
        pytest.skip("containernetworking-plugins not installed")
    assert find_plugin("host-local") == "/usr/lib/cni/host-local"


def test_env_for_container_commands_and_for_version() -> None:
    env = build_env(
        "DEL", container_id="c", netns="", ifname="eth0", args={"A": "1"}, cni_path=["/a", "/b"]
    )
    assert env["CNI_COMMAND"] == "DEL" and env["CNI_NETNS"] == ""
    assert env["CNI_ARGS"] == "A=1" and env["CNI_PATH"] == "/a:/b"
    assert env["PATH"]  # portmap/firewall exec iptables
    version = build_env("VERSION", container_id="", netns="", ifname="", args=None, cni_path=[])
    assert "CNI_CONTAINERID" not in version and version["CNI_COMMAND"] == "VERSION"


def test_unencodable_cni_args_are_refused() -> None:
    with pytest.raises(CNIError) as info:
        format_cni_args({"A": "1;B=2"})
    assert info.value.code == 4


def test_subprocess_exec_runs_a_real_plugin(tmp_path: Path) -> None:
    plugin = tmp_path / "echoer"
    plugin.write_text('#!/bin/sh\necho "{\\"cmd\\": \\"$CNI_COMMAND\\", \\"in\\": $(cat)}"\n')
    plugin.chmod(0o755)
    result = invoke(SubprocessExec(), str(plugin), {"CNI_COMMAND": "ADD"}, {"x": 1}, plugin="e")
    assert result == {"cmd": "ADD", "in": {"x": 1}}


def test_subprocess_exec_times_out(tmp_path: Path) -> None:
    plugin = tmp_path / "sleeper"
    plugin.write_text("#!/bin/sh\nexec sleep 5\n")
    plugin.chmod(0o755)
    with pytest.raises(CNIError, match="did not finish"):
        SubprocessExec(timeout=0.2).run(str(plugin), {}, b"")


def test_cancel_kills_the_plugin_and_its_children(tmp_path: Path) -> None:
    """Issue 10: a cancelled attach left the plugin running. The event kills its group."""
    pidfile = tmp_path / "child.pid"
    plugin = tmp_path / "slow"
    plugin.write_text(f"#!/bin/sh\nsleep 30 &\necho $! > {pidfile}\nwait\n")
    plugin.chmod(0o755)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(PluginCancelled, match="killed"):
        SubprocessExec().run(str(plugin), {}, b"{}", cancel=cancel)
    assert time.monotonic() - t0 < 1.0
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(child), "the plugin's child (sleep 30) survived the cancel"


def test_cancel_before_start_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    plugin = tmp_path / "p"
    plugin.write_text(f"#!/bin/sh\ntouch {marker}\n")
    plugin.chmod(0o755)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(PluginCancelled):
        invoke(SubprocessExec(), str(plugin), ENV, {}, plugin="p", cancel=cancel)
    assert not marker.exists()


def test_an_uncancelled_run_with_an_event_returns_normally(tmp_path: Path) -> None:
    plugin = tmp_path / "p"
    plugin.write_text('#!/bin/sh\nsleep 0.2\necho \'{"cniVersion": "1.0.0"}\'\n')
    plugin.chmod(0o755)
    result = invoke(SubprocessExec(), str(plugin), ENV, {}, plugin="p", cancel=threading.Event())
    assert result == {"cniVersion": "1.0.0"}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"
