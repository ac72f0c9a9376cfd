"""The default seccomp profile: podman's JSON resolved into an OCI `linux.seccomp` object for
one container on one host (its capabilities, the host's architecture and kernel)."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import pytest

from agent import seccomp, spec
from agent.errors import InvalidInput, NstaskError
from agent.seccomp import Host
from agent.taskdef import parse_task_definition

AMD64 = Host(arch="amd64", kernel=(6, 1, 0))
ARM64 = Host(arch="arm64", kernel=(6, 1, 0))

PROFILE: dict[str, Any] = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 38,
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64",
         "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
    ],
    "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "args": [], "comment": "",
         "includes": {}, "excludes": {}},
        {"names": ["vmsplice"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "errno": "EPERM"},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
        {"name": "arch_prctl", "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
        {"names": ["cacheflush"], "action": "SCMP_ACT_ALLOW",
         "includes": {"arches": ["arm", "arm64"]}},
        {"names": ["not_on_arm"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["arm64"]}},
        {"names": ["bpf"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["bpf"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
         "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["both"], "action": "SCMP_ACT_ALLOW",
         "includes": {"caps": ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]}},
        {"names": ["new_call"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "5.8"}},
        {"names": ["old_way"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "5.8"}},
    ],
}  # fmt: skip


def rules(resolved: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in resolved["syscalls"] if name in r["names"]]


def test_default_action_and_host_architectures_from_the_arch_map() -> None:
    out = seccomp.resolve(PROFILE, caps=(), host=AMD64)
    assert out["defaultAction"] == "SCMP_ACT_ERRNO"
    assert out["defaultErrnoRet"] == 38
    assert out["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    arm = seccomp.resolve(PROFILE, caps=(), host=ARM64)
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    # An architecture the map does not name: none listed, the runtime uses the native one.
    other = seccomp.resolve(PROFILE, caps=(), host=Host(arch="riscv64", kernel=(6, 1)))
    assert "architectures" not in other


def test_plain_architectures_are_kept_and_both_forms_are_refused() -> None:
    p = {**PROFILE, "archMap": [], "architectures": ["SCMP_ARCH_X86_64"]}
    assert seccomp.resolve(p, caps=(), host=ARM64)["architectures"] == ["SCMP_ARCH_X86_64"]
    both = {**PROFILE, "architectures": ["SCMP_ARCH_X86_64"]}
    with pytest.raises(InvalidInput, match=r"architectures.*archMap"):
        seccomp.parse(json.dumps(both), source="p.json")


def test_rules_are_written_in_oci_form() -> None:
    out = seccomp.resolve(PROFILE, caps=(), host=AMD64)
    assert rules(out, "read") == [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]
    assert rules(out, "vmsplice") == [
        {"names": ["vmsplice"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
    ]
    assert rules(out, "personality") == [
        {
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}],
        }
    ]
    # The single-name form becomes `names`.
    assert rules(out, "arch_prctl") == [{"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW"}]


def test_arch_conditions() -> None:
    amd = seccomp.resolve(PROFILE, caps=(), host=AMD64)
    arm = seccomp.resolve(PROFILE, caps=(), host=ARM64)
    assert rules(amd, "arch_prctl") and not rules(arm, "arch_prctl")
    assert rules(arm, "cacheflush") and not rules(amd, "cacheflush")
    assert rules(amd, "not_on_arm") and not rules(arm, "not_on_arm")


def test_cap_conditions_follow_the_containers_capabilities() -> None:
    without = seccomp.resolve(PROFILE, caps=spec.DEFAULT_CAPABILITIES, host=AMD64)
    assert [r["action"] for r in rules(without, "bpf")] == ["SCMP_ACT_ERRNO"]
    with_admin = seccomp.resolve(
        PROFILE, caps=[*spec.DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"], host=AMD64
    )
    assert [r["action"] for r in rules(with_admin, "bpf")] == ["SCMP_ACT_ALLOW"]
    # includes.caps needs every capability it lists.
    assert not rules(with_admin, "both")
    both = seccomp.resolve(PROFILE, caps=["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"], host=AMD64)
    assert rules(both, "both")


def test_min_kernel_conditions() -> None:
    new = seccomp.resolve(PROFILE, caps=(), host=Host(arch="amd64", kernel=(5, 10, 2)))
    old = seccomp.resolve(PROFILE, caps=(), host=Host(arch="amd64", kernel=(4, 19)))
    exact = seccomp.resolve(PROFILE, caps=(), host=Host(arch="amd64", kernel=(5, 8)))
    assert rules(new, "new_call") and not rules(new, "old_way")
    assert rules(old, "old_way") and not rules(old, "new_call")
    assert rules(exact, "new_call")


def test_host_is_read_from_the_running_system(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(platform, "release", lambda: "6.18.44-fc-v669")
    assert Host.current() == Host(arch="amd64", kernel=(6, 18, 44))
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(platform, "release", lambda: "5.10.0+")
    assert Host.current() == Host(arch="arm64", kernel=(5, 10, 0))


def test_spec_option_resolves_against_the_capabilities_set_before_it() -> None:
    s = spec.compose(
        spec.with_capabilities(add=["CAP_SYS_ADMIN"], drop=[], privileged=False),
        spec.with_seccomp(PROFILE, host=AMD64),
    )
    assert [r["action"] for r in rules(s["linux"]["seccomp"], "bpf")] == ["SCMP_ACT_ALLOW"]
    plain = spec.compose(spec.with_seccomp(PROFILE, host=AMD64))
    assert [r["action"] for r in rules(plain["linux"]["seccomp"], "bpf")] == ["SCMP_ACT_ERRNO"]
    assert "seccomp" not in spec.compose(spec.with_seccomp(None))["linux"]


def test_load_reads_once_and_names_bad_files(tmp_path: Path) -> None:
    f = tmp_path / "profile.json"
    f.write_text(json.dumps(PROFILE))
    first = seccomp.load(f)
    assert seccomp.load(f) is first  # cached: not read again per container
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidInput, match=f"{bad}.*not valid JSON"):
        seccomp.load(bad)
    no_names = tmp_path / "no_names.json"
    no_names.write_text(json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{}]}))
    with pytest.raises(InvalidInput, match=r"syscalls\[0\]"):
        seccomp.load(no_names)
    with pytest.raises(InvalidInput, match=f"{tmp_path / 'absent.json'}"):
        seccomp.load(tmp_path / "absent.json")


def test_a_missing_default_profile_names_the_file_and_the_package(tmp_path: Path) -> None:
    absent = tmp_path / "seccomp.json"
    with pytest.raises(NstaskError, match=f"{absent}.*golang-github-containers-common"):
        seccomp.default_profile(absent)


@pytest.mark.skipif(not seccomp.DEFAULT_PROFILE.exists(), reason="containers-common not installed")
def test_the_shipped_profile_resolves_for_dockers_default_capabilities() -> None:
    profile = seccomp.default_profile()
    out = seccomp.resolve(profile, caps=spec.DEFAULT_CAPABILITIES, host=AMD64)
    assert out["defaultAction"] == "SCMP_ACT_ERRNO"
    assert out["architectures"][0] == "SCMP_ARCH_X86_64"
    assert [r["action"] for r in rules(out, "chroot")] == ["SCMP_ACT_ALLOW"]  # CAP_SYS_CHROOT
    assert [r["action"] for r in rules(out, "kcmp")] == ["SCMP_ACT_ERRNO"]  # no CAP_SYS_PTRACE
    assert any(r["action"] == "SCMP_ACT_ERRNO" for r in rules(out, "vmsplice"))
    ptrace = seccomp.resolve(
        profile, caps=[*spec.DEFAULT_CAPABILITIES, "CAP_SYS_PTRACE"], host=AMD64
    )
    assert [r["action"] for r in rules(ptrace, "kcmp")] == ["SCMP_ACT_ALLOW"]


# -- dockerSecurityOptions --------------------------------------------------------------------
def definition(options: object) -> dict[str, Any]:
    return {
        "family": "f",
        "containerDefinitions": [
            {"name": "app", "image": "busybox", "dockerSecurityOptions": options}
        ],
    }


def test_security_options_choose_the_seccomp_profile() -> None:
    td = parse_task_definition(definition(["seccomp=unconfined", "no-new-privileges"]))
    assert td.containers[0].seccomp == "unconfined"
    assert not td.warnings
    td = parse_task_definition(definition(["seccomp:/etc/nstask/strict.json"]))
    assert td.containers[0].seccomp == "/etc/nstask/strict.json"
    assert parse_task_definition(definition([])).containers[0].seccomp is None


def test_unsupported_security_options_warn_naming_the_value() -> None:
    td = parse_task_definition(definition(["apparmor:docker-default", "label:type:svirt_t"]))
    assert td.containers[0].seccomp is None
    assert any("apparmor:docker-default" in w for w in td.warnings)
    assert any("label:type:svirt_t" in w for w in td.warnings)


def test_bad_security_options_are_located_errors() -> None:
    from agent.errors import TaskDefinitionError

    with pytest.raises(TaskDefinitionError, match=r"dockerSecurityOptions\[0\].*absolute"):
        parse_task_definition(definition(["seccomp=relative.json"]))
    with pytest.raises(TaskDefinitionError, match=r"dockerSecurityOptions.*list"):
        parse_task_definition(definition("seccomp=unconfined"))
