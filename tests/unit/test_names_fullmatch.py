"""Issue 9: a name with a trailing newline passed every `^...$` check made with re.match
(`$` also matches before a final newline). Each check now matches the whole value."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import InvalidInput
from cni.errors import CNIError


def test_a_secret_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    from agent.secrets import SecretStore

    store = SecretStore(tmp_path / "secrets")
    with pytest.raises(InvalidInput):
        store.put("db-password\n", "x")
    store.put("db-password", "x")
    assert store.get("db-password") == "x"


@pytest.mark.parametrize("ref", ["busybox\n:latest", "busybox\n@sha256:" + "a" * 64])
def test_an_image_repository_ending_in_a_newline_is_refused(ref: str) -> None:
    from agent.registry import parse_reference

    with pytest.raises(InvalidInput, match="invalid repository name"):
        parse_reference(ref)
    assert parse_reference(ref.replace("\n", "")).repository == "library/busybox"


def test_a_network_name_with_a_trailing_newline_is_refused() -> None:
    from cni.config import parse_conflist

    doc = {"cniVersion": "1.0.0", "name": "nstask-net\n", "plugins": [{"type": "bridge"}]}
    with pytest.raises(Exception, match="name"):
        parse_conflist(doc)
    assert parse_conflist({**doc, "name": "nstask-net"}).name == "nstask-net"


def test_a_cni_container_id_with_a_trailing_newline_is_refused() -> None:
    from cni.runtime import _check_attachment

    with pytest.raises(CNIError):
        _check_attachment("nstask-abc\n", "eth0")
    _check_attachment("nstask-abc", "eth0")
