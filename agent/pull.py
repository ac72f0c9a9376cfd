"""Pulling images from OCI registries into containerd (containerd 1.6 has no server-side pull:
its own client does this, and so does nstask). The registry side is agent.registry.

A pull resolves the reference to a manifest (the host's entry of an index), then streams
the config and layers into containerd's content store, several at once, each straight from
the HTTP response into a Content.Write ingest: containerd verifies digest and size at
commit, so nothing unverified is ever committed. A blob already present is skipped. All of
it happens under a lease (labelled with the reference); the manifests follow with the GC
labels containerd's client sets, then the image record, then the unpack.

Interrupted pulls resume: when a pull is cancelled or the registry goes away, its lease
(which expires after an hour, so containerd collects it should nobody come back) keeps the
committed blobs and the partial ingests; the next pull of any image skips the former and
continues the latter from their offset with an HTTP Range request. Any other failure
deletes the lease and runs containerd's GC, leaving no image record and no content outside
a lease.

Pull behaviour (as the ECS agent's ECS_IMAGE_PULL_BEHAVIOR): `default` (always pull; fall
back to the cached image when the pull fails for any registry-side reason: unreachable,
timed out, auth refused, manifest unknown, bad content; logged as a warning), `always`,
`once` (pull when absent), `prefer-cached` (use the cached image when present, else pull).
A failure of containerd itself never falls back: it is raised as containerd's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from agent import images
from agent.containerd import (
    Containerd,
    ContainerdAlreadyExists,
    ContainerdUnavailable,
    ContentWriter,
    Descriptor,
)
from agent.dockerconfig import credentials_for
from agent.errors import (
    AlreadyExists,
    ContainerdError,
    ImageNotFound,
    InvalidInput,
    NotFound,
    NstaskError,
    Unavailable,
)
from agent.registry import (
    DOCKER_HUB,
    INDEX_TYPES,
    AuthConfig,
    AuthError,
    Credentials,
    PullError,
    Reference,
    RegistryClient,
    RegistryUnavailable,
    is_local,
    normalize_ref,
    parse_reference,
)

__all__ = [
    "DOCKER_HUB",
    "POLICIES",
    "AuthConfig",
    "AuthError",
    "Credentials",
    "Progress",
    "PullError",
    "Reference",
    "credentials_for",
    "ensure_image",
    "falls_back",
    "is_local",
    "normalize_ref",
    "parse_reference",
    "pull",
]

log = structlog.get_logger(__name__)

POLICIES = ("default", "always", "once", "prefer-cached")
# Blobs downloaded at once (containerd's client uses 3 by default; loopback and fast
# links gain from a few more, and a registry handles this many from one client).
_PARALLEL = 6
# Bytes sent to containerd per WRITE message (its limit is 16 MiB a message).
_CHUNK = 1 << 20
# How long to wait for an ingest another writer (another process) holds.
_LOCKED_RETRIES = 120
_LOCKED_WAIT = 0.5
LABEL_PULL_REF = "nstask.pull/ref"
_INGEST_PREFIX = "nstask-pull-"


@dataclass
class Progress:
    """What a progress display needs, passed to the callback after every chunk: per blob
    (config and layers) [bytes done, bytes total]; `transferred` counts only bytes that
    came over the network (a blob already present, or the part of a partial ingest left
    by an interrupted pull, costs none: those count in `resumed`)."""

    layers: dict[str, list[int]]
    transferred: int = 0
    resumed: int = 0
    manifest: str = ""  # the digest of the image's manifest, once resolved

    @property
    def done(self) -> int:
        return sum(d for d, _ in self.layers.values())

    @property
    def total(self) -> int:
        return sum(t for _, t in self.layers.values())


ProgressCallback = Callable[[Progress], None]


@dataclass
class _Plan:
    """What one pull fetches: the manifest documents (top first) and the blobs."""

    docs: list[tuple[Descriptor, bytes]]
    blobs: list[Descriptor] = field(default_factory=list)


# --- one pull at a time per image and per blob --------------------------------------------

_LOCKS: weakref.WeakValueDictionary[tuple[Any, ...], asyncio.Lock] = weakref.WeakValueDictionary()


@contextlib.asynccontextmanager
async def _exclusive(client: Containerd, key: str) -> AsyncIterator[None]:
    """Serialise pulls of the same image (and writes of the same blob) in this process:
    the second waiter then finds everything present instead of fighting over an ingest."""
    full = (id(asyncio.get_running_loop()), client.address, client.namespace, key)
    lock = _LOCKS.get(full)
    if lock is None:
        lock = asyncio.Lock()
        _LOCKS[full] = lock
    async with lock:
        yield


# --- the pull ---------------------------------------------------------------------------


async def pull(
    client: Containerd,
    ref_text: str,
    *,
    snapshotter: str = "overlayfs",
    creds: Credentials | None = None,
    insecure: Sequence[str] = (),
    progress: ProgressCallback | None = None,
    docker_config: str | Path | None = None,
) -> images.ImageRef:
    """Pull `ref_text` into containerd and unpack it; returns the image record (named by
    the normalised reference). Without `creds`, config.json (`docker_config`, see
    agent.dockerconfig) is asked. Raises ImageNotFound, AuthError, RegistryUnavailable or
    PullError (see agent.registry), InvalidInput for a malformed reference, containerd's
    errors as they are."""
    if is_local(ref_text):
        raise ImageNotFound(
            f"image {ref_text} is a local name (.local): it is never pulled; "
            "import it with `nstask image import FILE`",
            image=ref_text,
        )
    ref = parse_reference(ref_text)
    if creds is None:  # helpers are processes: off the event loop
        creds = await asyncio.to_thread(credentials_for, ref.registry, docker_config)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    connector = aiohttp.TCPConnector(limit=_PARALLEL + 2)
    async with (
        _exclusive(client, str(ref)),
        aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
    ):
        reg = RegistryClient(ref, session, creds=creds, insecure=insecure)
        plan = await _resolve(reg)
        return await _pull_plan(client, reg, plan, snapshotter, progress)


async def _resolve(reg: RegistryClient) -> _Plan:
    """The top manifest, the host's manifest if the top is an index, and its blobs."""
    top, top_body = await reg.manifest(reg.ref.reference)
    plan = _Plan([(top, top_body)])
    manifest_body = top_body
    if top.media_type in INDEX_TYPES:
        index = json.loads(top_body)
        pick = images.choose_manifest(index.get("manifests", []))
        if pick is None:
            have = ", ".join(_platform_text(m) for m in index.get("manifests", []))
            raise ImageNotFound(
                f"image {reg.image} has no manifest for {images.host_platform_text()} "
                f"(it has: {have or 'none'})",
                image=reg.image,
            )
        desc, manifest_body = await reg.manifest(str(pick["digest"]))
        if desc.media_type in INDEX_TYPES:
            raise PullError(f"image {reg.image}: an index inside an index", image=reg.image)
        plan.docs.append((desc, manifest_body))
    manifest = json.loads(manifest_body)
    try:
        plan.blobs = [
            images._descriptor(manifest["config"]),
            *(images._descriptor(x) for x in manifest.get("layers", [])),
        ]
    except (KeyError, TypeError, ValueError):
        raise PullError(
            f"image {reg.image}: the manifest lacks a config or valid layers", image=reg.image
        ) from None
    return plan


def _platform_text(entry: dict[str, Any]) -> str:
    p = entry.get("platform") or {}
    variant = f"/{p['variant']}" if p.get("variant") else ""
    return f"{p.get('os', '?')}/{p.get('architecture', '?')}{variant}"


async def _pull_plan(
    client: Containerd,
    reg: RegistryClient,
    plan: _Plan,
    snapshotter: str,
    progress: ProgressCallback | None,
) -> images.ImageRef:
    """Fetch, record and unpack under a lease; see the module doc for what stays on error."""
    name = str(reg.ref)
    lease = await client.create_lease(labels={LABEL_PULL_REF: name}, expire=images._LEASE_EXPIRY)
    ok = keep = False
    try:
        state = Progress(
            {b.digest: [0, b.size] for b in plan.blobs}, manifest=plan.docs[-1][0].digest
        )
        await _fetch_all(client, reg, plan.blobs, lease.id, state, progress)
        await _write_docs(client, plan, lease.id)
        image = await client.create_image(name, plan.docs[0][0], lease=lease.id)
        await images.unpack(client, image.name, snapshotter=snapshotter, lease=lease.id)
        ok = True
        log.info(
            "image.pulled",
            image=name,
            digest=image.target.digest,
            transferred=state.transferred,
            resumed=state.resumed,
        )
        return images.ImageRef(image.name, image.target)
    except (asyncio.CancelledError, Unavailable):
        keep = True  # resumable: the lease keeps what arrived, and expires by itself
        raise
    finally:
        if not keep:
            await _drop_leases(client, name, lease.id, collect=not ok)


async def _drop_leases(client: Containerd, name: str, own: str, *, collect: bool) -> None:
    """Delete this pull's lease and those of earlier interrupted pulls of the same image
    (their content is now the image's, or unwanted); `collect` runs containerd's GC before
    answering, so a failed pull leaves nothing behind."""
    stale = [
        lease.id
        for lease in await client.list_leases()
        if lease.labels.get(LABEL_PULL_REF) == name and lease.id != own
    ]
    for lease_id in stale:
        with contextlib.suppress(ContainerdError, Unavailable, ImageNotFound):
            await client.delete_lease(lease_id, sync=False)
    with contextlib.suppress(ContainerdError):
        await client.delete_lease(own, sync=collect)


async def _fetch_all(
    client: Containerd,
    reg: RegistryClient,
    blobs: Sequence[Descriptor],
    lease: str,
    state: Progress,
    progress: ProgressCallback | None,
) -> None:
    """Every blob, _PARALLEL at a time; the first failure is raised as it is."""
    sem = asyncio.Semaphore(_PARALLEL)

    async def one(b: Descriptor) -> None:
        async with sem:
            await _fetch_blob(client, reg, b, lease, state, progress)

    tasks = [asyncio.ensure_future(one(b)) for b in {b.digest: b for b in blobs}.values()]
    try:
        await asyncio.gather(*tasks)
    finally:  # the first error (or a cancel) stops the others; their ingests stay leased
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _fetch_blob(
    client: Containerd,
    reg: RegistryClient,
    b: Descriptor,
    lease: str,
    state: Progress,
    progress: ProgressCallback | None,
) -> None:
    """One blob into the content store, unless it is there already; waits while another
    process writes the same blob (its ingest is locked), then finds it present."""
    async with _exclusive(client, b.digest):
        for _ in range(_LOCKED_RETRIES):
            if await client.content_info(b.digest) is not None:
                break
            try:
                async with client.open_writer(
                    _INGEST_PREFIX + b.digest, b.digest, b.size, lease=lease
                ) as writer:
                    await _download(client, reg, b, writer, state, progress)
                return
            except ContainerdAlreadyExists:
                break
            except ContainerdError as e:
                if not _locked(e):
                    raise
                await asyncio.sleep(_LOCKED_WAIT)
        else:
            raise Unavailable(
                f"image {reg.image}: blob {b.digest} is being written by another client",
                image=reg.image,
            )
    state.layers[b.digest][0] = b.size
    if progress:
        progress(state)


async def _download(
    client: Containerd,
    reg: RegistryClient,
    b: Descriptor,
    writer: ContentWriter,
    state: Progress,
    progress: ProgressCallback | None,
) -> None:
    """Stream the blob from the registry into `writer`, from the ingest's offset on, and
    commit it (containerd checks digest and size)."""
    if writer.offset > b.size:
        writer.restart()
    state.layers[b.digest][0] = writer.offset
    state.resumed += writer.offset
    if writer.offset < b.size:
        resp = await reg.blob(b.digest, offset=writer.offset)
        async with resp:
            if writer.offset and resp.status != 206:  # the registry ignored the Range
                state.resumed -= writer.offset
                writer.restart()
                state.layers[b.digest][0] = 0
            await _copy(reg, b, resp, writer, state, progress)
    try:
        await writer.commit()
    except ContainerdError as e:
        if e.details.get("status") != "FAILED_PRECONDITION":
            raise _disk_full(reg, b, e) or e from None
        with contextlib.suppress(ContainerdError, Unavailable, ImageNotFound):
            await client.abort_write(writer.ref)
        raise PullError(
            f"image {reg.image}: blob {b.digest} failed verification ({b.size} bytes "
            f"expected; containerd: {e.details.get('detail', '')}); nothing was kept",
            image=reg.image,
        ) from None


async def _copy(
    reg: RegistryClient,
    b: Descriptor,
    resp: aiohttp.ClientResponse,
    writer: ContentWriter,
    state: Progress,
    progress: ProgressCallback | None,
) -> None:
    """The response body into the ingest, in _CHUNK pieces, never past the declared size."""
    buf = bytearray()
    try:
        async for data in resp.content.iter_any():
            buf += data
            if writer.offset + len(buf) > b.size:
                raise PullError(
                    f"image {reg.image}: blob {b.digest} is longer than the {b.size} "
                    "bytes its descriptor declares",
                    image=reg.image,
                )
            if len(buf) >= _CHUNK:
                await _flush(buf, writer, b, state, progress)
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise RegistryUnavailable(
            f"image {reg.image}: the download of blob {b.digest} broke off at "
            f"{writer.offset + len(buf)} of {b.size} bytes: {e or type(e).__name__}",
            image=reg.image,
        ) from None
    except ContainerdError as e:
        raise _disk_full(reg, b, e) or e from None
    if buf:
        await _flush(buf, writer, b, state, progress)


async def _flush(
    buf: bytearray,
    writer: ContentWriter,
    b: Descriptor,
    state: Progress,
    progress: ProgressCallback | None,
) -> None:
    await writer.write(bytes(buf))
    state.layers[b.digest][0] += len(buf)
    state.transferred += len(buf)
    buf.clear()
    if progress:
        progress(state)


def _disk_full(reg: RegistryClient, b: Descriptor, e: ContainerdError) -> PullError | None:
    """A clear error for a full disk under containerd's content store."""
    if "no space left" not in str(e.details.get("detail", "")):
        return None
    return PullError(
        f"image {reg.image}: the disk under containerd's content store is full "
        f"(writing blob {b.digest}, {b.size} bytes)",
        image=reg.image,
    )


async def _write_docs(client: Containerd, plan: _Plan, lease: str) -> None:
    """Manifests after their blobs, the index last, each with the GC labels that keep its
    (present) children alive once the lease is gone."""
    for desc, body in reversed(plan.docs):
        labels = images._children_labels(desc.media_type, json.loads(body))
        present = {k: v for k, v in labels.items() if await client.content_info(v) is not None}
        async with _exclusive(client, desc.digest):
            for _ in range(_LOCKED_RETRIES):
                try:
                    await client.write_blob(
                        _INGEST_PREFIX + desc.digest,
                        desc.digest,
                        desc.size,
                        body,
                        labels=present,
                        lease=lease,
                    )
                    break
                except ContainerdError as e:
                    if not _locked(e):
                        raise
                    await asyncio.sleep(_LOCKED_WAIT)


def _locked(e: ContainerdError) -> bool:
    """containerd's answer while another client writes the same ingest ref."""
    return "locked" in str(e.details.get("detail", ""))


# --- pull behaviour ---------------------------------------------------------------------


async def _cached_name(client: Containerd, name: str) -> str | None:
    """The image record for `name`: as given (an imported image keeps its own name), else
    under its normalised reference."""
    if await client.get_image(name) is not None:
        return name
    with contextlib.suppress(InvalidInput):
        normal = normalize_ref(name)
        if await client.get_image(normal) is not None:
            return normal
    return None


def falls_back(e: NstaskError) -> bool:
    """Whether a failed pull may fall back to a cached image under `default`: any failure
    of the registry side (unreachable, timeout, auth, unknown manifest, bad content, a
    credential helper), never one of containerd's (it would fail the cached image too, or
    worse: hide a broken containerd behind a stale image), nor a malformed reference."""
    if isinstance(e, ContainerdUnavailable | ContainerdError | InvalidInput):
        return False
    if isinstance(e, NotFound | AlreadyExists) and not isinstance(e, ImageNotFound):
        return False  # ContainerdNotFound / ContainerdAlreadyExists
    return isinstance(e, PullError | RegistryUnavailable | ImageNotFound)


async def ensure_image(
    client: Containerd,
    name: str,
    *,
    policy: str,
    snapshotter: str,
    insecure: Sequence[str] = (),
    auth: Credentials | None = None,
    progress: ProgressCallback | None = None,
    memo: images.UnpackedMemo | None = None,
    docker_config: str | Path | None = None,
) -> images.ImageConfig:
    """The image's config, present and unpacked per the pull behaviour `policy`.
    Local (.local) names are never pulled. Under `default` any registry-side pull failure
    falls back to the cached image (logged as a warning, as ECS does); containerd's own
    failures, and every failure without a cached image, are raised."""
    if policy not in POLICIES:
        raise InvalidInput(f"pull behaviour {policy!r}: expected one of {', '.join(POLICIES)}")
    cached = await _cached_name(client, name)
    if is_local(name):
        if cached is None:
            raise ImageNotFound(
                f"image {name} is not present in containerd namespace {client.namespace}; "
                "import it with `nstask image import FILE`",
                image=name,
            )
        return await images.ensure_unpacked(client, cached, snapshotter=snapshotter, memo=memo)
    if cached is not None and policy in ("once", "prefer-cached"):
        return await images.ensure_unpacked(client, cached, snapshotter=snapshotter, memo=memo)
    try:
        ref = await pull(
            client,
            name,
            snapshotter=snapshotter,
            creds=auth,
            insecure=insecure,
            progress=progress,
            docker_config=docker_config,
        )
    except NstaskError as e:
        if cached is None or policy != "default" or not falls_back(e):
            raise
        log.warning(
            "image.pull_failed_using_cached",
            image=name,
            cached=cached,
            error=e.message,
            kind=e.kind,
        )
        return await images.ensure_unpacked(client, cached, snapshotter=snapshotter, memo=memo)
    return await images.ensure_unpacked(client, ref.name, snapshotter=snapshotter, memo=memo)
