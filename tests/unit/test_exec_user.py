"""`nstask exec --user`: names and numbers resolved in the container's /etc files
(agent.execute.resolve_user), and the exec's OCI process (process_for)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.errors import InvalidInput
from agent.execute import ExecRequest, process_for, resolve_user


@pytest.fixture
def root(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnginx:x:101:101:nginx:/var/cache/nginx:/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/:/bin/false\n"
    )
    (etc / "group").write_text("root:x:0:\nnginx:x:101:\nwww:x:33:nginx\nlogs:x:4:nginx,x\n")
    return tmp_path


def test_names_and_numbers_resolve_as_docker_does(root: Path) -> None:
    assert resolve_user("nginx", root) == (101, 101, [4, 33])
    assert resolve_user("nginx:www", root) == (101, 33, [4])
    assert resolve_user("101", root) == (101, 101, [4, 33])
    assert resolve_user("1234:5", root) == (1234, 5, [])
    assert resolve_user("nobody:0", root) == (65534, 0, [])


def test_unknown_names_are_clear_errors(root: Path) -> None:
    with pytest.raises(InvalidInput, match="no user 'ghost'"):
        resolve_user("ghost", root)
    with pytest.raises(InvalidInput, match="no group 'ghosts'"):
        resolve_user("nginx:ghosts", root)
    with pytest.raises(InvalidInput, match="USER"):
        resolve_user(":5", root)


def test_a_symlinked_passwd_is_not_followed(
    root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The container's /etc/passwd as a symlink would resolve on the host: not read.
    elsewhere = tmp_path_factory.mktemp("host") / "passwd"
    elsewhere.write_text("ghost:x:7:7::/:/bin/sh\n")
    (root / "etc" / "passwd").unlink()
    os.symlink(elsewhere, root / "etc" / "passwd")
    with pytest.raises(InvalidInput, match="no user 'ghost'"):
        resolve_user("ghost", root)
    assert resolve_user("7", root) == (7, 0, [])


def test_the_exec_process_takes_the_request() -> None:
    container = {
        "args": ["app"],
        "env": ["PATH=/bin", "A=1"],
        "cwd": "/srv",
        "user": {"uid": 5, "gid": 5, "additionalGids": [9]},
        "terminal": False,
    }
    req = ExecRequest(
        ["sh"], tty=True, env={"B": "2"}, user=(101, 33, [4]), workdir="/tmp", columns=80, rows=24
    )
    p = process_for(container, req)
    assert p["args"] == ["sh"] and p["terminal"] is True and p["cwd"] == "/tmp"
    assert p["env"] == ["PATH=/bin", "A=1", "B=2", "TERM=xterm"]
    assert p["user"] == {"uid": 101, "gid": 33, "additionalGids": [4]}
    assert p["consoleSize"] == {"height": 24, "width": 80}
    plain = process_for(container, ExecRequest(["id"]))
    assert plain["user"] == container["user"] and plain["cwd"] == "/srv"
    assert "consoleSize" not in plain and plain["env"] == ["PATH=/bin", "A=1"]
    with pytest.raises(InvalidInput):
        ExecRequest([])
