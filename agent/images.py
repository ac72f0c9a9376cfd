"""Images: pack a directory into an OCI archive, import an archive, unpack it, read its config.

There is no registry on the development machines, so test images are packed locally from a
root filesystem (pack), then imported the way `ctr images import` does it (import_archive):
blobs streamed into the content store with the garbage-collection labels containerd's own
client sets, the image record created or updated, and the layers unpacked into snapshots
(unpack), all under a lease that is deleted at the end so nothing is collected half-way.

    pack(rootfs_dir, ref, out_path, ...)          -> manifest digest        (no containerd)
    import_archive(client, path, snapshotter=...)  -> [ImageRef]
    unpack(client, image_name, snapshotter=...)    -> chain id of the top layer
    image_config(client, image_name)               -> ImageConfig for the spec builder
    list_images(client)                            -> [ImageSummary]
    inspect_image(client, image_name)              -> dict: record, manifest, config, layers
    remove_image(client, image_name)               -> record deleted, content collected
    prune_images(client, in_use)                   -> [names removed]
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import platform
import tarfile
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from agent.errors import ContainerdError, ImageNotFound, InvalidInput

if TYPE_CHECKING:  # at run time imported where used: `nstask image pack` must not load grpc
    from agent.containerd import (
        Containerd,
        ContentInfo,
        Descriptor,
        Image,
        Lease,
        Mount,
        SnapshotInfo,
    )

__all__ = [
    "MEDIA_CONFIG",
    "MEDIA_INDEX",
    "MEDIA_LAYER_GZIP",
    "MEDIA_MANIFEST",
    "ImageClient",
    "ImageConfig",
    "ImageRef",
    "ImageSummary",
    "UnpackedMemo",
    "chain_ids",
    "choose_manifest",
    "ensure_unpacked",
    "host_architecture",
    "image_config",
    "import_archive",
    "inspect_image",
    "list_images",
    "pack",
    "prune_images",
    "remove_image",
    "unpack",
]

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
_DOCKER_INDEX = "application/vnd.docker.distribution.manifest.list.v2+json"
_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_INDEXES = {MEDIA_INDEX, _DOCKER_INDEX}
_MANIFESTS = {MEDIA_MANIFEST, _DOCKER_MANIFEST}

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
LABEL_UNCOMPRESSED = "containerd.io/uncompressed"
LABEL_GC_CONTENT = "containerd.io/gc.ref.content"
LABEL_GC_SNAPSHOT = "containerd.io/gc.ref.snapshot"

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Every packed file gets this mtime, so packing the same tree twice gives the same bytes.
_EPOCH = 0
_EPOCH_TEXT = "1970-01-01T00:00:00Z"
# A lease outlives a crashed import by at most this long (containerd then collects it).
_LEASE_EXPIRY = timedelta(hours=1)


class ImageClient(Protocol):
    """The part of agent.containerd.Containerd this module needs (a seam for unit tests)."""

    namespace: str

    async def get_image(self, name: str) -> Image | None: ...
    async def list_images(self) -> list[Image]: ...
    async def create_image(
        self,
        name: str,
        target: Descriptor,
        *,
        labels: Mapping[str, str] | None = ...,
        lease: str | None = ...,
    ) -> Image: ...
    async def read_blob(self, digest: str) -> bytes: ...
    async def content_info(self, digest: str) -> ContentInfo | None: ...
    async def write_blob(
        self,
        ref: str,
        digest: str,
        size: int,
        source: IO[bytes] | bytes,
        *,
        labels: Mapping[str, str] | None = ...,
        lease: str | None = ...,
    ) -> bool: ...
    async def update_content_labels(
        self, digest: str, labels: Mapping[str, str], *, lease: str | None = ...
    ) -> ContentInfo: ...
    async def stat_snapshot(
        self, key: str, *, snapshotter: str | None = ...
    ) -> SnapshotInfo | None: ...
    async def prepare_snapshot(
        self,
        key: str,
        parent: str = ...,
        *,
        labels: Mapping[str, str] | None = ...,
        snapshotter: str | None = ...,
        lease: str | None = ...,
    ) -> list[Mount]: ...
    async def commit_snapshot(
        self,
        name: str,
        key: str,
        *,
        labels: Mapping[str, str] | None = ...,
        snapshotter: str | None = ...,
        lease: str | None = ...,
    ) -> None: ...
    async def remove_snapshot(self, key: str, *, snapshotter: str | None = ...) -> None: ...
    async def apply_diff(
        self, layer: Descriptor, mounts: Sequence[Mount], *, lease: str | None = ...
    ) -> Descriptor: ...
    async def create_lease(
        self,
        lease_id: str | None = ...,
        *,
        labels: Mapping[str, str] | None = ...,
        expire: timedelta | None = ...,
    ) -> Lease: ...
    async def delete_lease(self, lease_id: str, *, sync: bool = ...) -> None: ...


@dataclass(frozen=True, slots=True)
class ImageRef:
    """An image record created or updated by import_archive."""

    name: str
    target: Descriptor

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "digest": self.target.digest,
            "mediaType": self.target.media_type,
            "size": self.target.size,
        }


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """What the spec builder needs from an image (OCI config fields, already defaulted)."""

    name: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: tuple[str, ...]
    workdir: str
    user: str
    stop_signal: str
    labels: Mapping[str, str]
    chain_id: str  # the committed snapshot to prepare a container rootfs from
    digest: str  # the image's target digest (what `ctr images ls` shows)
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "entrypoint": list(self.entrypoint),
            "cmd": list(self.cmd),
            "env": list(self.env),
            "workdir": self.workdir,
            "user": self.user,
            "stopSignal": self.stop_signal,
            "labels": dict(self.labels),
            "chainId": self.chain_id,
            "digest": self.digest,
            "size": self.size,
        }


@dataclass(frozen=True, slots=True)
class ImageSummary:
    ref: str
    digest: str
    size: int
    created: datetime | None

    def to_dict(self) -> dict[str, Any]:
        created = self.created.isoformat() if self.created else None
        return {"ref": self.ref, "digest": self.digest, "size": self.size, "created": created}


# --- small helpers --------------------------------------------------------------------


def host_architecture() -> str:
    """The OCI architecture name of this host (amd64, arm64, ...)."""
    machine = platform.machine().lower()
    return {
        "x86_64": "amd64",
        "amd64": "amd64",
        "aarch64": "arm64",
        "arm64": "arm64",
        "armv7l": "arm",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
        "riscv64": "riscv64",
    }.get(machine, machine)


def _canonical(document: Mapping[str, Any]) -> bytes:
    """JSON with sorted keys and no spaces: the same document always has the same digest."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """OCI chain ids: the snapshot names for a stack of layers (image-spec config.md)."""
    chain: list[str] = []
    for diff_id in diff_ids:
        chain.append(diff_id if not chain else _sha256(f"{chain[-1]} {diff_id}".encode()))
    return chain


def _ref_object(ref: str) -> str:
    """The tag of a reference (the part OCI puts in ref.name), 'latest' when it has none."""
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to `target`."""

    def __init__(self, target: _Sink) -> None:
        super().__init__()
        self._target = target
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.sha.update(chunk)
        self.size += len(chunk)
        self._target.write(chunk)
        return len(chunk)

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


# --- pack -----------------------------------------------------------------------------


def _normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Owner root, no user/group names, fixed mtime: layers independent of who packs them."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = _EPOCH
    return info


def _write_layer(rootfs: Path, out: IO[bytes]) -> tuple[str, str, int]:
    """Write rootfs as a gzip tar layer to `out`; returns (diff_id, digest, size).

    Entries are sorted, hard links kept as links, devices skipped (a rootless packer could
    not reproduce them anyway). The gzip header carries no name and no time.
    """
    compressed = _HashingWriter(out)
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0) as gz:
        raw = _HashingWriter(gz)
        with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for path in _walk(rootfs):
                arcname = path.relative_to(rootfs).as_posix()
                info = tar.gettarinfo(str(path), arcname)
                if info.ischr() or info.isblk() or info.isfifo():
                    continue
                _normalized(info)
                if info.isreg():
                    with path.open("rb") as src:
                        tar.addfile(info, src)
                else:
                    tar.addfile(info)
    return raw.digest, compressed.digest, compressed.size


def _walk(root: Path) -> list[Path]:
    """Every path under root (not root itself), parents before children, sorted by name."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted([*dirnames, *filenames]):
            found.append(base / name)
    found.sort(key=lambda p: p.relative_to(root).parts)
    return found


def _image_config_document(
    diff_id: str,
    *,
    entrypoint: Sequence[str] | None,
    cmd: Sequence[str] | None,
    env: Sequence[str] | None,
    workdir: str | None,
    stop_signal: str | None,
    user: str | None,
    labels: Mapping[str, str] | None,
) -> dict[str, Any]:
    config: dict[str, Any] = {"Env": list(env) if env is not None else [DEFAULT_PATH]}
    optional = {
        "Entrypoint": list(entrypoint) if entrypoint is not None else None,
        "Cmd": list(cmd) if cmd is not None else None,
        "WorkingDir": workdir,
        "StopSignal": stop_signal,
        "User": user,
        "Labels": dict(labels) if labels else None,
    }
    config.update({k: v for k, v in optional.items() if v is not None})
    return {
        "architecture": host_architecture(),
        "os": "linux",
        "created": _EPOCH_TEXT,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": _EPOCH_TEXT, "created_by": "nstask image pack"}],
    }


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = _normalized(tarfile.TarInfo(name))
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = _normalized(tarfile.TarInfo(name))
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def pack(
    rootfs_dir: str | os.PathLike[str],
    ref: str,
    out_path: str | os.PathLike[str],
    *,
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    env: Sequence[str] | None = None,
    workdir: str | None = None,
    stop_signal: str | None = None,
    user: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """Pack a directory as a one-layer OCI image layout in a tar archive; returns the
    manifest digest. The same tree and arguments always give the same bytes."""
    rootfs = Path(rootfs_dir)
    if not rootfs.is_dir():
        raise InvalidInput(f"cannot pack {rootfs}: not a directory")
    out = Path(out_path)
    with tempfile.TemporaryFile(prefix="nstask-layer-") as layer:
        diff_id, layer_digest, layer_size = _write_layer(rootfs, layer)
        config = _canonical(
            _image_config_document(
                diff_id,
                entrypoint=entrypoint,
                cmd=cmd,
                env=env,
                workdir=workdir,
                stop_signal=stop_signal,
                user=user,
                labels=labels,
            )
        )
        manifest = _canonical(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": {
                    "mediaType": MEDIA_CONFIG,
                    "digest": _sha256(config),
                    "size": len(config),
                },
                "layers": [
                    {"mediaType": MEDIA_LAYER_GZIP, "digest": layer_digest, "size": layer_size}
                ],
            }
        )
        index = _canonical(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_INDEX,
                "manifests": [
                    {
                        "mediaType": MEDIA_MANIFEST,
                        "digest": _sha256(manifest),
                        "size": len(manifest),
                        "platform": {"architecture": host_architecture(), "os": "linux"},
                        "annotations": {
                            ANNOTATION_IMAGE_NAME: ref,
                            ANNOTATION_REF_NAME: _ref_object(ref),
                        },
                    }
                ],
            }
        )
        tmp_out = out.with_name(f".{out.name}.nstask-tmp")
        with tarfile.open(tmp_out, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "oci-layout", _canonical({"imageLayoutVersion": "1.0.0"}))
            _add_bytes(tar, "index.json", index)
            _add_dir(tar, "blobs")
            _add_dir(tar, "blobs/sha256")
            for data in (config, manifest):
                _add_bytes(tar, f"blobs/sha256/{_sha256(data)[7:]}", data)
            info = _normalized(tarfile.TarInfo(f"blobs/sha256/{layer_digest[7:]}"))
            info.size = layer_size
            info.mode = 0o644
            layer.seek(0)
            tar.addfile(info, layer)
        tmp_out.replace(out)
    return _sha256(manifest)


# --- import ---------------------------------------------------------------------------


class _Archive:
    """Random access to the blobs of an OCI layout in a tar archive (read lazily)."""

    def __init__(self, path: Path) -> None:
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
        except (OSError, tarfile.TarError) as exc:
            raise InvalidInput(f"cannot read image archive {path}: {exc}") from exc
        self.path = path
        self.members = {m.name.removeprefix("./"): m for m in self.tar.getmembers() if m.isfile()}

    def close(self) -> None:
        self.tar.close()

    def blob_name(self, digest: str) -> str:
        algorithm, _, hexpart = digest.partition(":")
        return f"blobs/{algorithm}/{hexpart}"

    def has(self, digest: str) -> bool:
        return self.blob_name(digest) in self.members

    def open(self, name: str) -> IO[bytes]:
        member = self.members.get(name)
        stream = self.tar.extractfile(member) if member else None
        if stream is None:
            raise InvalidInput(f"image archive {self.path} has no {name}")
        return stream

    def json(self, name: str) -> dict[str, Any]:
        with self.open(name) as f:
            try:
                document = json.loads(f.read())
            except ValueError as exc:
                raise InvalidInput(f"{name} in {self.path} is not JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise InvalidInput(f"{name} in {self.path} is not a JSON object")
        return document


def _descriptor(d: Mapping[str, Any]) -> Descriptor:
    from agent.containerd import Descriptor

    return Descriptor(
        media_type=str(d.get("mediaType", "")),
        digest=str(d["digest"]),
        size=int(d["size"]),
        annotations=dict(d.get("annotations") or {}),
    )


def _children_labels(media_type: str, document: Mapping[str, Any]) -> dict[str, str]:
    """The GC labels containerd's client puts on an index or manifest blob, so that the
    image record alone keeps every child blob alive after the lease is gone."""
    if media_type in _INDEXES:
        return {
            f"{LABEL_GC_CONTENT}.m.{i}": str(m["digest"])
            for i, m in enumerate(document.get("manifests", []))
        }
    if media_type in _MANIFESTS:
        labels = {f"{LABEL_GC_CONTENT}.config": str(document["config"]["digest"])}
        for i, layer in enumerate(document.get("layers", [])):
            labels[f"{LABEL_GC_CONTENT}.l.{i}"] = str(layer["digest"])
        return labels
    return {}


async def _import_tree(
    client: ImageClient, archive: _Archive, desc: Descriptor, lease: str
) -> None:
    """Write desc and, for an index or manifest, its children (present in the archive)
    into the content store; children first, the parent (with its GC labels) last."""
    name = archive.blob_name(desc.digest)
    labels: dict[str, str] = {}
    if desc.media_type in _INDEXES | _MANIFESTS:
        document = archive.json(name)
        for child in _children(desc.media_type, document):
            if archive.has(child.digest):
                await _import_tree(client, archive, child, lease)
            elif child.media_type not in _MANIFESTS:
                raise InvalidInput(f"image archive {archive.path} lacks blob {child.digest}")
        labels = _children_labels(desc.media_type, document)
        labels = {k: v for k, v in labels.items() if archive.has(v)}
    with archive.open(name) as blob:
        await client.write_blob(
            f"nstask-import-{desc.digest}", desc.digest, desc.size, blob, labels=labels, lease=lease
        )


def _children(media_type: str, document: Mapping[str, Any]) -> list[Descriptor]:
    if media_type in _INDEXES:
        return [_descriptor(m) for m in document.get("manifests", [])]
    return [_descriptor(document["config"]), *(_descriptor(x) for x in document.get("layers", []))]


def _image_name(desc: Descriptor) -> str | None:
    """The name ctr gives an index entry: io.containerd.image.name, else a full ref.name."""
    name = desc.annotations.get(ANNOTATION_IMAGE_NAME)
    if name:
        return name
    ref = desc.annotations.get(ANNOTATION_REF_NAME, "")
    return ref if ("/" in ref or ":" in ref) else None


async def import_archive(
    client: ImageClient,
    path: str | os.PathLike[str],
    *,
    snapshotter: str = "overlayfs",
) -> list[ImageRef]:
    """Import an OCI layout tar (as `ctr images import` does) and unpack every image.

    Each entry of index.json that carries a name becomes an image record pointing at that
    entry's descriptor; importing the same archive twice changes nothing.
    """
    archive = _Archive(Path(path))
    try:
        layout = archive.json("oci-layout")
        if layout.get("imageLayoutVersion") != "1.0.0":
            raise InvalidInput(f"{path}: unsupported OCI layout version {layout!r}")
        entries = [_descriptor(m) for m in archive.json("index.json").get("manifests", [])]
        named = [(name, d) for d in entries if (name := _image_name(d))]
        if not named:
            raise InvalidInput(
                f"{path}: no entry of index.json names an image "
                f"({ANNOTATION_IMAGE_NAME} or a full {ANNOTATION_REF_NAME})"
            )
        lease = (await client.create_lease(expire=_LEASE_EXPIRY)).id
        try:
            refs: list[ImageRef] = []
            for name, desc in named:
                await _import_tree(client, archive, desc, lease)
                image = await client.create_image(name, desc, lease=lease)
                refs.append(ImageRef(image.name, image.target))
            for ref in refs:
                await unpack(client, ref.name, snapshotter=snapshotter, lease=lease)
        finally:
            await client.delete_lease(lease, sync=False)
        return refs
    finally:
        archive.close()


# --- unpack and config ----------------------------------------------------------------


async def _read_json(client: ImageClient, digest: str) -> dict[str, Any]:
    document = json.loads(await client.read_blob(digest))
    if not isinstance(document, dict):
        raise ContainerdError(f"blob {digest} is not a JSON object")
    return document


async def _require_image(client: ImageClient, name: str) -> Image:
    image = await client.get_image(name)
    if image is None:
        raise ImageNotFound(
            f"image {name} is not present in containerd namespace {client.namespace}; "
            "import it with `nstask image import FILE`",
            image=name,
            namespace=client.namespace,
        )
    return image


async def _manifest_for_host(
    client: ImageClient, target: Descriptor
) -> tuple[Descriptor, dict[str, Any]]:
    """The manifest to run here: the target itself, or the index entry for this host."""
    desc = target
    document = await _read_json(client, desc.digest)
    while desc.media_type in _INDEXES or "manifests" in document:
        pick = choose_manifest(document.get("manifests", []))
        if pick is None:
            raise ImageNotFound(
                f"image index {target.digest} has no manifest for {host_platform_text()}"
            )
        desc = _descriptor(pick)
        document = await _read_json(client, desc.digest)
    return desc, document


def host_variants() -> list[str]:
    """The CPU variants this host runs, best first ("" stands for an entry without one):
    arm64 is v8 and arm64 entries often omit it; a 32-bit arm v7 also runs v6 and v5."""
    arch = host_architecture()
    if arch == "arm64":
        return ["v8", ""]
    if arch == "arm":
        machine = platform.machine().lower()
        level = int(machine[4]) if machine[4:5].isdigit() else 7
        return [f"v{n}" for n in range(level, 4, -1)] + [""]
    return [""]


def host_platform_text() -> str:
    """linux/<arch>[/<variant>] of this host, for messages."""
    variant = host_variants()[0]
    return "linux/" + host_architecture() + (f"/{variant}" if variant else "")


def choose_manifest(entries: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The index entry for this host (linux, its architecture, the best variant it runs);
    an entry without a platform counts as linux on this host, as an OCI layout from
    `image pack` has. Pull and unpack use this one rule, so they agree on the manifest."""
    arch = host_architecture()
    variants = host_variants()
    best: tuple[int, Mapping[str, Any]] | None = None
    for entry in entries:
        plat = entry.get("platform") or {}
        if plat.get("os", "linux") != "linux" or plat.get("architecture", arch) != arch:
            continue
        variant = str(plat.get("variant", ""))
        if variant not in variants:
            continue
        rank = variants.index(variant)
        if best is None or rank < best[0]:
            best = (rank, entry)
    return best[1] if best else None


def _unpack_key(chain_id: str) -> str:
    """A unique active-snapshot key, in the form containerd's unpacker uses."""
    unique = f"{time.time_ns()}-{base64.urlsafe_b64encode(os.urandom(9)).decode()}"
    return f"extract-{unique} {chain_id}"


async def _apply_layer(
    client: ImageClient,
    layer: Descriptor,
    diff_id: str,
    chain_id: str,
    parent: str,
    snapshotter: str,
    lease: str,
) -> None:
    """Prepare(tmp key, parent) -> Diff.Apply -> Commit(chain id); tidy up on failure."""
    from agent.containerd import ContainerdAlreadyExists

    key = _unpack_key(chain_id)
    mounts = await client.prepare_snapshot(key, parent, snapshotter=snapshotter, lease=lease)
    try:
        applied = await client.apply_diff(layer, mounts, lease=lease)
        if applied.digest != diff_id:
            raise ContainerdError(
                f"layer {layer.digest} unpacked to {applied.digest}, but the image config "
                f"says its diff id is {diff_id}"
            )
        try:
            await client.commit_snapshot(chain_id, key, snapshotter=snapshotter, lease=lease)
        except ContainerdAlreadyExists:
            await client.remove_snapshot(key, snapshotter=snapshotter)  # a concurrent unpack won
    except BaseException:
        # The original error is the one worth raising, not a failed cleanup.
        with contextlib.suppress(Exception):
            await client.remove_snapshot(key, snapshotter=snapshotter)
        raise


async def unpack(
    client: ImageClient,
    image_name: str,
    *,
    snapshotter: str = "overlayfs",
    lease: str | None = None,
) -> str:
    """Unpack the image's layers into committed snapshots named by chain id (as ctr does);
    returns the top chain id. Already unpacked layers are skipped, so a second call writes
    nothing. Without `lease`, a temporary one protects the work."""
    image = await _require_image(client, image_name)
    _, manifest = await _manifest_for_host(client, image.target)
    config_desc = _descriptor(manifest["config"])
    config = await _read_json(client, config_desc.digest)
    diff_ids = [str(d) for d in config.get("rootfs", {}).get("diff_ids", [])]
    layers = [_descriptor(x) for x in manifest.get("layers", [])]
    if len(diff_ids) != len(layers) or not layers:
        raise ContainerdError(
            f"image {image_name}: {len(layers)} layers but {len(diff_ids)} diff ids in its config"
        )
    chain = chain_ids(diff_ids)
    parents = ["", *chain[:-1]]
    # Plan with reads only, so that an unpacked image costs no lease and no write.
    to_apply = [
        (layer, diff_id, chain_id, parent)
        for layer, diff_id, chain_id, parent in zip(layers, diff_ids, chain, parents, strict=True)
        if await client.stat_snapshot(chain_id, snapshotter=snapshotter) is None
    ]
    wanted = [
        (layer.digest, LABEL_UNCOMPRESSED, d) for layer, d in zip(layers, diff_ids, strict=True)
    ]
    wanted.append((config_desc.digest, f"{LABEL_GC_SNAPSHOT}.{snapshotter}", chain[-1]))
    to_label = [w for w in wanted if await _label_differs(client, *w)]
    if not to_apply and not to_label:
        return chain[-1]
    own_lease = None if lease else (await client.create_lease(expire=_LEASE_EXPIRY)).id
    use = lease or own_lease or ""
    try:
        for layer, diff_id, chain_id, parent in to_apply:
            await _apply_layer(client, layer, diff_id, chain_id, parent, snapshotter, use)
        for digest, key, value in to_label:
            await client.update_content_labels(digest, {key: value}, lease=use)
    finally:
        if own_lease:
            await client.delete_lease(own_lease, sync=False)
    return chain[-1]


async def _label_differs(client: ImageClient, digest: str, key: str, value: str) -> bool:
    info = await client.content_info(digest)
    return info is not None and info.labels.get(key) != value


class UnpackedMemo:
    """Images the agent has already unpacked and read, by name, target digest and snapshotter.

    An image's config and chain are facts of its (content-addressed) target digest, so a
    second task of the same image needs only to see that the name still points at that
    digest and that its top snapshot is still there (two reads instead of a dozen: about
    9 ms of every start). Bounded: the oldest entries go first.
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._seen: dict[tuple[str, str, str], ImageConfig] = {}

    def get(self, name: str, digest: str, snapshotter: str) -> ImageConfig | None:
        return self._seen.get((name, digest, snapshotter))

    def put(self, config: ImageConfig, snapshotter: str) -> None:
        key = (config.name, config.digest, snapshotter)
        self._seen.pop(key, None)
        self._seen[key] = config
        while len(self._seen) > self.size:
            del self._seen[next(iter(self._seen))]


async def ensure_unpacked(
    client: ImageClient,
    image_name: str,
    *,
    snapshotter: str = "overlayfs",
    memo: UnpackedMemo | None = None,
) -> ImageConfig:
    """The image's config, after making sure its layers are unpacked for `snapshotter`
    (cheap when they are: one Stat per layer; two reads when `memo` knows the image).
    Raises ImageNotFound when it is missing."""
    if memo is not None:
        image = await client.get_image(image_name)
        known = memo.get(image_name, image.target.digest, snapshotter) if image else None
        # A committed snapshot cannot lose a parent while it exists: the top one being
        # there means the whole chain is.
        if (
            known is not None
            and known.chain_id
            and await client.stat_snapshot(known.chain_id, snapshotter=snapshotter) is not None
        ):
            return known
    await unpack(client, image_name, snapshotter=snapshotter)
    config = await image_config(client, image_name)
    if memo is not None:
        memo.put(config, snapshotter)
    return config


async def image_config(client: ImageClient, image_name: str) -> ImageConfig:
    """The image's run configuration and its top chain id, for building a container."""
    image = await _require_image(client, image_name)
    manifest_desc, manifest = await _manifest_for_host(client, image.target)
    config_desc = _descriptor(manifest["config"])
    document = await _read_json(client, config_desc.digest)
    run = document.get("config") or {}
    diff_ids = [str(d) for d in document.get("rootfs", {}).get("diff_ids", [])]
    return ImageConfig(
        name=image.name,
        entrypoint=tuple(run.get("Entrypoint") or ()),
        cmd=tuple(run.get("Cmd") or ()),
        env=tuple(run.get("Env") or ()),
        workdir=str(run.get("WorkingDir") or ""),
        user=str(run.get("User") or ""),
        stop_signal=str(run.get("StopSignal") or ""),
        labels=dict(run.get("Labels") or {}),
        chain_id=chain_ids(diff_ids)[-1] if diff_ids else "",
        digest=image.target.digest,
        size=_image_size(image.target, manifest_desc, manifest),
    )


def _image_size(target: Descriptor, manifest_desc: Descriptor, manifest: Mapping[str, Any]) -> int:
    """Bytes of content the image holds here: (index +) manifest + config + layers."""
    size = target.size + int(manifest["config"]["size"])
    size += sum(int(x["size"]) for x in manifest.get("layers", []))
    if manifest_desc.digest != target.digest:
        size += manifest_desc.size
    return size


async def list_images(client: ImageClient) -> list[ImageSummary]:
    """Every image of the namespace with its digest, size and creation time."""
    found: list[ImageSummary] = []
    for image in await client.list_images():
        try:
            manifest_desc, manifest = await _manifest_for_host(client, image.target)
            size = _image_size(image.target, manifest_desc, manifest)
        except (ContainerdError, ImageNotFound, KeyError, ValueError):
            size = image.target.size  # content missing or foreign: still list the record
        found.append(ImageSummary(image.name, image.target.digest, size, image.created_at))
    return found


async def inspect_image(
    client: ImageClient, image_name: str, *, snapshotter: str = "overlayfs"
) -> dict[str, Any]:
    """Everything `image inspect` shows: the record, the manifest chosen for this host, the
    whole OCI config document, and each layer with its diff id and whether it is unpacked."""
    image = await _require_image(client, image_name)
    manifest_desc, manifest = await _manifest_for_host(client, image.target)
    config = await _read_json(client, str(manifest["config"]["digest"]))
    diff_ids = [str(d) for d in config.get("rootfs", {}).get("diff_ids", [])]
    layers = []
    for i, layer in enumerate(manifest.get("layers", [])):
        chain = chain_ids(diff_ids[: i + 1])[-1] if i < len(diff_ids) else ""
        snapshot = await client.stat_snapshot(chain, snapshotter=snapshotter) if chain else None
        layers.append(
            {
                "digest": layer["digest"],
                "mediaType": layer.get("mediaType", ""),
                "size": layer["size"],
                "diffId": diff_ids[i] if i < len(diff_ids) else None,
                "unpacked": snapshot is not None,
            }
        )
    created = image.created_at.isoformat() if image.created_at else None
    return {
        "name": image.name,
        "digest": image.target.digest,
        "mediaType": image.target.media_type,
        "created": created,
        "size": _image_size(image.target, manifest_desc, manifest),
        "manifest": {
            "digest": manifest_desc.digest,
            "mediaType": manifest_desc.media_type,
            "size": manifest_desc.size,
        },
        "platform": f"{config.get('os', '')}/{config.get('architecture', '')}",
        "config": config,
        "layers": layers,
    }


async def remove_image(client: Containerd, image_name: str) -> None:
    """Delete the image record and run containerd's GC, so its content and snapshots that
    nothing else uses go now (callers check first that no task uses it)."""
    from agent.containerd import ContainerdNotFound

    try:
        await client.delete_image(image_name, sync=True)
    except ContainerdNotFound:
        raise ImageNotFound(
            f"image {image_name} is not present in containerd namespace {client.namespace}",
            image=image_name,
        ) from None


async def prune_images(client: Containerd, in_use: Collection[str]) -> list[str]:
    """Remove every image whose name is not in `in_use` (the images of tasks that are not
    stopped); returns the names removed. One GC at the end, not one per image."""
    from agent.containerd import ContainerdNotFound

    keep = set(in_use)
    removed = [i.name for i in await client.list_images() if i.name not in keep]
    for i, name in enumerate(removed):
        with contextlib.suppress(ContainerdNotFound):
            await client.delete_image(name, sync=i == len(removed) - 1)
    return removed
