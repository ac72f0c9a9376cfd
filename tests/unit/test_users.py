"""`user` resolved from an image's /etc/passwd and /etc/group as Docker does (issue 12)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent import spec
from agent.containerd import Mount
from agent.errors import InvalidInput
from agent.users import ExecUser, is_numeric, read_image_file, resolve

PASSWD = """root:x:0:0:root:/root:/bin/sh
# a comment
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
nginx:x:101:101:nginx:/var/cache/nginx:/sbin/nologin
app:x:1000:1000::/home/app:/bin/sh
"""
GROUP = """root:x:0:
nogroup:x:65534:
nginx:x:101:
app:x:1000:
audio:x:29:app,nginx
video:x:44:app
staff:x:50:
"""


def r(user: str) -> ExecUser:
    return resolve(user, PASSWD, GROUP, image="example/app:1")


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("nobody", ExecUser(65534, 65534, (), "/nonexistent")),
        ("nginx", ExecUser(101, 101, (29,), "/var/cache/nginx")),
        ("app", ExecUser(1000, 1000, (29, 44), "/home/app")),
        ("1000", ExecUser(1000, 1000, (29, 44), "/home/app")),  # a uid with an entry
        ("4242", ExecUser(4242, 0, (), "/")),  # without one: group 0, HOME /, as Docker
        ("app:staff", ExecUser(1000, 50, (), "/home/app")),  # a group replaces the groups
        ("1000:staff", ExecUser(1000, 50, (), "/home/app")),
        ("nginx:44", ExecUser(101, 44, (), "/var/cache/nginx")),
        ("4242:4343", ExecUser(4242, 4343, (), "/")),
        ("root", ExecUser(0, 0, (), "/root")),
    ],
)
def test_user_forms_resolve_as_docker_does(user: str, expected: ExecUser) -> None:
    assert r(user) == expected


def test_unknown_user_or_group_is_an_error_naming_it_and_the_image() -> None:
    with pytest.raises(InvalidInput, match=r"unknown user 'ghost'.*example/app:1"):
        r("ghost")
    with pytest.raises(InvalidInput, match=r"unknown group 'ghosts'.*example/app:1"):
        r("app:ghosts")
    with pytest.raises(InvalidInput, match="has no /etc/passwd"):
        resolve("nginx", None, None, image="scratch-app")
    assert resolve("root", None, None, image="scratch-app") == ExecUser(0, 0)
    assert resolve("7:8", None, None, image="scratch-app") == ExecUser(7, 8)
    assert is_numeric("7:8") and is_numeric("root") and not is_numeric("nginx")


def test_exec_user_sets_groups_and_home_only_when_env_has_none() -> None:
    s = spec.compose(spec.with_env(["PATH=/bin"]), spec.with_exec_user(1, 2, (3, 4), "/h"))
    assert s["process"]["user"] == {"uid": 1, "gid": 2, "additionalGids": [3, 4]}
    assert "HOME=/h" in s["process"]["env"]
    s = spec.compose(spec.with_env(["HOME=/mine"]), spec.with_exec_user(1, 2, (), "/h"))
    assert [e for e in s["process"]["env"] if e.startswith("HOME=")] == ["HOME=/mine"]


def _layer(root: Path, name: str, files: dict[str, str]) -> Path:
    d = root / name
    (d / "etc").mkdir(parents=True)
    for path, text in files.items():
        (d / path).write_text(text)
    return d


def test_files_are_read_through_the_overlay_top_layer_first(tmp_path: Path) -> None:
    low = _layer(tmp_path, "low", {"etc/passwd": "old", "etc/group": "g"})
    high = _layer(tmp_path, "high", {"etc/passwd": "new"})
    upper = tmp_path / "upper"
    upper.mkdir()
    mounts = [
        Mount(
            type="overlay",
            source="overlay",
            options=(f"workdir={tmp_path}/w", f"upperdir={upper}", f"lowerdir={high}:{low}"),
            target="",
        )
    ]
    assert read_image_file(mounts, "/etc/passwd") == "new"
    assert read_image_file(mounts, "/etc/group") == "g"
    assert read_image_file(mounts, "/etc/shadow") is None
    bind = [Mount(type="bind", source=str(low), options=("ro", "rbind"), target="")]
    assert read_image_file(bind, "/etc/passwd") == "old"


def test_a_symbolic_link_in_the_image_is_never_followed(tmp_path: Path) -> None:
    """An image whose /etc/passwd (or /etc) links to a host file must not make the agent
    read it."""
    secret = tmp_path / "host-secret"
    secret.write_text("root:x:0:0:host:/:/bin/sh\n")
    linked = tmp_path / "linked"
    (linked / "etc").mkdir(parents=True)
    os.symlink(secret, linked / "etc" / "passwd")
    whole = tmp_path / "whole"
    whole.mkdir()
    os.symlink(tmp_path / "linked" / "etc", whole / "etc")
    for d in (linked, whole):
        mounts = [Mount(type="bind", source=str(d), options=("rbind",), target="")]
        assert read_image_file(mounts, "/etc/passwd") is None


def test_the_definitions_user_else_the_images_user_is_resolved_from_the_rootfs(
    tmp_path: Path,
) -> None:
    from agent import containers
    from agent.images import ImageConfig
    from agent.taskdef import ContainerDefinition

    root = _layer(tmp_path, "root", {"etc/passwd": PASSWD, "etc/group": GROUP})
    mounts = [Mount(type="bind", source=str(root), options=("rbind",), target="")]

    def image(user: str) -> ImageConfig:
        return ImageConfig("nginx:1", (), ("sh",), (), "/", user, "", {}, "c", "d", 1)

    bare = ContainerDefinition(name="web", image="nginx:1")
    assert containers.exec_user(bare, image("nginx"), mounts) == r("nginx")
    assert containers.exec_user(bare, image(""), mounts) is None  # root, as before
    mine = ContainerDefinition(name="web", image="nginx:1", user="app:staff")
    assert containers.exec_user(mine, image("nginx"), mounts) == r("app:staff")
    ghost = ContainerDefinition(name="web", image="nginx:1", user="ghost")
    with pytest.raises(InvalidInput, match=r"container web: user 'ghost'.*nginx:1"):
        containers.exec_user(ghost, image(""), mounts)
