"""Issue 12 B container fields: dockerLabels, hostname, dnsSearchDomains, disableNetworking,
systemControls: what the parser accepts, and the located errors and warnings it gives."""

from __future__ import annotations

import pytest

from agent import spec
from agent.errors import TaskDefinitionError
from agent.taskdef import parse_task_definition

IMAGE = "nstask.local/busybox:latest"


def one(network_mode: str = "bridge", **container: object) -> dict[str, object]:
    return {
        "family": "f",
        "networkMode": network_mode,
        "containerDefinitions": [{"name": "a", "image": IMAGE, **container}],
    }


def problems(data: object) -> list[tuple[str, str]]:
    with pytest.raises(TaskDefinitionError) as e:
        parse_task_definition(data, source="t.json")
    return e.value.problems


def test_fields_are_parsed_without_warnings() -> None:
    td = parse_task_definition(
        one(
            dockerLabels={"team": "web", "com.example.tier": "front"},
            hostname="web-1.local",
            dnsSearchDomains=["example.com", "corp.example.com"],
            disableNetworking=False,
            systemControls=[
                {"namespace": "net.ipv4.ip_forward", "value": "1"},
                {"namespace": "kernel.shmmax", "value": "68719476736"},
                {"namespace": "fs.mqueue.msg_max", "value": "20"},
            ],
        )
    )
    c = td.containers[0]
    assert c.labels == (("com.example.tier", "front"), ("team", "web"))
    assert c.hostname == "web-1.local"
    assert c.dns_search_domains == ("example.com", "corp.example.com")
    assert c.system_controls == (
        ("net.ipv4.ip_forward", "1"),
        ("kernel.shmmax", "68719476736"),
        ("fs.mqueue.msg_max", "20"),
    )
    assert td.warnings == ()


def test_system_controls_of_the_host_are_located_errors() -> None:
    got = problems(
        one(
            systemControls=[
                {"namespace": "vm.swappiness", "value": "10"},
                {"namespace": "kernel.hostname", "value": "x"},
                {"namespace": "net.core.somaxconn"},
                {"namespace": "../../etc", "value": "1"},
            ]
        )
    )
    paths = [p for p, _ in got]
    assert paths == [
        "containerDefinitions[0].systemControls[0].namespace",
        "containerDefinitions[0].systemControls[1].namespace",
        "containerDefinitions[0].systemControls[2].value",
        "containerDefinitions[0].systemControls[3].namespace",
    ]
    assert "vm.swappiness is not namespaced" in got[0][1]


def test_net_sysctls_are_refused_in_host_mode_and_ipc_ones_accepted() -> None:
    got = problems(one("host", systemControls=[{"namespace": "net.ipv4.ip_forward", "value": "1"}]))
    assert got[0][0] == "containerDefinitions[0].systemControls[0].namespace"
    assert "host network mode" in got[0][1]
    td = parse_task_definition(
        one("host", systemControls=[{"namespace": "kernel.sem", "value": "1 2 3 4"}])
    )
    assert td.containers[0].system_controls == (("kernel.sem", "1 2 3 4"),)


def test_hostname_rules() -> None:
    assert problems(one("awsvpc", hostname="h"))[0][0] == "containerDefinitions[0].hostname"
    long = problems(one(hostname="a" * 65))
    assert long[0] == (
        "containerDefinitions[0].hostname",
        "must be at most 64 characters (the kernel's limit)",
    )
    assert problems(one(hostname="-bad"))[0][0] == "containerDefinitions[0].hostname"
    assert problems(one(hostname="a b"))[0][0] == "containerDefinitions[0].hostname"


def test_labels_containerd_limit_and_nstask_prefix() -> None:
    got = problems(one(dockerLabels={"big": "x" * 5000, "nstask.task": "other", "": "v"}))
    msgs = dict(got)
    assert "4096 bytes" in msgs["containerDefinitions[0].dockerLabels.big"]
    assert "nstask's own" in msgs["containerDefinitions[0].dockerLabels.nstask.task"]
    assert "must not be empty" in msgs["containerDefinitions[0].dockerLabels"]


def test_search_domains_rules_and_warnings() -> None:
    got = problems(one(dnsSearchDomains=["ok.example", "bad domain", "x" * 300]))
    assert [p for p, _ in got] == [
        "containerDefinitions[0].dnsSearchDomains[1]",
        "containerDefinitions[0].dnsSearchDomains[2]",
    ]
    assert problems(one(dnsSearchDomains="example.com"))[0][1] == "must be a list of domain names"
    awsvpc = parse_task_definition(one("awsvpc", dnsSearchDomains=["example.com"]))
    assert any("awsvpc" in w for w in awsvpc.warnings)
    host = parse_task_definition(one("host", dnsSearchDomains=["example.com"]))
    assert any("host's" in w and "ignored" in w for w in host.warnings)


def test_disable_networking_rules() -> None:
    td = parse_task_definition(one("awsvpc", disableNetworking=True))
    assert td.containers[0].disable_networking is True
    got = problems(one("host", disableNetworking=True))
    assert got[0][0] == "containerDefinitions[0].disableNetworking"
    ports = problems(one(disableNetworking=True, portMappings=[{"containerPort": 80}]))
    assert "portMappings" in ports[0][1]
    assert (
        problems(one(disableNetworking="yes"))[0][0] == "containerDefinitions[0].disableNetworking"
    )


def test_spec_options() -> None:
    s = spec.compose(
        spec.with_netns("/run/netns/nstask-x"),
        spec.with_own_netns(True),
        spec.with_sysctls([("net.ipv4.ip_forward", "1")]),
    )
    nets = [n for n in s["linux"]["namespaces"] if n["type"] == "network"]
    assert nets == [{"type": "network"}]
    assert s["linux"]["sysctl"] == {"net.ipv4.ip_forward": "1"}
    resolv = "nameserver 10.0.0.2\nsearch old.example\noptions ndots:2\n"
    assert spec.with_search_domains(resolv, ["a.example", "b.example"]) == (
        "nameserver 10.0.0.2\noptions ndots:2\nsearch a.example b.example\n"
    )
    assert spec.with_search_domains(resolv, []) == resolv


def test_devices_and_swap_are_parsed() -> None:
    from agent.taskdef import Device

    td = parse_task_definition(
        one(
            linuxParameters={
                "devices": [
                    {
                        "hostPath": "/dev/fuse",
                        "containerPath": "/dev/f",
                        "permissions": ["write", "read"],
                    },
                    {"hostPath": "/dev/loop-control"},
                ],
                "maxSwap": 0,
                "swappiness": 10,
            }
        )
    )
    lp = td.containers[0].linux_parameters
    assert lp is not None
    assert lp.devices == (
        Device("/dev/fuse", "/dev/f", "rw"),
        Device("/dev/loop-control", "/dev/loop-control", "rwm"),
    )
    assert (lp.max_swap, lp.swappiness) == (0, 10)
    assert td.warnings == ()


def test_device_and_swap_errors_are_located() -> None:
    got = problems(
        one(
            linuxParameters={
                "devices": [
                    {"hostPath": "/dev/fuse", "permissions": ["execute"]},
                    {"containerPath": "/dev/x"},
                    {"hostPath": "dev/fuse"},
                    {"hostPath": "/dev/fuse", "containerPath": "../x"},
                ],
                "maxSwap": -1,
                "swappiness": 101,
            }
        )
    )
    at = "containerDefinitions[0].linuxParameters"
    assert [p for p, _ in got] == [
        f"{at}.devices[0].permissions",
        f"{at}.devices[1].hostPath",
        f"{at}.devices[2].hostPath",
        f"{at}.devices[3].containerPath",
        f"{at}.maxSwap",
        f"{at}.swappiness",
    ]


def test_swappiness_without_max_swap_is_ignored_with_a_warning() -> None:
    td = parse_task_definition(one(linuxParameters={"swappiness": 10}))
    lp = td.containers[0].linux_parameters
    assert lp is not None and lp.swappiness is None
    assert any("swappiness: ignored without maxSwap" in w for w in td.warnings)


def test_swap_spec_option() -> None:
    def memory(**kw: object) -> object:
        s = spec.compose(
            spec.with_limits(memory_mib=64, reservation_mib=None, cpu_units=None),
            spec.with_swap(**kw),  # type: ignore[arg-type]
        )
        return s["linux"]["resources"]["memory"]

    mib = 1024 * 1024
    on = dict(memory_mib=64, accounting=True)
    assert memory(max_swap_mib=32, swappiness=10, **on) == {
        "limit": 64 * mib,
        "swap": 96 * mib,
        "swappiness": 10,
    }
    assert memory(max_swap_mib=0, swappiness=None, **on) == {"limit": 64 * mib, "swap": 64 * mib}
    # No swap accounting: no limit can be set; maxSwap 0 keeps the container off swap.
    off = dict(memory_mib=64, accounting=False)
    assert memory(max_swap_mib=0, swappiness=None, **off) == {"limit": 64 * mib, "swappiness": 0}
    assert memory(max_swap_mib=None, swappiness=None, **on) == {"limit": 64 * mib}


def test_pid_and_ipc_modes() -> None:
    td = parse_task_definition({**one(), "pidMode": "task", "ipcMode": "none"})
    assert (td.pid_mode, td.ipc_mode) == ("task", "none")
    assert td.warnings == ()
    host = parse_task_definition({**one(), "pidMode": "host", "ipcMode": "host"})
    assert [w.split(":")[0] for w in host.warnings] == ["pidMode", "ipcMode"]
    got = problems({**one(), "pidMode": "shareable", "ipcMode": "private"})
    assert [p for p, _ in got] == ["pidMode", "ipcMode"]
    ipc_sysctl = problems(
        {
            **one(systemControls=[{"namespace": "kernel.shmmax", "value": "1"}]),
            "ipcMode": "host",
        }
    )
    assert ipc_sysctl[0][0] == "containerDefinitions[0].systemControls[0].namespace"


def test_namespace_mode_spec_option() -> None:
    task = spec.compose(spec.with_namespace_mode("pid", "task", "/proc/42/ns/pid"))
    assert {"type": "pid", "path": "/proc/42/ns/pid"} in task["linux"]["namespaces"]
    host = spec.compose(spec.with_namespace_mode("ipc", "host"))
    assert "ipc" not in {n["type"] for n in host["linux"]["namespaces"]}
    shm = [m for m in host["mounts"] if m["destination"] == "/dev/shm"]
    assert shm == [spec.bind_mount("/dev/shm", "/dev/shm", read_only=False)]
    none = spec.compose(spec.with_namespace_mode("ipc", "none"))
    assert {"type": "ipc"} in none["linux"]["namespaces"]
    assert not [m for m in none["mounts"] if m["destination"] == "/dev/shm"]


def test_runtime_platform_values_and_the_host_check() -> None:
    from agent import hostfields
    from agent.errors import InvalidInput

    td = parse_task_definition(
        {**one(), "runtimePlatform": {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"}}
    )
    assert (td.cpu_architecture, td.os_family) == ("ARM64", "LINUX")
    got = problems(
        {**one(), "runtimePlatform": {"cpuArchitecture": "x86", "operatingSystemFamily": "BSD"}}
    )
    assert [p for p, _ in got] == [
        "runtimePlatform.cpuArchitecture",
        "runtimePlatform.operatingSystemFamily",
    ]
    arch, machine = hostfields.host_architecture()
    other = "ARM64" if arch == "X86_64" else "X86_64"
    with pytest.raises(InvalidInput) as e:
        hostfields.check_platform(
            parse_task_definition({**one(), "runtimePlatform": {"cpuArchitecture": other}})
        )
    assert f"needs {other}" in e.value.message and machine in e.value.message
    with pytest.raises(InvalidInput, match="Linux containers only"):
        hostfields.check_platform(
            parse_task_definition(
                {**one(), "runtimePlatform": {"operatingSystemFamily": "WINDOWS_SERVER_2022_CORE"}}
            )
        )
    if arch is not None:
        hostfields.check_platform(
            parse_task_definition({**one(), "runtimePlatform": {"cpuArchitecture": arch}})
        )


def test_ephemeral_storage_warns_that_it_is_not_limited() -> None:
    td = parse_task_definition({**one(), "ephemeralStorage": {"sizeInGiB": 50}})
    assert td.warnings == (
        "ephemeralStorage: nstask does not limit a task's storage (50 GiB asked); its "
        "containers write to their snapshots on the host's disk",
    )
    got = problems({**one(), "ephemeralStorage": {"sizeInGiB": 10}})
    assert got[0][0] == "ephemeralStorage.sizeInGiB"


def _vol(dvc: object) -> dict[str, object]:
    return {**one(), "volumes": [{"name": "v", "dockerVolumeConfiguration": dvc}]}


def test_docker_volume_tmpfs_and_plain_local() -> None:
    from agent.taskdef import Volume

    tmpfs = {"type": "tmpfs", "device": "tmpfs", "o": "size=64m,uid=1000,noexec"}
    td = parse_task_definition(_vol({"scope": "task", "driver": "local", "driverOpts": tmpfs}))
    assert td.volumes == (
        Volume("v", None, tmpfs_options=("size=64m", "uid=1000", "noexec", "nosuid", "nodev")),
    )
    assert td.warnings == ()
    plain = parse_task_definition(_vol({"scope": "task", "driver": "local", "autoprovision": True}))
    assert plain.volumes == (Volume("v"),)
    shared = parse_task_definition(_vol({"scope": "shared"}))
    assert shared.warnings[0].startswith("volumes[0].dockerVolumeConfiguration.scope:")


def test_docker_volume_errors_are_located() -> None:
    at = "volumes[0].dockerVolumeConfiguration"
    cases = [
        ({"driver": "rexray/ebs"}, f"{at}.driver"),
        ({"scope": "global"}, f"{at}.scope"),
        (
            {"driverOpts": {"type": "nfs", "device": ":/x", "o": "addr=10.0.0.1"}},
            f"{at}.driverOpts",
        ),
        ({"driverOpts": {"type": "tmpfs", "o": "size=1m,suid"}}, f"{at}.driverOpts.o"),
        ({"driverOpts": {"type": "tmpfs", "o": "size=lots"}}, f"{at}.driverOpts.o"),
        ({"driverOpts": {"type": "tmpfs", "foo": "1"}}, f"{at}.driverOpts"),
        ("local", at),
    ]
    for dvc, path in cases:
        assert problems(_vol(dvc))[0][0] == path, dvc


def test_restart_policy_parse_and_decision() -> None:
    from agent.lifecycle import restart
    from agent.store import ContainerRecord, TaskRecord
    from agent.taskdef import RestartPolicy

    td = parse_task_definition(
        one(restartPolicy={"enabled": True, "ignoredExitCodes": [0, 2], "restartAttemptPeriod": 90})
    )
    assert td.containers[0].restart_policy == RestartPolicy((0, 2), 90)
    assert td.warnings == ()
    off = parse_task_definition(one(restartPolicy={"enabled": False}))
    assert off.containers[0].restart_policy is None
    at = "containerDefinitions[0].restartPolicy"
    got = problems(one(restartPolicy={"ignoredExitCodes": ["1"], "restartAttemptPeriod": 10}))
    assert [p for p, _ in got] == [
        f"{at}.enabled",
        f"{at}.ignoredExitCodes",
        f"{at}.restartAttemptPeriod",
    ]

    c = ContainerRecord(
        "t", "a", 0, "t-0-a", IMAGE, "/log", True, last_status="RUNNING", started_at=1000.0
    )
    task = TaskRecord(
        id="t", family="f", definition={}, source="", overrides={"restart": restart.plan_of(td)},
        last_status="RUNNING", desired_status="RUNNING", created_at=0.0, containers=[c],
    )  # fmt: skip
    restart.register("t-0-a", lambda: None)  # type: ignore[arg-type, return-value]
    try:
        assert restart.wanted(task, c, 1, now=1090.0)  # ran the period, code not ignored
        assert not restart.wanted(task, c, 1, now=1089.0)  # exited within the period
        assert not restart.wanted(task, c, 2, now=2000.0)  # an ignored exit code
        task.desired_status = "STOPPED"
        assert not restart.wanted(task, c, 1, now=2000.0)  # the task is stopping
    finally:
        restart.forget("t-0-a")
    task.desired_status = "RUNNING"
    assert not restart.wanted(task, c, 1, now=2000.0)  # no restarter: an agent restarted since
