"""The local secret store, and the secrets step of the lifecycle.

ECS resolves `secrets[].valueFrom` from Secrets Manager or SSM Parameter Store. nstask
resolves them from a root-only directory under the agent's state dir (`<state>/secrets`,
mode 0700, one file per secret, mode 0600). `valueFrom` maps to a local name with
`agent.taskdef.local_secret_name` (an ARN's secret or parameter name; a plain name as is).

Values are read only while a container's environment is built, kept in memory only for
that, and never logged, stored in the state database or returned by the API.
"""

from __future__ import annotations

import base64
import os
import re
import stat
from pathlib import Path
from typing import Protocol

from agent.errors import InvalidInput, NotFound
from agent.taskdef import local_secret_name

_NAME_RE = re.compile(r"^[A-Za-z0-9/_+=.@:-]{1,512}$")
MAX_SECRET_BYTES = 64 * 1024  # Secrets Manager's limit


class SecretNotFound(NotFound):
    kind = "secret_not_found"


def _check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"secret name {name!r} is not valid: use 1-512 letters, digits and /_+=.@:-"
        )


class SecretLookup(Protocol):
    """What a container's environment is built from: a value by its `valueFrom`
    (the local store, or the values agent.secret_sources resolved for one start)."""

    def value_of(self, value_from: str) -> str: ...


class SecretStore:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _path(self, name: str) -> Path:
        _check_name(name)
        # The name may hold '/', as SSM parameter paths do: encode it into one file name.
        return self.dir / base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")

    def _ensure_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)

    def put(self, name: str, value: str) -> None:
        data = value.encode()
        if len(data) > MAX_SECRET_BYTES:
            raise InvalidInput(f"secret {name!r} is larger than {MAX_SECRET_BYTES} bytes")
        path = self._path(name)
        self._ensure_dir()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def get(self, name: str) -> str:
        try:
            return self._path(name).read_text()
        except FileNotFoundError:
            raise SecretNotFound(
                f"secret {name!r} is not in the local secret store; "
                f"add it with `nstask secret put {name}`",
                secret=name,
            ) from None

    def value_of(self, value_from: str) -> str:
        return self.get(local_secret_name(value_from))

    def has(self, name: str) -> bool:
        return self._path(name).exists()

    def names(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.iterdir():
            if p.suffix == ".tmp":
                continue
            padded = p.name + "=" * (-len(p.name) % 4)
            out.append(base64.urlsafe_b64decode(padded).decode())
        return sorted(out)

    def remove(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            raise SecretNotFound(f"secret {name!r} is not in the local secret store") from None


# An environment file is read whole into memory: bound it. ECS documents no size limit for
# the S3 files; this bound is far above any real one (a container's whole environment must
# also fit the kernel's argument limit) and keeps /dev/zero or a huge file out.
MAX_ENV_FILE_BYTES = 5 * 1024 * 1024


def read_env_file(path: str) -> list[tuple[str, str]]:
    """An ECS environment file: VARIABLE=VALUE lines; blank lines and # comments skipped.

    Blocking file work: callers on the event loop run it in a thread. Only a regular file is
    read (a FIFO would block the reader forever, a device never end), and at most
    MAX_ENV_FILE_BYTES of it."""
    local = path.removeprefix("file://")
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
        fd = os.open(local, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise InvalidInput(f"environment file {path}: {e.strerror}", path=path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput(
                f"environment file {path}: not a regular file ({_file_kind(st.st_mode)})",
                path=path,
            )
        if st.st_size > MAX_ENV_FILE_BYTES:
            raise InvalidInput(
                f"environment file {path}: {st.st_size} bytes, larger than the limit of "
                f"{MAX_ENV_FILE_BYTES} bytes",
                path=path,
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_ENV_FILE_BYTES + 1)
    except OSError as e:
        raise InvalidInput(f"environment file {path}: {e.strerror}", path=path) from None
    finally:
        os.close(fd)
    if len(data) > MAX_ENV_FILE_BYTES:  # it grew while being read
        raise InvalidInput(
            f"environment file {path}: larger than the limit of {MAX_ENV_FILE_BYTES} bytes",
            path=path,
        )
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        raise InvalidInput(
            f"environment file {path}: not UTF-8 text ({e.reason} at byte {e.start})", path=path
        ) from None
    out: list[tuple[str, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"environment file {path}, line {n}: expected VARIABLE=VALUE")
        if "\0" in key or "\0" in value:
            raise InvalidInput(f"environment file {path}, line {n}: holds a NUL character")
        out.append((key.strip(), value))
    return out


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"
