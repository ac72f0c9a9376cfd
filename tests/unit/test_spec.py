"""The OCI spec nstask builds: Docker's defaults plus the task's settings."""

from __future__ import annotations

import pytest

from agent import spec
from agent.errors import InvalidInput


def test_defaults_match_dockers_security_settings() -> None:
    s = spec.compose()
    caps = s["process"]["capabilities"]
    assert set(caps["bounding"]) == set(spec.DEFAULT_CAPABILITIES)
    assert "CAP_SYS_ADMIN" not in caps["effective"] and "CAP_NET_ADMIN" not in caps["effective"]
    assert s["process"]["noNewPrivileges"] is True
    assert "/proc/kcore" in s["linux"]["maskedPaths"]
    assert "/proc/sys" in s["linux"]["readonlyPaths"]
    assert {m["destination"] for m in s["mounts"]} >= {
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/sys",
    }
    assert s["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]


def test_netns_joined_by_path_and_host_mode_shares_the_host_network() -> None:
    s = spec.compose(spec.with_netns("/run/netns/nstask-x"))
    assert {"type": "network", "path": "/run/netns/nstask-x"} in s["linux"]["namespaces"]
    host = spec.compose(spec.with_netns(None))
    assert all(n["type"] != "network" for n in host["linux"]["namespaces"])


def test_limits_map_ecs_units_to_cgroup_settings() -> None:
    s = spec.compose(spec.with_limits(memory_mib=128, reservation_mib=64, cpu_units=256))
    res = s["linux"]["resources"]
    assert res["memory"] == {"limit": 128 << 20, "reservation": 64 << 20}
    assert res["cpu"] == {"shares": 256}
    assert spec.compose(spec.with_limits(memory_mib=None, reservation_mib=None, cpu_units=0))[
        "linux"
    ]["resources"]["cpu"] == {"shares": 2}


def test_env_later_values_win_and_path_default_kept() -> None:
    s = spec.compose(spec.with_env(["A=1", "A=2", "B=x=y"]))
    env = s["process"]["env"]
    assert env[0].startswith("PATH=") and "A=2" in env and "A=1" not in env and "B=x=y" in env


def test_args_follow_dockers_entrypoint_and_cmd_rules() -> None:
    r = spec.resolve_args
    assert r(image_entrypoint=["/e"], image_cmd=["c"], entry_point=None, command=None) == [
        "/e",
        "c",
    ]
    assert r(image_entrypoint=["/e"], image_cmd=["c"], entry_point=None, command=["x"]) == [
        "/e",
        "x",
    ]
    assert r(image_entrypoint=["/e"], image_cmd=["c"], entry_point=["/n"], command=None) == ["/n"]
    assert r(image_entrypoint=None, image_cmd=["sh"], entry_point=["/n"], command=["a"]) == [
        "/n",
        "a",
    ]


def test_user_numeric_forms() -> None:
    assert spec.compose(spec.with_user("1000"))["process"]["user"] == {"uid": 1000, "gid": 1000}
    assert spec.compose(spec.with_user("1:2"))["process"]["user"] == {"uid": 1, "gid": 2}


def test_rlimit_is_clamped_to_the_hosts_hard_limit() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = spec.compose()["process"]["rlimits"][0]
    assert nofile["type"] == "RLIMIT_NOFILE"
    assert hard == resource.RLIM_INFINITY or nofile["hard"] <= hard


def test_task_files(tmp_path: object) -> None:
    hosts = spec.hosts_file("abc", "10.0.0.5")
    assert "10.0.0.5\tabc" in hosts and "127.0.0.1\tlocalhost" in hosts
    from pathlib import Path

    p = Path(str(tmp_path)) / "resolv.conf"
    p.write_text("nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch example\n")
    out = spec.resolv_conf([], str(p))
    assert "127.0.0.53" not in out and "nameserver 192.0.2.53" in out and "search example" in out
    assert spec.resolv_conf(["1.1.1.1"], str(p)) == "nameserver 1.1.1.1\n"


def test_host_capabilities_from_the_bounding_set(tmp_path: object) -> None:
    from pathlib import Path

    status = Path(str(tmp_path)) / "status"
    status.write_text("Name:\tx\nCapBnd:\t0000000000000005\n")  # CHOWN, DAC_READ_SEARCH
    assert spec.host_capabilities(str(status)) == ("CAP_CHOWN", "CAP_DAC_READ_SEARCH")


def test_a_capability_the_runtime_lacks_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec, "host_capabilities", lambda: spec.DEFAULT_CAPABILITIES)
    with pytest.raises(InvalidInput, match="CAP_SYS_RESOURCE cannot be granted"):
        spec.compose(spec.with_capabilities(add=["CAP_SYS_RESOURCE"]))
    privileged = spec.compose(spec.with_capabilities(privileged=True))
    assert privileged["process"]["capabilities"]["bounding"] == list(spec.DEFAULT_CAPABILITIES)
