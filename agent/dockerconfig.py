"""Registry credentials where Docker users keep them: a docker-style config.json.

Which file: the agent's `docker_config` setting (NSTASK_DOCKER_CONFIG: a config.json, or a
directory holding one), else `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json` of
the agent's user (root: /root/.docker/config.json).

For a registry host, in Docker's order:

1. `credHelpers[host]`: the credential helper named there (`docker-credential-<name>`);
2. `credsStore`: the helper that holds every registry's credentials;
3. `auths[host]` (also keyed by URL): base64 `auth` = user:password, or username/password,
   and/or `identitytoken` (an OAuth2 refresh token for the registry's token service).

A helper is run as Docker runs it (the docker-credential-helpers protocol): `<helper> get`
with the server URL on stdin; it answers JSON {ServerURL, Username, Secret} on stdout. A
Username of `<token>` means Secret is an identity token. "credentials not found" (exit non-
zero with that text) means the helper has none: the next source is asked. A helper that is
missing, fails otherwise or answers garbage is an error (CredentialHelperError, an AuthError):
Docker too fails the pull then. Private ECR is a `credHelpers` entry naming `ecr-login`
(amazon-ecr-credential-helper's docker-credential-ecr-login, which uses the agent's AWS
credentials). Secrets never reach a log line or an error message.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent.registry import DOCKER_HUB, AuthError, Credentials

__all__ = [
    "HELPER_PREFIX",
    "TOKEN_USER",
    "CredentialHelperError",
    "HelperRunner",
    "config_file",
    "credentials_for",
    "from_secret",
    "run_helper",
]

HELPER_PREFIX = "docker-credential-"
# The Username a helper answers when Secret is an identity token (docker-credential-helpers).
TOKEN_USER = "<token>"
_HUB_SERVER = "https://index.docker.io/v1/"
# A helper may ask a keychain or a cloud API (ecr-login calls ECR): give it time, not forever.
_HELPER_TIMEOUT = 30.0


class CredentialHelperError(AuthError):
    """A credential helper named by config.json is missing or failed."""

    kind = "credential_helper_failed"


# (argv, stdin text) -> (exit code, stdout, stderr): the one exec seam (tests replace it).
HelperRunner = Callable[[list[str], str], tuple[int, str, str]]


def _run(argv: list[str], stdin: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=_HELPER_TIMEOUT, check=False
    )
    return proc.returncode, proc.stdout, proc.stderr


def config_file(setting: str | Path | None = None) -> Path:
    """The config.json in use (see the module doc); a directory setting means its
    config.json, as DOCKER_CONFIG does."""
    if setting:
        path = Path(setting)
        return path / "config.json" if path.is_dir() else path
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def _server_url(registry: str) -> str:
    """What Docker hands a helper for a registry: the host (Docker Hub's legacy URL)."""
    return _HUB_SERVER if registry == DOCKER_HUB else registry


def run_helper(
    name: str, registry: str, *, runner: HelperRunner | None = None
) -> Credentials | None:
    """`docker-credential-<name> get` for `registry`; None when it holds nothing for it."""
    helper = HELPER_PREFIX + name
    if not name or "/" in name or name != name.strip():
        raise CredentialHelperError(
            f"registry {registry}: config.json names credential helper {name!r}: a helper "
            "is a name (docker-credential-<name> on the agent's PATH), not a path",
            registry=registry,
            helper=helper,
        )
    if runner is None:
        if shutil.which(helper) is None:
            raise CredentialHelperError(
                f"registry {registry}: config.json names credential helper {name!r}, but "
                f"{helper} is not on the agent's PATH",
                registry=registry,
                helper=helper,
            )
        runner = _run
    try:
        code, out, err = runner([helper, "get"], _server_url(registry))
    except (OSError, subprocess.SubprocessError) as e:
        raise CredentialHelperError(
            f"registry {registry}: credential helper {helper} could not run: {e}",
            registry=registry,
            helper=helper,
        ) from None
    if code != 0:
        said = (out.strip() or err.strip())[:200]
        if "credentials not found" in said.lower():
            return None
        raise CredentialHelperError(
            f"registry {registry}: credential helper {helper} failed (exit {code}): {said}",
            registry=registry,
            helper=helper,
        )
    try:
        answer = json.loads(out)
        user, secret = answer.get("Username", ""), answer["Secret"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CredentialHelperError(
            f"registry {registry}: credential helper {helper} answered no "
            "{ServerURL, Username, Secret} JSON",
            registry=registry,
            helper=helper,
        ) from None
    if not isinstance(user, str) or not isinstance(secret, str) or not secret:
        return None
    if user == TOKEN_USER:
        return Credentials("", "", identity_token=secret)
    return Credentials(user, secret)


def _entry_credentials(entry: Mapping[str, Any]) -> Credentials | None:
    """An `auths` entry: `auth` (base64 user:password) or username/password, and
    `identitytoken`."""
    user = password = ""
    if entry.get("auth"):
        try:
            raw = base64.b64decode(str(entry["auth"])).decode()
        except (ValueError, UnicodeDecodeError):
            raw = ""
        user, sep, password = raw.partition(":")
        if not sep:
            user = password = ""
    elif entry.get("username"):
        user, password = str(entry["username"]), str(entry.get("password", ""))
    token = entry.get("identitytoken")
    token = token if isinstance(token, str) and token else None
    if not user and token is None:
        return None
    return Credentials(user, password, identity_token=token)


def _auths_entry(auths: Mapping[str, Any], registry: str) -> Credentials | None:
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    if registry == DOCKER_HUB:
        keys += [_HUB_SERVER, "index.docker.io", "registry-1.docker.io"]
    for key in keys:
        entry = auths.get(key) or auths.get(key + "/")
        if isinstance(entry, Mapping):
            found = _entry_credentials(entry)
            if found:
                return found
    return None


def credentials_for(
    registry: str,
    config_path: str | Path | None = None,
    *,
    runner: HelperRunner | None = None,
) -> Credentials | None:
    """The credentials config.json gives for `registry` (see the module doc); None when it
    has none (or there is no readable config.json). Blocking: helpers are processes."""
    try:
        doc = json.loads(config_file(config_path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, Mapping):
        return None
    helpers = doc.get("credHelpers")
    if isinstance(helpers, Mapping):
        name = helpers.get(registry)
        if registry == DOCKER_HUB and not name:
            name = helpers.get(_HUB_SERVER) or helpers.get("index.docker.io")
        if isinstance(name, str) and name:
            return run_helper(name, registry, runner=runner)
    store = doc.get("credsStore")
    if isinstance(store, str) and store:
        found = run_helper(store, registry, runner=runner)
        if found:
            return found
    auths = doc.get("auths")
    return _auths_entry(auths, registry) if isinstance(auths, Mapping) else None


def from_secret(value: str, *, parameter: str) -> Credentials:
    """repositoryCredentials: the secret `parameter` names holds JSON {"username",
    "password"} (as ECS expects of it). The message names the parameter, never the value."""
    try:
        doc = json.loads(value)
        user, password = doc["username"], doc["password"]
    except (ValueError, KeyError, TypeError):
        user = password = None
    if not isinstance(user, str) or not isinstance(password, str) or not user:
        raise AuthError(
            f"repositoryCredentials {parameter}: the secret must hold JSON "
            '{"username": ..., "password": ...}',
            secret=parameter,
        )
    return Credentials(user, password)
