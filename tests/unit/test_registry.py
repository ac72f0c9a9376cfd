"""The registry client: Docker's reference normalisation, config.json credentials, the
platform choice, and the distribution API against a small fake registry served by aiohttp
on 127.0.0.1 (the HTTP seam: the real docker-registry runs in the integration tests, which
cannot give a Bearer token service, a schema-1 manifest or a 503)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import platform
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent import images, registry
from agent.errors import ImageNotFound, InvalidInput, Unavailable
from agent.registry import AuthError, Credentials, PullError, RegistryClient


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/redis:7", "docker.io/library/redis:7"),
        ("team/app", "docker.io/team/app:latest"),
        ("index.docker.io/library/nginx", "docker.io/library/nginx:latest"),
        ("public.ecr.aws/docker/library/nginx", "public.ecr.aws/docker/library/nginx:latest"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/team/app:v1.2", "localhost:5000/team/app:v1.2"),
        ("registry.example.com:5000/a/b/c@sha256:" + "a" * 64,
         "registry.example.com:5000/a/b/c@sha256:" + "a" * 64),
        ("app:1@sha256:" + "b" * 64, "docker.io/library/app:1@sha256:" + "b" * 64),
    ],
)  # fmt: skip
def test_references_normalise_as_docker_does(text: str, expected: str) -> None:
    assert registry.normalize_ref(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "Busybox", "team/App:1", "app:bad tag", "app@sha256:xyz", "app:", "a" * 64, " app"],
)
def test_malformed_references_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        registry.parse_reference(text)


def test_reference_parts() -> None:
    ref = registry.parse_reference("busybox@sha256:" + "c" * 64)
    assert (ref.registry, ref.repository, ref.tag) == ("docker.io", "library/busybox", None)
    assert ref.reference == "sha256:" + "c" * 64  # the digest is what is asked for
    assert ref.api_host == "registry-1.docker.io"


def test_credentials_from_a_docker_config(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    encoded = base64.b64encode(b"alice:pa:ss").decode()
    config.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": encoded},
                    "registry.example.com:5000": {"username": "bob", "password": "pw"},
                    "broken.example.com": {"auth": "!!!"},
                }
            }
        )
    )
    assert registry.credentials_for("docker.io", config) == Credentials("alice", "pa:ss")
    assert registry.credentials_for("registry.example.com:5000", config) == Credentials("bob", "pw")
    assert registry.credentials_for("broken.example.com", config) is None
    assert registry.credentials_for("other.example.com", config) is None
    assert registry.credentials_for("docker.io", tmp_path / "missing.json") is None
    assert "pw" not in repr(Credentials("bob", "pw"))


def _entry(arch: str, variant: str = "", os: str = "linux") -> dict[str, Any]:
    platform = {"os": os, "architecture": arch, **({"variant": variant} if variant else {})}
    return {"digest": f"sha256:{arch}{variant}{os}", "platform": platform}


@pytest.mark.parametrize(
    ("machine", "entries", "pick"),
    [
        ("x86_64", [_entry("arm64", "v8"), _entry("amd64")], "amd64"),
        ("x86_64", [_entry("amd64", os="windows"), _entry("unknown", os="unknown")], None),
        ("aarch64", [_entry("amd64"), _entry("arm64"), _entry("arm64", "v8")], "arm64v8"),
        ("aarch64", [_entry("arm", "v7"), _entry("arm64")], "arm64"),
        ("armv7l", [_entry("arm", "v6"), _entry("arm", "v7"), _entry("arm", "v8")], "armv7"),
    ],
)
def test_the_hosts_platform_is_chosen(
    monkeypatch: pytest.MonkeyPatch, machine: str, entries: list[dict[str, Any]], pick: str | None
) -> None:
    monkeypatch.setattr(platform, "machine", lambda: machine)
    chosen = images.choose_manifest(entries)
    assert (chosen["digest"].split(":")[1].removesuffix("linux") if chosen else None) == pick


# --- the distribution API against a fake registry -----------------------------------------

MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": images.MEDIA_MANIFEST,
        "config": {"mediaType": images.MEDIA_CONFIG, "digest": "sha256:" + "0" * 64, "size": 2},
        "layers": [],
    }
).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
SCHEMA1 = json.dumps({"schemaVersion": 1, "name": "team/app", "tag": "old"}).encode()


class FakeRegistry:
    """A registry for team/app behind a Bearer token service that wants `user`:`secret`
    when `private` (else hands anonymous tokens out), with a few odd manifests."""

    def __init__(self, *, private: bool) -> None:
        self.private = private
        self.token_requests: list[dict[str, str]] = []
        self.refresh_forms: list[dict[str, str]] = []
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self.token)
        app.router.add_post("/token", self.refresh)
        app.router.add_get("/v2/team/app/manifests/{ref}", self.manifest)
        app.router.add_get("/v2/team/app/blobs/{digest}", self.blob)
        return app

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests.append(dict(request.query))
        wanted = "Basic " + base64.b64encode(b"user:secret").decode()
        if self.private and request.headers.get("Authorization") != wanted:
            return web.Response(status=401)
        return web.json_response({"token": "T0KEN"})

    async def refresh(self, request: web.Request) -> web.Response:
        """The OAuth2 refresh-token grant: identity token REFRESH-1 is good."""
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.refresh_forms.append(form)
        if form.get("grant_type") != "refresh_token" or form.get("refresh_token") != "REFRESH-1":
            return web.json_response({"error": "invalid_grant"}, status=400)
        return web.json_response({"access_token": "T0KEN", "refresh_token": "REFRESH-2"})

    def _challenge(self) -> web.Response:
        realm = f"http://127.0.0.1:{self.port}/token"
        header = f'Bearer realm="{realm}",service="fake",scope="repository:team/app:pull"'
        body = {"errors": [{"code": "UNAUTHORIZED"}]}
        return web.json_response(body, status=401, headers={"WWW-Authenticate": header})

    async def manifest(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer T0KEN":
            return self._challenge()
        ref = request.match_info["ref"]
        if ref in ("1", MANIFEST_DIGEST):
            return web.Response(body=MANIFEST, content_type=images.MEDIA_MANIFEST)
        if ref == "old":
            mt = "application/vnd.docker.distribution.manifest.v1+prettyjws"
            return web.Response(body=SCHEMA1, content_type=mt)
        if ref == "helm":
            mt = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
            return web.Response(body=b'{"schemaVersion": 2}', content_type=mt)
        if ref == "busy":
            return web.Response(status=503)
        if ref.startswith("sha256:"):  # any other digest: serve a manifest that differs
            return web.Response(body=MANIFEST + b" ", content_type=images.MEDIA_MANIFEST)
        return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)

    async def blob(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer T0KEN":
            return self._challenge()
        data = b"0123456789"
        start = int(request.headers.get("Range", "bytes=0-")[6:].rstrip("-"))
        return web.Response(body=data[start:], status=206 if start else 200)


def _against(
    fake: FakeRegistry, body: Callable[[Callable[..., RegistryClient]], Awaitable[None]]
) -> None:
    """Serve `fake` on 127.0.0.1 and run `body` with a factory of clients for it."""

    async def main() -> None:
        runner = web.AppRunner(fake.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        fake.port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:

                def client(ref: str = "team/app:1", creds: Credentials | None = None) -> Any:
                    parsed = registry.parse_reference(f"127.0.0.1:{fake.port}/{ref}")
                    return RegistryClient(parsed, session, creds=creds)

                await body(client)
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_anonymous_bearer_token_flow() -> None:
    fake = FakeRegistry(private=False)

    async def body(client: Callable[..., RegistryClient]) -> None:
        desc, raw = await client().manifest("1")
        assert (desc.digest, desc.media_type, raw) == (
            MANIFEST_DIGEST,
            images.MEDIA_MANIFEST,
            MANIFEST,
        )
        by_digest, _ = await client().manifest(MANIFEST_DIGEST)
        assert by_digest.digest == MANIFEST_DIGEST

    _against(fake, body)
    assert fake.token_requests[0] == {"scope": "repository:team/app:pull", "service": "fake"}


def test_credentials_are_sent_to_the_token_service_and_refusals_named() -> None:
    fake = FakeRegistry(private=True)

    async def body(client: Callable[..., RegistryClient]) -> None:
        with pytest.raises(AuthError, match="needs credentials"):
            await client().manifest("1")
        with pytest.raises(AuthError, match="refused the credentials of user 'user'"):
            await client(creds=Credentials("user", "wrong")).manifest("1")
        desc, _ = await client(creds=Credentials("user", "secret")).manifest("1")
        assert desc.digest == MANIFEST_DIGEST

    _against(fake, body)


def test_manifest_problems_are_clear_errors() -> None:
    async def body(client: Callable[..., RegistryClient]) -> None:
        with pytest.raises(PullError, match="schema 1"):
            await client("team/app:old").manifest("old")
        with pytest.raises(PullError, match="unsupported manifest media type"):
            await client("team/app:helm").manifest("helm")
        with pytest.raises(ImageNotFound, match="team/app:nope: manifest nope"):
            await client("team/app:nope").manifest("nope")
        with pytest.raises(Unavailable, match="HTTP 503"):
            await client("team/app:busy").manifest("busy")
        other = "sha256:" + "e" * 64
        with pytest.raises(PullError, match="digest mismatch"):
            await client(f"team/app@{other}").manifest(other)

    _against(FakeRegistry(private=False), body)


def test_a_blob_resumes_with_a_range_request() -> None:
    async def body(client: Callable[..., RegistryClient]) -> None:
        async with await client().blob("sha256:" + "1" * 64, offset=4) as resp:
            assert (resp.status, await resp.read()) == (206, b"456789")

    _against(FakeRegistry(private=False), body)


def test_an_unreachable_registry_is_unavailable() -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            ref = registry.parse_reference("127.0.0.1:9/team/app:1")
            with pytest.raises(Unavailable, match=r"127\.0\.0\.1:9 is unreachable"):
                await RegistryClient(ref, session, creds=None).manifest("1")

    asyncio.run(main())


def test_plain_http_only_for_loopback_and_insecure_registries() -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:

            def base(name: str, insecure: tuple[str, ...] = ()) -> str:
                ref = registry.parse_reference(name)
                return RegistryClient(ref, session, creds=None, insecure=insecure).base

            assert base("localhost:5000/a").startswith("http://localhost:5000/v2/a")
            assert base("reg.example.com/a").startswith("https://")
            assert base("reg.example.com/a", ("reg.example.com",)).startswith("http://")
            assert base("busybox") == "https://registry-1.docker.io/v2/library/busybox"

    asyncio.run(main())


def test_an_identity_token_is_traded_for_an_access_token_by_the_refresh_grant() -> None:
    fake = FakeRegistry(private=True)

    async def body(client: Callable[..., RegistryClient]) -> None:
        good = Credentials("", "", identity_token="REFRESH-1")
        desc, _ = await client(creds=good).manifest("1")
        assert desc.digest == MANIFEST_DIGEST
        bad = Credentials("", "", identity_token="expired")
        with pytest.raises(AuthError, match="refused the identity token") as err:
            await client(creds=bad).manifest("1")
        assert "expired" not in str(err.value)

    _against(fake, body)
    assert not fake.token_requests  # no GET with Basic: the POST grant only
    assert fake.refresh_forms[0] == {
        "grant_type": "refresh_token",
        "refresh_token": "REFRESH-1",
        "client_id": "nstask",
        "service": "fake",
        "scope": "repository:team/app:pull",
    }
    assert "identity_token=***" in repr(Credentials("", "", identity_token="REFRESH-1"))
    assert "REFRESH-1" not in repr(Credentials("", "", identity_token="REFRESH-1"))


def test_which_pull_failures_fall_back_to_a_cached_image() -> None:
    from agent.containerd import ContainerdNotFound, ContainerdTimeout, ContainerdUnavailable
    from agent.dockerconfig import CredentialHelperError
    from agent.errors import ContainerdError
    from agent.pull import falls_back
    from agent.registry import RegistryUnavailable

    registry_side = [
        RegistryUnavailable("unreachable"),
        AuthError("refused"),
        ImageNotFound("manifest unknown"),
        PullError("bad blob"),
        CredentialHelperError("helper failed"),
    ]
    containerd_side = [
        ContainerdUnavailable("down"),
        ContainerdError("refused"),
        ContainerdTimeout("slow"),
        ContainerdNotFound("lease"),
        InvalidInput("bad reference"),
    ]
    assert all(falls_back(e) for e in registry_side)
    assert not any(falls_back(e) for e in containerd_side)


def test_an_identity_token_alone_cannot_answer_basic_auth() -> None:
    async def main() -> None:
        async def manifest(_: web.Request) -> web.Response:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="r"'})

        app = web.Application()
        app.router.add_get("/v2/team/app/manifests/{ref}", manifest)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                ref = registry.parse_reference(f"127.0.0.1:{port}/team/app:1")
                creds = Credentials("", "", identity_token="RT")
                with pytest.raises(AuthError, match="wants Basic auth"):
                    await RegistryClient(ref, session, creds=creds).manifest("1")
        finally:
            await runner.cleanup()

    asyncio.run(main())
