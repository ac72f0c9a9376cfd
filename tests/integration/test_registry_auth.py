"""Registry credentials and the `default` pull behaviour's fallback, against real registries
(Debian's docker-registry) on 127.0.0.1: one with Basic auth (htpasswd), one with token
auth whose token service is this test's own small server (it signs the JWTs the real
registry verifies, and answers the OAuth2 refresh-token grant of an identity token).

The agent of this module runs with pull behaviour `default`, a config.json of the test's
own (NSTASK_DOCKER_CONFIG) and a PATH holding a credential helper script
(docker-credential-nstasktest)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import json
import os
import socket
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import structlog.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from support import CTR_SOCK, Agent, busybox_task, ctr, leaks, write_taskdef
from test_pull import Registry, _free_port

from agent import images, pull
from agent.containerd import Containerd, ContainerdUnavailable, purge_namespace
from agent.errors import ContainerdError

USER, PASSWORD = "nstask", "s3cret"
REFRESH = "nstask-refresh-token-1"


# --- the test's own peers: a token service, a containerd socket that can be cut ------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _libtrust_kid(key: rsa.RSAPrivateKey) -> str:
    """The key id docker-registry gives a trusted key: base32 of the first 240 bits of the
    SHA-256 of its DER public key, in groups of four."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(text[i : i + 4] for i in range(0, len(text), 4))


class TokenService:
    """GET /token with Basic USER:PASSWORD, or POST /token with the refresh-token grant of
    REFRESH: a JWT for the asked scope, signed with a key whose certificate the registry
    trusts. Records every request (method, the grant form or the query)."""

    def __init__(self, base: Path) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nstask-test-token")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        self.cert = base / "token.pem"
        self.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.requests: list[tuple[str, dict[str, str]]] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
                service.requests.append(("GET", query))
                wanted = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != wanted:
                    self._answer(401, {"details": "bad credentials"})
                    return
                jwt = service.token(query.get("scope", ""))
                self._answer(200, {"token": jwt, "access_token": jwt})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                service.requests.append(("POST", form))
                grant = (form.get("grant_type"), form.get("refresh_token"))
                if grant != ("refresh_token", REFRESH):
                    self._answer(400, {"error": "invalid_grant"})
                    return
                self._answer(200, {"access_token": service.token(form.get("scope", ""))})

            def _answer(self, status: int, body: dict[str, str]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def token(self, scope: str) -> str:
        access = []
        for item in scope.split():
            kind, _, rest = item.partition(":")
            repo, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": repo, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": "nstask-test-issuer",
            "sub": USER,
            "aud": "nstask-test",
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        header = {"typ": "JWT", "alg": "RS256", "kid": _libtrust_kid(self.key)}
        signed = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = self.key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signed}.{_b64url(sig)}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def token_registry(base: Path, service: TokenService) -> Registry:
    """docker-registry with token auth against `service`."""
    return Registry(
        base,
        auth=(
            f"auth:\n  token:\n    realm: {service.realm}\n    service: nstask-test\n"
            f"    issuer: nstask-test-issuer\n    rootcertbundle: {service.cert}\n"
        ),
    )


class CuttableSocket:
    """A unix socket forwarding to containerd's, which `cut` closes with every connection:
    the real containerd, gone from the client's point of view at a moment the test picks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen()
        self.conns: list[socket.socket] = []
        self.cut_done = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(CTR_SOCK)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self.cut_done:
            return
        self.cut_done = True
        self.listener.close()
        self.path.unlink(missing_ok=True)
        for s in self.conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("authimg")
    rootfs = d / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (rootfs / "bin" / "busybox").chmod(0o755)
    for applet in ("sh", "cat"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "hello").write_text("private image\n")
    (rootfs / "nonce").write_bytes(os.urandom(16))
    images.pack(rootfs, "nstask.local/private:1", d / "img.tar", cmd=["cat", "/hello"])
    return d / "img.tar"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agent's config.json directory and the bin directory of its credential helper."""
    d = tmp_path_factory.mktemp("dockerhome")
    (d / "bin").mkdir()
    helper = d / "bin" / "docker-credential-nstasktest"
    # The helper protocol: `get`, the server on stdin, {ServerURL, Username, Secret} out;
    # what it was asked goes to helper.log.
    helper.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || exit 2\n'
        "read -r server\n"
        f'echo "$server" >> {d}/helper.log\n'
        f'printf \'{{"ServerURL":"%s","Username":"{USER}","Secret":"{PASSWORD}"}}\' "$server"\n'
    )
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    (d / "config.json").write_text("{}")
    return d


@pytest.fixture(scope="module")
def auth_agent(home: Path) -> Iterator[Agent]:
    from conftest import start_agent, stop_agent

    a, proc, base = start_agent(
        extra_env={
            "NSTASK_PULL_POLICY": "default",
            "NSTASK_DOCKER_CONFIG": str(home / "config.json"),
            "PATH": f"{home / 'bin'}:{os.environ['PATH']}",
        }
    )
    try:
        yield a
    finally:
        stop_agent(a, proc, base)


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory, archive: Path) -> Iterator[Registry]:
    base = tmp_path_factory.mktemp("basicreg")
    htpasswd = base / "htpasswd"
    subprocess.run(
        ["htpasswd", "-Bbc", str(htpasswd), USER, PASSWORD], check=True, capture_output=True
    )
    reg = Registry(base / "reg", htpasswd=htpasswd)
    reg.push(archive, "team/private:1", creds=f"{USER}:{PASSWORD}")
    yield reg
    reg.stop()


def _config(home: Path, doc: dict[str, Any]) -> None:
    (home / "config.json").write_text(json.dumps(doc))


def _run(agent: Agent, tmp_path: Path, image: str, **container: object) -> Any:
    td = busybox_task("auth", ["cat", "/hello"], **container)
    td["containerDefinitions"][0]["image"] = image  # type: ignore[index]
    return agent.cli("run", "--rm", write_taskdef(tmp_path, td), timeout=90)


# --- credentials ------------------------------------------------------------------------------


def test_cred_helpers_and_creds_store_run_the_docker_credential_helper(
    auth_agent: Agent, basic_registry: Registry, home: Path, tmp_path: Path
) -> None:
    image = f"{basic_registry.host}/team/private:1"
    _config(home, {})
    refused = _run(auth_agent, tmp_path, image)
    assert refused.returncode != 0 and "needs credentials" in refused.stderr + refused.stdout
    _config(home, {"credHelpers": {basic_registry.host: "nstasktest"}})
    ran = _run(auth_agent, tmp_path, image)
    assert ran.returncode == 0, ran.stderr + auth_agent.log_tail()
    assert ran.stdout == "private image\n"
    assert (home / "helper.log").read_text().split()[-1] == basic_registry.host
    # credsStore: the same helper for every registry.
    ctr(auth_agent.namespace, "images", "rm", "--sync", image)
    _config(home, {"credsStore": "nstasktest"})
    again = _run(auth_agent, tmp_path, image)
    assert again.returncode == 0, again.stderr
    assert PASSWORD not in auth_agent.log_path.read_text()
    assert not leaks(auth_agent)


def test_repository_credentials_from_the_local_secret_store(
    auth_agent: Agent, basic_registry: Registry, home: Path, tmp_path: Path
) -> None:
    image = f"{basic_registry.host}/team/private:1"
    _config(home, {})
    with_ns = ctr(auth_agent.namespace, "images", "ls", "-q").split()
    if image in with_ns:
        ctr(auth_agent.namespace, "images", "rm", "--sync", image)
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:nstask/regcreds-AbCdEf"
    creds = {"credentialsParameter": arn}
    missing = _run(auth_agent, tmp_path, image, repositoryCredentials=creds)
    assert missing.returncode != 0 and "nstask/regcreds" in missing.stderr
    value = json.dumps({"username": USER, "password": PASSWORD})
    auth_agent.cli("secret", "put", "nstask/regcreds", input=value, check=True)
    try:
        ran = _run(auth_agent, tmp_path, image, repositoryCredentials=creds)
        assert ran.returncode == 0, ran.stderr + auth_agent.log_tail()
        assert ran.stdout == "private image\n"
        assert PASSWORD not in auth_agent.log_path.read_text()
    finally:
        auth_agent.cli("secret", "rm", "nstask/regcreds")
    assert not leaks(auth_agent)


def test_token_auth_with_an_identity_token(
    auth_agent: Agent, archive: Path, home: Path, tmp_path: Path
) -> None:
    service = TokenService(tmp_path)
    reg = token_registry(tmp_path / "tokreg", service)
    try:
        reg.push(archive, "team/tok:1", creds=f"{USER}:{PASSWORD}")
        image = f"{reg.host}/team/tok:1"
        _config(home, {"auths": {reg.host: {"identitytoken": "stale-token"}}})
        refused = auth_agent.cli("image", "pull", image, timeout=60)
        assert refused.returncode == 1 and "refused the identity token" in refused.stderr
        assert "stale-token" not in refused.stderr
        _config(home, {"auths": {reg.host: {"identitytoken": REFRESH}}})
        service.requests.clear()
        pulled = auth_agent.cli("image", "pull", image, timeout=60)
        assert pulled.returncode == 0, pulled.stderr
        grants = [form for method, form in service.requests if method == "POST"]
        assert grants and all(g["grant_type"] == "refresh_token" for g in grants)
        assert grants[0]["scope"] == "repository:team/tok:pull"
        assert grants[0]["service"] == "nstask-test"
        assert not [r for r in service.requests if r[0] == "GET"]  # no password was used
        ran = _run(auth_agent, tmp_path, image)
        assert ran.returncode == 0 and ran.stdout == "private image\n", ran.stderr
        # A credential helper answering `<token>` gives an identity token too.
        helper = home / "bin" / "docker-credential-nstasktoken"
        helper.write_text(
            "#!/bin/sh\nread -r server\n"
            f'printf \'{{"ServerURL":"%s","Username":"<token>","Secret":"{REFRESH}"}}\' '
            '"$server"\n'
        )
        helper.chmod(0o700)
        _config(home, {"credHelpers": {reg.host: "nstasktoken"}})
        service.requests.clear()
        assert auth_agent.cli("image", "pull", image, timeout=60).returncode == 0
        assert [m for m, _ in service.requests] and {m for m, _ in service.requests} == {"POST"}
    finally:
        reg.stop()
        service.stop()
    assert not leaks(auth_agent)


# --- the default pull behaviour's fallback ----------------------------------------------------


def test_default_falls_back_to_the_cached_image_on_any_registry_failure(
    auth_agent: Agent, archive: Path, basic_registry: Registry, home: Path, tmp_path: Path
) -> None:
    """Registry down, auth refused, manifest unknown: the task runs the cached image and the
    agent logs why; without a cached image the task fails with the registry's error."""
    own = Registry(tmp_path / "own")
    own.push(archive, "team/app:1")
    image = f"{own.host}/team/app:1"
    _config(home, {})
    assert auth_agent.cli("image", "pull", image, timeout=60).returncode == 0
    # The same image as if pulled before from the private registry / under a tag it lacks.
    private = f"{basic_registry.host}/team/private:1"
    unknown = f"{own.host}/team/app:gone"
    ns = auth_agent.namespace
    for name in (private, unknown):
        if name in ctr(ns, "images", "ls", "-q").split():
            ctr(ns, "images", "rm", "--sync", name)
        ctr(ns, "images", "tag", image, name)
    own_stopped = False
    try:
        for name, cause in ((private, "auth_refused"), (unknown, "image_not_found")):
            ran = _run(auth_agent, tmp_path, name)
            assert ran.returncode == 0 and ran.stdout == "private image\n", ran.stderr
            assert _fell_back(auth_agent, name, cause)
        own.stop()
        own_stopped = True
        ran = _run(auth_agent, tmp_path, image)
        assert ran.returncode == 0 and ran.stdout == "private image\n", ran.stderr
        assert _fell_back(auth_agent, image, "registry_unavailable")
        # Nothing cached: nothing to fall back to.
        gone = f"127.0.0.1:{_free_port()}/team/app:1"
        failed = _run(auth_agent, tmp_path, gone)
        assert failed.returncode != 0 and "unreachable" in failed.stderr + failed.stdout
    finally:
        if not own_stopped:
            own.stop()
    assert not leaks(auth_agent)


def _fell_back(agent: Agent, image: str, kind: str) -> bool:
    for line in agent.log_path.read_text().splitlines():
        if "image.pull_failed_using_cached" in line and image in line and kind in line:
            return True
    return False


def test_containerd_failing_mid_pull_is_containerds_error_not_a_fallback(
    basic_registry: Registry, archive: Path, tmp_path: Path
) -> None:
    """containerd goes away during a `default` pull of a cached image from a reachable
    registry: the error is containerd's (ContainerdUnavailable), no fallback is logged."""
    own = Registry(tmp_path / "reg")
    own.push(archive, "team/app:1")
    image = f"{own.host}/team/app:1"
    namespace = f"nstask-test-{os.urandom(4).hex()}"

    async def main() -> None:
        real = Containerd(address=CTR_SOCK, namespace=namespace)
        cut = CuttableSocket(tmp_path / "nstask-ctr.sock")
        client = Containerd(address=str(cut.path), namespace=namespace)
        try:
            await real.ensure_namespace()
            await pull.ensure_image(real, image, policy="always", snapshotter="overlayfs")
            with (
                structlog.testing.capture_logs() as logs,
                pytest.raises((ContainerdUnavailable, ContainerdError), match="containerd"),
            ):
                await pull.ensure_image(
                    client,
                    image,
                    policy="default",
                    snapshotter="overlayfs",
                    progress=lambda _: cut.cut(),
                    docker_config=tmp_path / "absent.json",
                )
            assert not [x for x in logs if x["event"] == "image.pull_failed_using_cached"]
        finally:
            cut.cut()
            await client.close()
            await purge_namespace(real)
            await real.close()

    try:
        asyncio.run(main())
    finally:
        own.stop()
    assert namespace not in ctr("default", "namespaces", "ls", "-q").split()
