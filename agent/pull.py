"""Pulling images from OCI registries into containerd (containerd 1.6 has no server-side pull:
its own client does this, and so does nstask).

References follow Docker's normalisation (`busybox` -> `docker.io/library/busybox:latest`).
The distribution API is spoken over HTTPS with the system CA store, or plain HTTP for
localhost and registries the user marks insecure. Auth: anonymous, the Bearer-token
challenge flow, and Basic, with credentials from `--user` or a docker-style config.json.
Blobs are downloaded in parallel, their digest and size verified, written into the content
store under a lease (skipped when present), then the image record is created with the GC
labels containerd's client sets and the image is unpacked.

Pull behaviour (as the ECS agent's ECS_IMAGE_PULL_BEHAVIOR): `default` (always pull; fall
back to the cached image when the registry cannot be reached), `always`, `once` (pull when
absent), `prefer-cached` (use the cached image when present, else pull).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from agent import images
from agent.containerd import Containerd, Descriptor
from agent.errors import ImageNotFound, InvalidInput, NstaskError, Unavailable

DOCKER_HUB = "docker.io"
_HUB_API = "registry-1.docker.io"
POLICIES = ("default", "always", "once", "prefer-cached")
_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
_PARALLEL = 4
_REPO_RE = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


class PullError(NstaskError):
    kind = "pull_failed"


class AuthError(PullError):
    http_status = 401
    kind = "auth_refused"


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        name = f"{self.registry}/{self.repository}"
        if self.tag:
            name += f":{self.tag}"
        if self.digest:
            name += f"@{self.digest}"
        return name

    @property
    def api_host(self) -> str:
        return _HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"


def parse_reference(text: str) -> Reference:
    """Docker's rules: a first component with '.', ':' or 'localhost' is a registry; Docker
    Hub names without a namespace are under library/; no tag and no digest means latest."""
    rest, sep, digest_part = text.partition("@")
    digest: str | None = digest_part if sep else None
    tag = None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, remainder
    else:
        registry, repository = DOCKER_HUB, rest
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not _REPO_RE.match(repository):
        raise InvalidInput(f"image reference {text!r}: invalid repository name {repository!r}")
    if tag is not None and not _TAG_RE.match(tag):
        raise InvalidInput(f"image reference {text!r}: invalid tag {tag!r}")
    if digest is not None and not _DIGEST_RE.match(digest):
        raise InvalidInput(f"image reference {text!r}: invalid digest {digest!r}")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, repository, tag, digest)


def normalize_ref(text: str) -> str:
    return str(parse_reference(text))


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


def credentials_for(registry: str, config_path: Path | None = None) -> Credentials | None:
    """From a docker-style config.json (`auths` with base64 `auth`, or username/password)."""
    path = config_path or Path(os.environ.get("DOCKER_CONFIG", "/root/.docker")) / "config.json"
    try:
        auths = json.loads(path.read_text()).get("auths", {})
    except (OSError, ValueError):
        return None
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    if registry == DOCKER_HUB:
        keys += ["https://index.docker.io/v1/", "index.docker.io"]
    for key in keys:
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            user, _, pw = base64.b64decode(entry["auth"]).decode().partition(":")
            return Credentials(user, pw)
        if entry.get("username"):
            return Credentials(entry["username"], entry.get("password", ""))
    return None


@dataclass
class Progress:
    """What a progress display needs: per-layer bytes done/total, and totals."""

    layers: dict[str, list[int]]  # digest -> [done, total]
    transferred: int = 0  # bytes actually downloaded (a blob already present costs none)

    @property
    def done(self) -> int:
        return sum(d for d, _ in self.layers.values())

    @property
    def total(self) -> int:
        return sum(t for _, t in self.layers.values())


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, params = header.partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', params))


class Registry:
    """One registry's distribution API, with its auth and scheme."""

    def __init__(
        self,
        ref: Reference,
        session: aiohttp.ClientSession,
        *,
        creds: Credentials | None,
        insecure: Sequence[str],
    ) -> None:
        self.ref = ref
        self.session = session
        self.creds = creds
        host = ref.api_host
        plain = host.split(":")[0] in ("localhost", "127.0.0.1", "::1") or host in insecure
        self.base = f"{'http' if plain else 'https'}://{host}/v2/{ref.repository}"
        self._auth: str | None = None

    async def get(self, path: str, *, accept: str | None = None) -> aiohttp.ClientResponse:
        headers = {"Accept": accept} if accept else {}
        for attempt in range(2):
            if self._auth:
                headers["Authorization"] = self._auth
            try:
                resp = await self.session.get(f"{self.base}/{path}", headers=headers)
            except (aiohttp.ClientError, OSError) as e:
                raise Unavailable(
                    f"registry {self.ref.registry} is unreachable: {e}", image=str(self.ref)
                ) from None
            if resp.status != 401 or attempt:
                break
            await self._authenticate(resp.headers.get("WWW-Authenticate", ""))
            resp.release()
        if resp.status == 401:
            resp.release()
            raise AuthError(
                f"registry {self.ref.registry} refused the credentials for {self.ref}"
                if self.creds
                else f"registry {self.ref.registry} needs credentials for {self.ref} "
                "(nstask image pull --user, or a docker config.json)",
                image=str(self.ref),
            )
        return resp

    async def _authenticate(self, challenge: str) -> None:
        scheme, params = _parse_challenge(challenge)
        if scheme == "basic":
            if self.creds is None:
                return
            raw = f"{self.creds.username}:{self.creds.password}".encode()
            self._auth = "Basic " + base64.b64encode(raw).decode()
            return
        if scheme != "bearer" or "realm" not in params:
            return
        query = {"service": params.get("service", "")}
        query["scope"] = params.get("scope") or f"repository:{self.ref.repository}:pull"
        auth = aiohttp.BasicAuth(self.creds.username, self.creds.password) if self.creds else None
        try:
            async with self.session.get(params["realm"], params=query, auth=auth) as resp:
                if resp.status in (401, 403):
                    raise AuthError(
                        f"registry {self.ref.registry} refused the credentials for {self.ref}",
                        image=str(self.ref),
                    )
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, OSError) as e:
            raise Unavailable(f"token service {params['realm']} is unreachable: {e}") from None
        token = body.get("token") or body.get("access_token")
        if token:
            self._auth = f"Bearer {token}"

    async def manifest(self, reference: str) -> tuple[Descriptor, bytes]:
        resp = await self.get(f"manifests/{reference}", accept=_ACCEPT)
        async with resp:
            if resp.status == 404:
                raise ImageNotFound(
                    f"image {self.ref}: {reference} is not in the registry (manifest unknown)",
                    image=str(self.ref),
                )
            if resp.status >= 400:
                raise PullError(
                    f"image {self.ref}: the registry answered HTTP {resp.status} "
                    f"for manifest {reference}",
                    image=str(self.ref),
                )
            body = await resp.read()
            media = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if not media or media == "application/json":
            media = str(json.loads(body).get("mediaType", ""))
        if media in _SCHEMA1 or json.loads(body).get("schemaVersion") == 1:
            raise PullError(
                f"image {self.ref} uses the Docker schema 1 manifest format, which "
                "nstask (like containerd) does not pull",
                image=str(self.ref),
            )
        if media not in images._INDEXES | images._MANIFESTS:
            raise PullError(
                f"image {self.ref}: unsupported manifest media type {media!r}", image=str(self.ref)
            )
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and reference != digest:
            raise PullError(
                f"image {self.ref}: manifest digest mismatch (asked {reference}, got {digest})",
                image=str(self.ref),
            )
        return Descriptor(media_type=media, digest=digest, size=len(body)), body


def is_local(name: str) -> bool:
    """Images under a `.local` registry name (nstask.local/...) are made here (image pack /
    import) and never pulled: no lookup of such a name ever leaves the host."""
    first = name.split("/", 1)[0]
    return "/" in name and first.split(":")[0].endswith(".local")


async def pull(
    client: Containerd,
    ref_text: str,
    *,
    snapshotter: str = "overlayfs",
    creds: Credentials | None = None,
    insecure: Sequence[str] = (),
    progress: Callable[[Progress], None] | None = None,
) -> images.ImageRef:
    """Pull `ref_text` into containerd and unpack it; returns the image record."""
    if is_local(ref_text):
        raise ImageNotFound(
            f"image {ref_text} is a local name (.local): it is never pulled; "
            "import it with `nstask image import FILE`",
            image=ref_text,
        )
    ref = parse_reference(ref_text)
    creds = creds or credentials_for(ref.registry)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        reg = Registry(ref, session, creds=creds, insecure=insecure)
        top, top_body = await reg.manifest(ref.reference)
        docs: list[tuple[Descriptor, bytes]] = [(top, top_body)]
        manifest_desc, manifest_body = top, top_body
        if top.media_type in images._INDEXES:
            pick = _pick_platform(json.loads(top_body), ref)
            manifest_desc, manifest_body = await reg.manifest(pick)
            docs.append((manifest_desc, manifest_body))
        manifest = json.loads(manifest_body)
        blobs = [
            images._descriptor(manifest["config"]),
            *(images._descriptor(x) for x in manifest.get("layers", [])),
        ]
        lease = (await client.create_lease(expire=images._LEASE_EXPIRY)).id
        try:
            state = Progress({b.digest: [0, b.size] for b in blobs})
            sem = asyncio.Semaphore(_PARALLEL)

            async def fetch(b: Descriptor) -> None:
                async with sem:
                    await _fetch_blob(client, reg, b, lease, state, progress)

            await asyncio.gather(*(fetch(b) for b in blobs))
            # Parents after children, each with the GC labels that keep its children.
            for desc, body in reversed(docs):
                labels = images._children_labels(desc.media_type, json.loads(body))
                present = {
                    k: v for k, v in labels.items() if await client.content_info(v) is not None
                }
                await client.write_blob(
                    f"nstask-pull-{desc.digest}",
                    desc.digest,
                    desc.size,
                    body,
                    labels=present,
                    lease=lease,
                )
            image = await client.create_image(str(ref), top, lease=lease)
            await images.unpack(client, image.name, snapshotter=snapshotter, lease=lease)
            return images.ImageRef(image.name, image.target)
        finally:
            await client.delete_lease(lease, sync=False)


def _pick_platform(index: dict[str, Any], ref: Reference) -> str:
    arch = images.host_architecture()
    for m in index.get("manifests", []):
        p = m.get("platform", {})
        if p.get("os") == "linux" and p.get("architecture") == arch:
            return str(m["digest"])
    have = ", ".join(
        f"{m.get('platform', {}).get('os')}/{m.get('platform', {}).get('architecture')}"
        for m in index.get("manifests", [])
    )
    raise ImageNotFound(
        f"image {ref} has no linux/{arch} manifest (it has: {have})", image=str(ref)
    )


async def _fetch_blob(
    client: Containerd,
    reg: Registry,
    b: Descriptor,
    lease: str,
    state: Progress,
    progress: Callable[[Progress], None] | None,
) -> None:
    """Download one blob, verify its digest and size, write it into the content store.
    A blob already in the content store is not transferred at all."""
    if await client.content_info(b.digest) is not None:
        state.layers[b.digest][0] = b.size
        if progress:
            progress(state)
        return
    resp = await reg.get(f"blobs/{b.digest}")
    with tempfile.TemporaryFile(prefix="nstask-pull-") as tmp:
        h = hashlib.sha256()
        async with resp:
            if resp.status == 404:
                raise ImageNotFound(
                    f"image {reg.ref}: blob {b.digest} is not in the registry", image=str(reg.ref)
                )
            if resp.status >= 400:
                raise PullError(f"image {reg.ref}: HTTP {resp.status} for blob {b.digest}")
            async for chunk in resp.content.iter_chunked(1 << 20):
                h.update(chunk)
                tmp.write(chunk)
                state.layers[b.digest][0] += len(chunk)
                state.transferred += len(chunk)
                if progress:
                    progress(state)
        got = "sha256:" + h.hexdigest()
        size = tmp.tell()
        if got != b.digest or size != b.size:
            raise PullError(
                f"image {reg.ref}: blob {b.digest} failed verification (got "
                f"{got}, {size} bytes; expected {b.size} bytes)",
                image=str(reg.ref),
            )
        tmp.seek(0)
        await client.write_blob(f"nstask-pull-{b.digest}", b.digest, b.size, tmp, lease=lease)


async def ensure_image(
    client: Containerd, name: str, *, policy: str, snapshotter: str, insecure: Sequence[str] = ()
) -> images.ImageConfig:
    """The image's config per the pull behaviour; the name as given first (an imported
    image keeps its own name), then its normalised form."""
    if policy not in POLICIES:
        raise InvalidInput(f"pull behaviour {policy!r}: expected one of {', '.join(POLICIES)}")
    cached = name if await client.get_image(name) is not None else None
    if is_local(name):
        if cached is None:
            raise ImageNotFound(
                f"image {name} is not present in containerd namespace {client.namespace}; "
                "import it with `nstask image import FILE`",
                image=name,
            )
        return await images.ensure_unpacked(client, cached, snapshotter=snapshotter)
    if cached is None:
        with contextlib.suppress(InvalidInput):
            normal = normalize_ref(name)
            cached = normal if await client.get_image(normal) is not None else None
    if cached is not None and policy in ("once", "prefer-cached"):
        return await images.ensure_unpacked(client, cached, snapshotter=snapshotter)
    try:
        ref = await pull(client, name, snapshotter=snapshotter, insecure=insecure)
    except Unavailable:
        if cached is not None and policy == "default":
            return await images.ensure_unpacked(client, cached, snapshotter=snapshotter)
        raise
    return await images.ensure_unpacked(client, ref.name, snapshotter=snapshotter)
