"""The local secret store and environment files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.errors import InvalidInput
from agent.secrets import SecretNotFound, SecretStore, read_env_file


def test_put_get_list_remove_with_root_only_modes(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets")
    store.put("prod/db-password", "hunter2")
    store.put("api_key", "k")
    assert store.get("prod/db-password") == "hunter2"
    assert store.names() == ["api_key", "prod/db-password"]
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    for f in (tmp_path / "secrets").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        assert b"hunter2" not in f.name.encode()
    store.remove("api_key")
    assert store.names() == ["prod/db-password"]
    with pytest.raises(SecretNotFound, match="nstask secret put api_key"):
        store.get("api_key")


@pytest.mark.parametrize("name", ["", "has space", "x" * 513, "semi;colon"])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidInput, match="secret name"):
        SecretStore(tmp_path).put(name, "v")


def test_env_file_format(tmp_path: Path) -> None:
    f = tmp_path / "a.env"
    f.write_text("# c\nA=1\n\nB=x=y\nC=\n")
    assert read_env_file(str(f)) == [("A", "1"), ("B", "x=y"), ("C", "")]
    assert read_env_file(f"file://{f}") == [("A", "1"), ("B", "x=y"), ("C", "")]
    f.write_text("A=1\nnot a pair\n")
    with pytest.raises(InvalidInput, match="line 2"):
        read_env_file(str(f))
    with pytest.raises(InvalidInput, match=r"missing\.env"):
        read_env_file(str(tmp_path / "missing.env"))
