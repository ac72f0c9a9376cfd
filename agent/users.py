"""A container's `user` resolved from its image's /etc/passwd and /etc/group, as Docker does
(issue 12): `name`, `uid`, `name:group`, `uid:group`, `name:gid`, `uid:gid`.

- the user: a passwd name, or a number (its passwd entry, when there is one, gives the
  primary group and HOME; without one the primary group is 0 and HOME is /);
- the group, when given: a group name or a number; it replaces the primary group, and no
  supplementary groups are added;
- without a group: the passwd entry's group, plus every /etc/group entry that lists the user
  by name as a member (the supplementary groups, OCI `additionalGids`);
- HOME: the passwd entry's home directory, set only when the environment has no HOME.

An unknown name is an InvalidInput naming the user and the image. The files are read from
the container's prepared snapshot (its overlay lowerdirs, top layer first) without
following any symbolic link: a link in an image must never make the agent read a host file.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

from agent.errors import InvalidInput

__all__ = ["ExecUser", "is_numeric", "read_image_file", "resolve"]

_MAX_FILE = 4 * 1024 * 1024  # an /etc/passwd larger than this is not read (not Docker's)


@dataclass(frozen=True)
class ExecUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"


def is_numeric(user: str) -> bool:
    """`uid` or `uid:gid` (and root): what needs no file of the image."""
    uid, _, gid = user.partition(":")
    return all(part == "root" or (part.isascii() and part.isdigit()) for part in (uid, gid or "0"))


def _entries(text: str | None, fields: int) -> list[list[str]]:
    out = []
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "+", "-")):  # comments, NIS lines: skipped
            continue
        parts = line.split(":")
        if len(parts) >= fields:
            out.append(parts)
    return out


def _number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 10 else None


def resolve(user: str, passwd: str | None, group: str | None, *, image: str) -> ExecUser:
    """`user` against the image's passwd and group texts (None: the file does not exist)."""
    name, has_group, group_arg = user.partition(":")
    entries = _entries(passwd, 7)  # name:x:uid:gid:gecos:home:shell
    found = next((e for e in entries if e[0] == name), None)
    uid = _number(name)
    if found is None and uid is not None:
        found = next((e for e in entries if _number(e[2]) == uid), None)
    if found is None and uid is None:
        if name == "root":  # Docker needs no passwd file for root either
            uid = 0
        else:
            where = "has no /etc/passwd" if passwd is None else "has no such user in /etc/passwd"
            raise InvalidInput(f"user {user!r}: unknown user {name!r}: the image {image} {where}")
    if found is not None:
        uid, gid, home = _number(found[2]), _number(found[3]), found[5] or "/"
        if uid is None or gid is None:
            raise InvalidInput(
                f"user {user!r}: the image {image}'s /etc/passwd entry for {found[0]!r} has "
                "no numeric uid and gid"
            )
    else:
        gid, home = 0, "/"
    assert uid is not None
    groups = _entries(group, 4)  # name:x:gid:member,member
    if has_group:
        if not group_arg:
            raise InvalidInput(f"user {user!r}: the group after ':' is empty")
        entry = next((g for g in groups if g[0] == group_arg), None)
        picked = _number(entry[2]) if entry is not None else _number(group_arg)
        if picked is None:
            where = "has no /etc/group" if group is None else "has no such group in /etc/group"
            raise InvalidInput(
                f"user {user!r}: unknown group {group_arg!r}: the image {image} {where}"
            )
        return ExecUser(uid, picked, (), home)
    extra: list[int] = []
    if found is not None:
        for g in groups:
            number = _number(g[2])
            if number is not None and found[0] in g[3].split(",") and number not in extra:
                extra.append(number)
    return ExecUser(uid, gid, tuple(extra), home)


def _open_beneath(root: str, parts: Sequence[str]) -> int | None:
    """An fd of root/parts[0]/.../parts[-1] opened without following a symbolic link at
    any step; None when a step is missing, is a link, or is an overlay whiteout."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (0 if last else os.O_DIRECTORY)
            if last:
                flags |= os.O_NONBLOCK  # a FIFO in an image must not block the agent
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
                    return None
                raise
            os.close(fd)
            fd = nxt
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a whiteout is a character device
            return None
        out, fd = fd, -1
        return out
    finally:
        if fd >= 0:
            os.close(fd)


def _lower_dirs(mounts: Sequence[object]) -> list[str]:
    """The directories of a rootfs, topmost first: an overlay's upperdir then lowerdirs, or a
    bind mount's source."""
    dirs: list[str] = []
    for m in mounts:
        kind, source = getattr(m, "type", ""), getattr(m, "source", "")
        options: Sequence[str] = getattr(m, "options", ())
        if kind == "overlay":
            for o in options:
                if o.startswith("upperdir="):
                    dirs.insert(0, o.removeprefix("upperdir="))
            for o in options:
                if o.startswith("lowerdir="):
                    dirs.extend(o.removeprefix("lowerdir=").split(":"))
        elif kind == "bind" or "bind" in options or "rbind" in options:
            dirs.append(source)
    return dirs


def read_image_file(mounts: Sequence[object], path: str) -> str | None:
    """The text of `path` (e.g. "/etc/passwd") in the rootfs the mounts describe, None if it
    is not there (or is a link, a whiteout, not a regular file). Blocking."""
    parts = [p for p in path.split("/") if p]
    for d in _lower_dirs(mounts):
        try:
            fd = _open_beneath(d, parts)
        except OSError:
            continue
        if fd is None:
            # A whiteout or link hides the lower layers' file; a missing one does not.
            if _hidden(d, parts):
                return None
            continue
        with os.fdopen(fd, "rb") as f:
            data = f.read(_MAX_FILE + 1)
        if len(data) > _MAX_FILE:
            raise InvalidInput(f"{path} in the image is larger than {_MAX_FILE} bytes")
        return data.decode("utf-8", "replace")
    return None


def _hidden(d: str, parts: Sequence[str]) -> bool:
    """Whether this layer has an entry at the path (a whiteout, a link, a directory...)."""
    try:
        os.lstat(os.path.join(d, *parts))
    except OSError:
        return False
    return True
