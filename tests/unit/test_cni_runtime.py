"""CNIRuntime protocol behaviour against a recording fake at the exec seam (no root)."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cni.errors import CNIError, InvalidNetworkConfig, PluginCancelled
from cni.runtime import CNIRuntime

Handler = Callable[[dict[str, str], dict[str, Any]], tuple[int, bytes, bytes]]


@dataclass
class Call:
    plugin: str
    command: str
    env: dict[str, str]
    conf: dict[str, Any]


class RecordingExec:
    """Records every plugin run; ADD appends an interface named after the plugin."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.handlers: dict[tuple[str, str], Handler] = {}

    def run(
        self,
        path: str,
        env: dict[str, str],
        stdin: bytes,
        *,
        cancel: threading.Event | None = None,
    ) -> tuple[int, bytes, bytes]:
        conf = json.loads(stdin)
        plugin = os.path.basename(path)
        command = env["CNI_COMMAND"]
        self.calls.append(Call(plugin, command, dict(env), conf))
        handler = self.handlers.get((plugin, command))
        if handler is not None:
            return handler(env, conf)
        if command == "ADD":
            prev = conf.get("prevResult") or {"cniVersion": conf["cniVersion"], "interfaces": []}
            result = dict(prev)
            result["interfaces"] = [*prev["interfaces"], {"name": plugin}]
            return 0, json.dumps(result).encode(), b""
        if command == "VERSION":
            return 0, json.dumps({"supportedVersions": ["1.0.0"]}).encode(), b""
        return 0, b"", b""

    def commands(self) -> list[tuple[str, str]]:
        return [(c.plugin, c.command) for c in self.calls]


def fail_with(code: int, msg: str = "boom") -> Handler:
    body = json.dumps({"cniVersion": "1.0.0", "code": code, "msg": msg, "details": "why"})
    return lambda env, conf: (1, body.encode(), b"")


CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "testnet",
    "plugins": [
        {"type": "alpha", "capabilities": {"portMappings": True}},
        {"type": "beta", "capabilities": {"bandwidth": True}},
        {"type": "gamma"},
    ],
}
PORTS = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]


@pytest.fixture
def cni_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    for name in ("alpha", "beta", "gamma"):
        p = d / name
        p.write_text("#!/bin/sh\nexit 0\n")
        p.chmod(0o755)
    return d


@pytest.fixture
def fake() -> RecordingExec:
    return RecordingExec()


@pytest.fixture
def runtime(tmp_path: Path, cni_dir: Path, fake: RecordingExec) -> CNIRuntime:
    return CNIRuntime(
        conflist=CONFLIST,
        cache_dir=str(tmp_path / "cache"),
        cni_path=[str(cni_dir)],
        lock_path=str(tmp_path / "lock" / "cni.lock"),
        exec=fake,
        retry_delay=0.001,
    )


def test_add_runs_plugins_in_order_threading_prev_result(
    runtime: CNIRuntime, fake: RecordingExec
) -> None:
    result = runtime.add("c1", "/run/netns/x", "eth0")

    assert fake.commands() == [("alpha", "ADD"), ("beta", "ADD"), ("gamma", "ADD")]
    assert "prevResult" not in fake.calls[0].conf
    assert [i["name"] for i in fake.calls[1].conf["prevResult"]["interfaces"]] == ["alpha"]
    assert [i["name"] for i in fake.calls[2].conf["prevResult"]["interfaces"]] == [
        "alpha",
        "beta",
    ]
    assert [i["name"] for i in result["interfaces"]] == ["alpha", "beta", "gamma"]
    env = fake.calls[0].env
    assert env["CNI_CONTAINERID"] == "c1"
    assert env["CNI_NETNS"] == "/run/netns/x"
    assert env["CNI_IFNAME"] == "eth0"
    assert all(c.conf["name"] == "testnet" and c.conf["cniVersion"] == "1.0.0" for c in fake.calls)


def test_runtime_config_only_for_declared_capabilities(
    runtime: CNIRuntime, fake: RecordingExec
) -> None:
    runtime.add(
        "c1",
        "/run/netns/x",
        capability_args={"portMappings": PORTS, "bandwidth": {"ingressRate": 1}, "other": 1},
    )
    alpha, beta, gamma = (c.conf for c in fake.calls)
    assert alpha["runtimeConfig"] == {"portMappings": PORTS}
    assert beta["runtimeConfig"] == {"bandwidth": {"ingressRate": 1}}
    assert "runtimeConfig" not in gamma


def test_cni_args_are_passed_encoded(runtime: CNIRuntime, fake: RecordingExec) -> None:
    runtime.add("c1", "/run/netns/x", args={"K8S_POD_NAME": "p", "IgnoreUnknown": "1"})
    assert fake.calls[0].env["CNI_ARGS"] == "K8S_POD_NAME=p;IgnoreUnknown=1"


def test_cache_file_format_and_mode(runtime: CNIRuntime, tmp_path: Path) -> None:
    result = runtime.add(
        "c1", "/run/netns/x", "eth1", args={"A": "b"}, capability_args={"portMappings": PORTS}
    )
    path = tmp_path / "cache" / "results" / "testnet-c1-eth1"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    body = json.loads(path.read_text())
    assert body["kind"] == "cniCacheV1"
    assert body["containerId"] == "c1"
    assert body["ifName"] == "eth1"
    assert body["networkName"] == "testnet"
    assert body["result"] == result
    assert body["cniArgs"] == [["A", "b"]]
    assert body["capabilityArgs"] == {"portMappings": PORTS}
    assert body["config"]  # the conflist, base64 as libcni writes it
    assert [p.name for p in path.parent.iterdir()] == ["testnet-c1-eth1"]


def test_delete_runs_reverse_with_cached_result_and_removes_cache(
    runtime: CNIRuntime, fake: RecordingExec, tmp_path: Path
) -> None:
    result = runtime.add("c1", "/run/netns/x", capability_args={"portMappings": PORTS})
    fake.calls.clear()

    runtime.delete("c1", "/run/netns/x")

    assert fake.commands() == [("gamma", "DEL"), ("beta", "DEL"), ("alpha", "DEL")]
    assert all(c.conf["prevResult"] == result for c in fake.calls)
    # capability args come back from the cache when the caller does not repeat them
    assert fake.calls[2].conf["runtimeConfig"] == {"portMappings": PORTS}
    assert not (tmp_path / "cache" / "results" / "testnet-c1-eth0").exists()


def test_delete_without_cache_entry_or_netns(runtime: CNIRuntime, fake: RecordingExec) -> None:
    runtime.delete("ghost", None)
    assert fake.commands() == [("gamma", "DEL"), ("beta", "DEL"), ("alpha", "DEL")]
    assert all("prevResult" not in c.conf for c in fake.calls)
    assert all(c.env["CNI_NETNS"] == "" for c in fake.calls)


def test_delete_failure_keeps_cache_for_retry(
    runtime: CNIRuntime, fake: RecordingExec, tmp_path: Path
) -> None:
    runtime.add("c1", "/run/netns/x")
    fake.handlers[("beta", "DEL")] = fail_with(5, "disk")
    with pytest.raises(CNIError) as info:
        runtime.delete("c1", "/run/netns/x")
    assert info.value.plugin == "beta" and info.value.command == "DEL"
    assert (tmp_path / "cache" / "results" / "testnet-c1-eth0").exists()


def test_failure_mid_list_rolls_back_and_names_plugin(
    runtime: CNIRuntime, fake: RecordingExec, tmp_path: Path
) -> None:
    fake.handlers[("beta", "ADD")] = fail_with(100, "no room")

    with pytest.raises(CNIError) as info:
        runtime.add("c1", "/run/netns/x")

    err = info.value
    assert (err.code, err.msg, err.cni_details) == (100, "no room", "why")
    assert (err.plugin, err.command, err.network) == ("beta", "ADD", "testnet")
    assert "CNI plugin beta ADD" in str(err) and "no room" in str(err)
    assert fake.commands() == [
        ("alpha", "ADD"),
        ("beta", "ADD"),
        ("gamma", "DEL"),
        ("beta", "DEL"),
        ("alpha", "DEL"),
    ]
    # the DELs get the last good result so they can find what alpha made
    assert fake.calls[2].conf["prevResult"]["interfaces"] == [{"name": "alpha"}]
    assert not (tmp_path / "cache" / "results").exists() or not any(
        (tmp_path / "cache" / "results").iterdir()
    )


def test_rollback_del_errors_do_not_hide_the_add_error(
    runtime: CNIRuntime, fake: RecordingExec
) -> None:
    fake.handlers[("gamma", "ADD")] = fail_with(100, "first")
    fake.handlers[("alpha", "DEL")] = fail_with(5, "second")
    with pytest.raises(CNIError) as info:
        runtime.add("c1", "/run/netns/x")
    assert info.value.plugin == "gamma" and info.value.msg == "first"
    assert any("second" in note for note in info.value.__notes__)


def test_try_again_later_is_retried(runtime: CNIRuntime, fake: RecordingExec) -> None:
    attempts = []

    def flaky(env: dict[str, str], conf: dict[str, Any]) -> tuple[int, bytes, bytes]:
        attempts.append(1)
        if len(attempts) < 3:
            return fail_with(11, "xtables lock")(env, conf)
        return 0, json.dumps({"cniVersion": "1.0.0", "interfaces": []}).encode(), b""

    fake.handlers[("beta", "ADD")] = flaky
    runtime.add("c1", "/run/netns/x")
    assert len(attempts) == 3
    assert fake.commands()[-1] == ("gamma", "ADD")


def test_try_again_later_gives_up_after_retries(runtime: CNIRuntime, fake: RecordingExec) -> None:
    fake.handlers[("alpha", "ADD")] = fail_with(11, "busy")
    with pytest.raises(CNIError) as info:
        runtime.add("c1", "/run/netns/x")
    assert info.value.code == 11
    assert fake.commands().count(("alpha", "ADD")) == runtime.retries + 1


def test_other_errors_are_not_retried(runtime: CNIRuntime, fake: RecordingExec) -> None:
    fake.handlers[("alpha", "ADD")] = fail_with(7, "bad config")
    with pytest.raises(InvalidNetworkConfig):
        runtime.add("c1", "/run/netns/x")
    assert fake.commands().count(("alpha", "ADD")) == 1


def test_check_runs_in_order_with_cached_result(runtime: CNIRuntime, fake: RecordingExec) -> None:
    result = runtime.add("c1", "/run/netns/x")
    fake.calls.clear()
    runtime.check("c1", "/run/netns/x")
    assert fake.commands() == [("alpha", "CHECK"), ("beta", "CHECK"), ("gamma", "CHECK")]
    assert all(c.conf["prevResult"] == result for c in fake.calls)


def test_check_without_cache_is_an_error(runtime: CNIRuntime) -> None:
    with pytest.raises(CNIError) as info:
        runtime.check("nobody", "/run/netns/x")
    assert info.value.code == 3


def test_gc_deletes_only_stale_attachments(
    runtime: CNIRuntime, fake: RecordingExec, tmp_path: Path
) -> None:
    runtime.add("keep", "/run/netns/a")
    runtime.add("stale", "/run/netns/b")
    fake.calls.clear()

    removed = runtime.gc([("keep", "eth0")])

    assert [e.container_id for e in removed] == ["stale"]
    assert {c.env["CNI_CONTAINERID"] for c in fake.calls} == {"stale"}
    assert [c.command for c in fake.calls] == ["DEL", "DEL", "DEL"]
    assert fake.calls[0].env["CNI_NETNS"] == "/run/netns/b"
    left = sorted(p.name for p in (tmp_path / "cache" / "results").iterdir())
    assert left == ["testnet-keep-eth0"]


def test_gc_sends_gc_with_valid_attachments_for_1_1(
    tmp_path: Path, cni_dir: Path, fake: RecordingExec
) -> None:
    rt = CNIRuntime(
        conflist={**CONFLIST, "cniVersion": "1.1.0"},
        cache_dir=str(tmp_path / "cache"),
        cni_path=[str(cni_dir)],
        lock_path=str(tmp_path / "cni.lock"),
        exec=fake,
    )
    rt.gc([("keep", "eth0")])
    assert fake.commands() == [("alpha", "GC"), ("beta", "GC"), ("gamma", "GC")]
    assert fake.calls[0].conf["cni.dev/valid-attachments"] == [
        {"containerID": "keep", "ifname": "eth0"}
    ]
    assert "CNI_CONTAINERID" not in fake.calls[0].env


def test_status_is_a_no_op_before_1_1(runtime: CNIRuntime, fake: RecordingExec) -> None:
    runtime.status()
    assert fake.calls == []


def test_status_raises_plugin_not_available(
    tmp_path: Path, cni_dir: Path, fake: RecordingExec
) -> None:
    rt = CNIRuntime(
        conflist={**CONFLIST, "cniVersion": "1.1.0"},
        cache_dir=str(tmp_path / "cache"),
        cni_path=[str(cni_dir)],
        lock_path=str(tmp_path / "cni.lock"),
        exec=fake,
    )
    fake.handlers[("beta", "STATUS")] = fail_with(50, "no IPs left")
    with pytest.raises(CNIError) as info:
        rt.status()
    assert (info.value.code, info.value.plugin) == (50, "beta")


def test_version_asks_each_plugin(runtime: CNIRuntime, fake: RecordingExec) -> None:
    versions = runtime.version()
    assert versions == {t: {"supportedVersions": ["1.0.0"]} for t in ("alpha", "beta", "gamma")}
    assert all(c.conf == {"cniVersion": "1.0.0"} for c in fake.calls)


def test_missing_plugin_binary_is_a_config_error(tmp_path: Path, fake: RecordingExec) -> None:
    rt = CNIRuntime(
        conflist=CONFLIST,
        cache_dir=str(tmp_path / "cache"),
        cni_path=[str(tmp_path / "empty")],
        lock_path=str(tmp_path / "cni.lock"),
        exec=fake,
    )
    with pytest.raises(InvalidNetworkConfig) as info:
        rt.add("c1", "/run/netns/x")
    assert info.value.plugin == "alpha"
    assert "not found in CNI path" in str(info.value)


@pytest.mark.parametrize(
    ("container_id", "ifname"),
    [("", "eth0"), ("-bad", "eth0"), ("c1", ""), ("c1", "a" * 16), ("c1", "a/b"), ("c1", "..")],
)
def test_bad_container_id_or_ifname_is_refused_before_any_plugin(
    runtime: CNIRuntime, fake: RecordingExec, container_id: str, ifname: str
) -> None:
    with pytest.raises(CNIError) as info:
        runtime.add(container_id, "/run/netns/x", ifname)
    assert info.value.code == 4
    assert fake.calls == []


class _Builtin:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def run(self, command: str, env: Any, config: Any) -> dict[str, Any] | None:
        self.seen.append((command, dict(config)))
        if command == "ADD":
            return {"cniVersion": "1.0.0", "interfaces": [{"name": "builtin"}]}
        return None


def test_builtin_plugins_run_in_process_in_the_chain(
    tmp_path: Path, cni_dir: Path, fake: RecordingExec
) -> None:
    builtin = _Builtin()
    rt = CNIRuntime(
        conflist={
            "cniVersion": "1.0.0",
            "name": "n",
            "plugins": [{"type": "mine"}, {"type": "beta"}],
        },
        cache_dir=str(tmp_path / "cache"),
        cni_path=[str(cni_dir)],
        lock_path=str(tmp_path / "cni.lock"),
        exec=fake,
        builtins={"mine": builtin},
    )
    result = rt.add("c1", "/run/netns/x")
    assert [i["name"] for i in result["interfaces"]] == ["builtin", "beta"]
    assert builtin.seen[0][0] == "ADD" and builtin.seen[0][1]["name"] == "n"
    rt.delete("c1", "/run/netns/x")
    assert builtin.seen[-1][0] == "DEL"
    assert builtin.seen[-1][1]["prevResult"] == result


class _Crash(Exception):
    pass


def test_a_crash_mid_chain_leaves_the_partial_result_for_del(
    runtime: CNIRuntime, fake: RecordingExec
) -> None:
    """The runtime dies after beta's ADD: the cache holds alpha+beta's result, and the DEL
    the next runtime sends hands it to every plugin (firewall/portmap need the IPs)."""

    def crash_after_beta(plugin: str) -> None:
        if plugin == "beta":
            raise _Crash

    runtime.after_plugin = crash_after_beta
    with pytest.raises(_Crash):
        runtime.add("c1", "/run/netns/x", "eth0")
    entry = runtime.cache.read("testnet", "c1", "eth0")
    assert entry is not None and entry.result is not None
    assert [i["name"] for i in entry.result["interfaces"]] == ["alpha", "beta"]
    runtime.after_plugin = None
    fake.calls.clear()
    runtime.delete("c1", None, "eth0")
    assert fake.commands() == [("gamma", "DEL"), ("beta", "DEL"), ("alpha", "DEL")]
    assert all(
        [i["name"] for i in c.conf["prevResult"]["interfaces"]] == ["alpha", "beta"]
        for c in fake.calls
    )
    assert runtime.cache.read("testnet", "c1", "eth0") is None


def test_cancel_during_a_plugin_stops_the_chain_and_keeps_the_cache(
    runtime: CNIRuntime, fake: RecordingExec
) -> None:
    """Issue 10: a cancelled ADD stops at the running plugin (killed by the exec), runs no
    further plugin and no rollback, and leaves the result so far cached for the caller's
    DEL."""
    cancel = threading.Event()

    def beta_until_cancelled(env: dict[str, str], conf: dict[str, Any]) -> tuple[int, bytes, bytes]:
        cancel.set()  # the caller cancels while beta runs; the exec kills it
        raise PluginCancelled("cancelled while beta ran; it was killed")

    fake.handlers[("beta", "ADD")] = beta_until_cancelled
    with pytest.raises(PluginCancelled) as info:
        runtime.add("c1", "/run/netns/x", "eth0", cancel=cancel)
    assert (info.value.plugin, info.value.command) == ("beta", "ADD")
    assert fake.commands() == [("alpha", "ADD"), ("beta", "ADD")]
    entry = runtime.cache.read("testnet", "c1", "eth0")
    assert entry is not None and entry.result is not None
    assert [i["name"] for i in entry.result["interfaces"]] == ["alpha"]
    fake.calls.clear()
    runtime.delete("c1", None, "eth0")
    assert fake.commands() == [("gamma", "DEL"), ("beta", "DEL"), ("alpha", "DEL")]
    assert runtime.cache.read("testnet", "c1", "eth0") is None


def test_cancel_between_plugins_runs_no_further_plugin(
    runtime: CNIRuntime, fake: RecordingExec
) -> None:
    cancel = threading.Event()
    runtime.after_plugin = lambda plugin: cancel.set() if plugin == "alpha" else None
    with pytest.raises(PluginCancelled):
        runtime.add("c1", "/run/netns/x", "eth0", cancel=cancel)
    assert fake.commands() == [("alpha", "ADD")]
    assert runtime.cache.read("testnet", "c1", "eth0") is not None


def test_cancel_while_waiting_to_retry_stops_at_once(
    runtime: CNIRuntime, fake: RecordingExec
) -> None:
    runtime.retry_delay = 5.0
    cancel = threading.Event()
    fake.handlers[("alpha", "ADD")] = fail_with(11, "xtables lock")
    threading.Timer(0.1, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(PluginCancelled):
        runtime.add("c1", "/run/netns/x", "eth0", cancel=cancel)
    assert time.monotonic() - t0 < 1.0
    assert fake.commands() == [("alpha", "ADD")]
