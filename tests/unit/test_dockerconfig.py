"""Registry credentials from a docker config.json (agent.dockerconfig): auths with
identitytoken, credsStore and credHelpers through the docker-credential-* protocol, at the
exec seam (a recorder), plus one real helper process."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from agent import dockerconfig
from agent.dockerconfig import CredentialHelperError
from agent.registry import AuthError, Credentials


class Helpers:
    """The exec seam: answers per helper name, and records what each was asked."""

    def __init__(self, answers: dict[str, tuple[int, str, str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], str]] = []

    def __call__(self, argv: list[str], stdin: str) -> tuple[int, str, str]:
        self.calls.append((argv, stdin))
        return self.answers[argv[0]]


def _write(tmp_path: Path, doc: dict[str, object]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return path


def _answer(user: str, secret: str, server: str = "x") -> tuple[int, str, str]:
    return 0, json.dumps({"ServerURL": server, "Username": user, "Secret": secret}), ""


def test_cred_helpers_win_over_creds_store_and_auths(tmp_path: Path) -> None:
    auth = base64.b64encode(b"file:pw").decode()
    path = _write(
        tmp_path,
        {
            "auths": {"reg.example.com": {"auth": auth}, "other.example.com": {"auth": auth}},
            "credsStore": "store",
            "credHelpers": {"reg.example.com": "special"},
        },
    )
    run = Helpers(
        {
            "docker-credential-special": _answer("helper-user", "helper-pw"),
            "docker-credential-store": (1, "credentials not found in native keychain\n", ""),
        }
    )
    got = dockerconfig.credentials_for("reg.example.com", path, runner=run)
    assert got == Credentials("helper-user", "helper-pw")
    assert run.calls == [(["docker-credential-special", "get"], "reg.example.com")]
    # No credHelpers entry: the store is asked; it has none, so auths answers.
    assert dockerconfig.credentials_for("other.example.com", path, runner=run) == Credentials(
        "file", "pw"
    )
    assert run.calls[-1] == (["docker-credential-store", "get"], "other.example.com")


def test_a_token_username_means_an_identity_token(tmp_path: Path) -> None:
    path = _write(tmp_path, {"credsStore": "store"})
    run = Helpers({"docker-credential-store": _answer("<token>", "REFRESH")})
    got = dockerconfig.credentials_for("docker.io", path, runner=run)
    assert got == Credentials("", "", identity_token="REFRESH")
    assert run.calls[0][1] == "https://index.docker.io/v1/"  # Docker Hub's server URL


def test_identitytoken_in_auths(tmp_path: Path) -> None:
    path = _write(tmp_path, {"auths": {"https://reg.example.com": {"identitytoken": "RT"}}})
    got = dockerconfig.credentials_for("reg.example.com", path)
    assert got == Credentials("", "", identity_token="RT")


def test_helper_failures_are_clear_errors_without_secrets(tmp_path: Path) -> None:
    path = _write(tmp_path, {"credHelpers": {"reg.example.com": "broken"}})
    run = Helpers({"docker-credential-broken": (3, "", "keychain locked\n")})
    with pytest.raises(CredentialHelperError, match=r"docker-credential-broken failed \(exit 3\)"):
        dockerconfig.credentials_for("reg.example.com", path, runner=run)
    run = Helpers({"docker-credential-broken": (0, "not json", "")})
    with pytest.raises(CredentialHelperError, match="answered no"):
        dockerconfig.credentials_for("reg.example.com", path, runner=run)
    missing = _write(tmp_path, {"credHelpers": {"reg.example.com": "nstask-absent"}})
    with pytest.raises(CredentialHelperError, match="docker-credential-nstask-absent is not on"):
        dockerconfig.credentials_for("reg.example.com", missing)
    pathy = _write(tmp_path, {"credsStore": "../../tmp/x"})
    with pytest.raises(CredentialHelperError, match="not a path"):
        dockerconfig.credentials_for("reg.example.com", pathy, runner=run)
    assert issubclass(CredentialHelperError, AuthError)


def test_a_real_helper_process_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helper = tmp_path / "bin" / "docker-credential-nstaskunit"
    helper.parent.mkdir()
    helper.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || exit 2\n'
        "read -r server\n"
        'printf \'{"ServerURL":"%s","Username":"u-%s","Secret":"s"}\' "$server" "$server"\n'
    )
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{helper.parent}{os.pathsep}{os.environ['PATH']}")
    path = _write(tmp_path, {"credHelpers": {"127.0.0.1:5000": "nstaskunit"}})
    got = dockerconfig.credentials_for("127.0.0.1:5000", path)
    assert got == Credentials("u-127.0.0.1:5000", "s")


def test_which_config_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dc"))
    assert dockerconfig.config_file() == tmp_path / "dc" / "config.json"
    assert dockerconfig.config_file(tmp_path) == tmp_path / "config.json"  # a directory
    assert dockerconfig.config_file(tmp_path / "my.json") == tmp_path / "my.json"
    monkeypatch.delenv("DOCKER_CONFIG")
    assert dockerconfig.config_file() == Path.home() / ".docker" / "config.json"
    assert dockerconfig.credentials_for("reg.example.com", tmp_path / "absent.json") is None


def test_repository_credentials_secret_shape() -> None:
    got = dockerconfig.from_secret('{"username": "a", "password": "b"}', parameter="p")
    assert got == Credentials("a", "b")
    for bad in ("s3cr3t", '{"user": "a"}', '["a"]', '{"username": "", "password": "x"}'):
        with pytest.raises(AuthError, match="repositoryCredentials p: the secret must hold") as e:
            dockerconfig.from_secret(bad, parameter="p")
        assert "s3cr3t" not in str(e.value)
