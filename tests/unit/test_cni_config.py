"""Conflist parsing, validation and per-plugin stdin (no exec, no root)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.errors import InvalidInput
from cni.config import build_plugin_config, load_conflist, parse_conflist
from cni.errors import InvalidNetworkConfig

GOOD: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "tasknet",
    "disableCheck": True,
    "plugins": [
        {"type": "nstask-bridge", "bridge": "nstask0"},
        {"type": "portmap", "capabilities": {"portMappings": True, "bandwidth": False}},
    ],
}


def test_parses_a_good_list() -> None:
    net = parse_conflist(json.dumps(GOOD), source="tasknet.conflist")
    assert net.name == "tasknet"
    assert net.cni_version == "1.0.0"
    assert net.disable_check is True
    assert [p.type for p in net.plugins] == ["nstask-bridge", "portmap"]
    assert net.plugins[1].capabilities == frozenset({"portMappings"})


def test_single_plugin_config_becomes_a_list() -> None:
    net = parse_conflist({"cniVersion": "1.0.0", "name": "one", "type": "bridge", "bridge": "b"})
    assert [p.type for p in net.plugins] == ["bridge"]
    assert net.plugins[0].raw["bridge"] == "b"


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "net.conflist"
    path.write_text(json.dumps(GOOD))
    assert load_conflist(path).source == str(path)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({**GOOD, "name": ""}, "name: is required"),
        ({**GOOD, "name": "bad name"}, "name: 'bad name' must match"),
        ({k: v for k, v in GOOD.items() if k != "cniVersion"}, "cniVersion: is required"),
        ({**GOOD, "cniVersion": "9.9.9"}, "cniVersion: '9.9.9' is not one of"),
        ({**GOOD, "plugins": []}, "plugins: is required"),
        ({**GOOD, "plugins": [{"type": "a"}, {"bridge": "x"}]}, "plugins[1].type: is required"),
        ({**GOOD, "plugins": ["a"]}, "plugins[0]: must be an object"),
        ({**GOOD, "plugins": [{"type": "../evil"}]}, "plugins[0].type: '../evil'"),
        ({**GOOD, "plugins": [{"type": "a", "capabilities": []}]}, "plugins[0].capabilities"),
        ({**GOOD, "disableCheck": "yes"}, "disableCheck: must be true or false"),
    ],
)
def test_bad_lists_are_refused_with_a_located_message(doc: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidNetworkConfig) as info:
        parse_conflist(doc, source="my.conflist")
    err = info.value
    assert err.code == 7
    assert isinstance(err, InvalidInput)  # exit 2 / HTTP 400 for the CLI and API
    assert f"my.conflist: {expected}" in str(err)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(InvalidNetworkConfig) as info:
        parse_conflist({"plugins": [{}]})
    text = str(info.value)
    assert "name:" in text and "cniVersion:" in text and "plugins[0].type" in text


def test_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.conflist"
    path.write_text("{nope")
    with pytest.raises(InvalidNetworkConfig, match=r"broken\.conflist: not valid JSON"):
        load_conflist(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidNetworkConfig, match="cannot read"):
        load_conflist(tmp_path / "absent.conflist")


def test_plugin_stdin_injects_name_version_prev_result_and_declared_capabilities() -> None:
    net = parse_conflist(GOOD)
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]}
    caps = {"portMappings": [{"hostPort": 1, "containerPort": 2}], "bandwidth": {"x": 1}}

    first = build_plugin_config(net, net.plugins[0], prev_result=None, capability_args=caps)
    second = build_plugin_config(net, net.plugins[1], prev_result=prev, capability_args=caps)

    assert first == {
        "type": "nstask-bridge",
        "bridge": "nstask0",
        "name": "tasknet",
        "cniVersion": "1.0.0",
    }
    assert second["prevResult"] == prev
    assert second["runtimeConfig"] == {"portMappings": caps["portMappings"]}  # bandwidth: false
    assert second["capabilities"] == {"portMappings": True, "bandwidth": False}


def test_plugin_stdin_does_not_leak_a_user_runtime_config() -> None:
    net = parse_conflist({**GOOD, "plugins": [{"type": "a", "runtimeConfig": {"mac": "x"}}]})
    assert "runtimeConfig" not in build_plugin_config(net, net.plugins[0])
