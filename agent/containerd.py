"""nstask's client for containerd's v1 gRPC API (the only module that imports the stubs).

Every call carries the `containerd-namespace` metadata (and `containerd-lease` when a lease
is given), and every gRPC error is translated in one place, `_errors`, into agent.errors:

    NOT_FOUND          -> ContainerdNotFound (a NotFound), naming the object and the RPC
    ALREADY_EXISTS     -> ContainerdAlreadyExists (an AlreadyExists)
    UNAVAILABLE        -> ContainerdUnavailable (an Unavailable), with how to start containerd
    DEADLINE_EXCEEDED  -> ContainerdTimeout (a ContainerdError)
    anything else      -> ContainerdError with the RPC name and the gRPC status

Methods return small frozen dataclasses converted once from the wire messages. Times of
exits and events are epoch seconds (float, 0.0 when containerd gave none), as the state
store keeps them; creation/update times of records are aware datetimes (None if unset). Lookups
(get_image, get_container, get_task, content_info, stat_snapshot) return None for a missing
object; actions on a missing object raise ContainerdNotFound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal as _signal
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import grpc
from google.protobuf import (
    any_pb2,
    empty_pb2,
    field_mask_pb2,
    timestamp_pb2,
)

from agent._pb.containerd.events import task_pb2 as events_pb
from agent._pb.containerd.services.containers.v1 import containers_pb2 as containers_pb
from agent._pb.containerd.services.containers.v1 import containers_pb2_grpc as containers_grpc
from agent._pb.containerd.services.content.v1 import content_pb2 as content_pb
from agent._pb.containerd.services.content.v1 import content_pb2_grpc as content_grpc
from agent._pb.containerd.services.diff.v1 import diff_pb2 as diff_pb
from agent._pb.containerd.services.diff.v1 import diff_pb2_grpc as diff_grpc
from agent._pb.containerd.services.events.v1 import events_pb2 as envelope_pb
from agent._pb.containerd.services.events.v1 import events_pb2_grpc as events_grpc
from agent._pb.containerd.services.images.v1 import images_pb2 as images_pb
from agent._pb.containerd.services.images.v1 import images_pb2_grpc as images_grpc
from agent._pb.containerd.services.leases.v1 import leases_pb2 as leases_pb
from agent._pb.containerd.services.leases.v1 import leases_pb2_grpc as leases_grpc
from agent._pb.containerd.services.namespaces.v1 import namespace_pb2 as namespaces_pb
from agent._pb.containerd.services.namespaces.v1 import namespace_pb2_grpc as namespaces_grpc
from agent._pb.containerd.services.snapshots.v1 import snapshots_pb2 as snapshots_pb
from agent._pb.containerd.services.snapshots.v1 import snapshots_pb2_grpc as snapshots_grpc
from agent._pb.containerd.services.tasks.v1 import tasks_pb2 as tasks_pb
from agent._pb.containerd.services.tasks.v1 import tasks_pb2_grpc as tasks_grpc
from agent._pb.containerd.services.version.v1 import version_pb2_grpc as version_grpc
from agent._pb.containerd.types import descriptor_pb2, mount_pb2
from agent._pb.containerd.types import task_pb2 as process_pb
from agent.errors import AlreadyExists, ContainerdError, NotFound, Unavailable

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_NAMESPACE",
    "DEFAULT_RUNTIME",
    "DEFAULT_SNAPSHOTTER",
    "PROCESS_SPEC_TYPE_URL",
    "SPEC_TYPE_URL",
    "Container",
    "Containerd",
    "ContainerdAlreadyExists",
    "ContainerdNotFound",
    "ContainerdTimeout",
    "ContainerdUnavailable",
    "ContentInfo",
    "ContentWriter",
    "Descriptor",
    "Event",
    "ExitStatus",
    "Image",
    "Lease",
    "Metric",
    "Mount",
    "SnapshotInfo",
    "TaskCreate",
    "TaskDelete",
    "TaskExit",
    "TaskInfo",
    "TaskOOM",
    "TaskStart",
    "Version",
    "purge_namespace",
]

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "nstask"
DEFAULT_SNAPSHOTTER = "overlayfs"
DEFAULT_RUNTIME = "io.containerd.runc.v2"
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
# containerd's own server accepts 16 MiB messages; grpc's client default is only 4 MiB.
_MAX_MESSAGE = 16 << 20
# Content.Write chunk size: big enough to be cheap, small enough to stream big layers.
_WRITE_CHUNK = 1 << 20
# WRITE messages a ContentWriter sends before it waits for containerd's answers: enough
# to keep the socket busy while containerd writes the previous chunk to disk.
_WRITE_WINDOW = 8
# gogoproto's zero time.Time (0001-01-01) arrives as this many seconds: treat it as unset.
_ZERO_TIME_SECONDS = -62135596800


# --- errors ---------------------------------------------------------------------------


class ContainerdNotFound(NotFound):
    """containerd has no such object (image, container, task, snapshot, blob, lease...)."""

    kind = "containerd_not_found"


class ContainerdAlreadyExists(AlreadyExists):
    kind = "containerd_already_exists"


class ContainerdUnavailable(Unavailable):
    kind = "containerd_unavailable"


class ContainerdTimeout(ContainerdError):
    kind = "containerd_timeout"


# --- the data nstask sees -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Version:
    version: str
    revision: str


@dataclass(frozen=True, slots=True)
class Mount:
    """A mount(2) call as a snapshotter describes it (rootfs of a task, layer target)."""

    type: str
    source: str
    options: tuple[str, ...] = ()
    target: str = ""


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor: what a blob is, its digest and its size."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Image:
    name: str
    target: Descriptor
    labels: Mapping[str, str]
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class ContentInfo:
    digest: str
    size: int
    labels: Mapping[str, str]
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    name: str
    parent: str
    kind: str  # "view", "active", "committed" or "unknown"
    labels: Mapping[str, str]
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class Lease:
    id: str
    labels: Mapping[str, str]
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class Container:
    id: str
    image: str
    runtime: str
    snapshotter: str
    snapshot_key: str
    labels: Mapping[str, str]
    spec: Mapping[str, Any] | None  # the OCI runtime spec, decoded from its JSON Any
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class ExitStatus:
    code: int
    exited_at: float


@dataclass(frozen=True, slots=True)
class TaskInfo:
    container_id: str
    id: str  # the exec id, or the container id for the init process
    pid: int
    status: str  # "created", "running", "stopped", "paused", "pausing" or "unknown"
    exit_status: int
    exited_at: float


@dataclass(frozen=True, slots=True)
class Metric:
    """One cgroup statistics sample; `data` is left encoded (its type_url says which)."""

    id: str
    timestamp: datetime | None
    type_url: str
    data: bytes


@dataclass(frozen=True, slots=True)
class TaskExit:
    container_id: str
    id: str
    pid: int
    exit_status: int
    exited_at: float


@dataclass(frozen=True, slots=True)
class TaskStart:
    container_id: str
    pid: int


@dataclass(frozen=True, slots=True)
class TaskCreate:
    container_id: str
    pid: int
    bundle: str


@dataclass(frozen=True, slots=True)
class TaskDelete:
    container_id: str
    id: str
    pid: int
    exit_status: int
    exited_at: float


@dataclass(frozen=True, slots=True)
class TaskOOM:
    container_id: str


EventPayload = TaskExit | TaskStart | TaskCreate | TaskDelete | TaskOOM


@dataclass(frozen=True, slots=True)
class Event:
    """One envelope from Events.Subscribe; payload is None for event types we do not decode."""

    topic: str
    namespace: str
    timestamp: float
    type_url: str
    payload: EventPayload | None


# --- wire conversions (each in one place) ---------------------------------------------


def _time(ts: timestamp_pb2.Timestamp) -> datetime | None:
    """A protobuf timestamp as an aware UTC datetime; unset and Go zero times become None."""
    if (ts.seconds == 0 and ts.nanos == 0) or ts.seconds <= _ZERO_TIME_SECONDS:
        return None
    when: datetime = ts.ToDatetime(tzinfo=UTC)
    return when


def _epoch(ts: timestamp_pb2.Timestamp) -> float:
    """A protobuf timestamp as epoch seconds; 0.0 for unset and Go zero times."""
    if (ts.seconds == 0 and ts.nanos == 0) or ts.seconds <= _ZERO_TIME_SECONDS:
        return 0.0
    return float(ts.seconds + ts.nanos / 1e9)


def _mount(m: mount_pb2.Mount) -> Mount:
    return Mount(type=m.type, source=m.source, options=tuple(m.options), target=m.target)


def _mount_pb(m: Mount) -> mount_pb2.Mount:
    return mount_pb2.Mount(type=m.type, source=m.source, options=list(m.options), target=m.target)


def _descriptor(d: descriptor_pb2.Descriptor) -> Descriptor:
    return Descriptor(d.media_type, d.digest, d.size, dict(d.annotations))


def _descriptor_pb(d: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(
        media_type=d.media_type, digest=d.digest, size=d.size, annotations=dict(d.annotations)
    )


def _image(i: images_pb.Image) -> Image:
    return Image(
        name=i.name,
        target=_descriptor(i.target),
        labels=dict(i.labels),
        created_at=_time(i.created_at),
        updated_at=_time(i.updated_at),
    )


def _content_info(i: content_pb.Info) -> ContentInfo:
    return ContentInfo(i.digest, i.size, dict(i.labels), _time(i.created_at), _time(i.updated_at))


_SNAPSHOT_KINDS = {
    snapshots_pb.VIEW: "view",
    snapshots_pb.ACTIVE: "active",
    snapshots_pb.COMMITTED: "committed",
}


def _snapshot_info(i: snapshots_pb.Info) -> SnapshotInfo:
    return SnapshotInfo(
        name=i.name,
        parent=i.parent,
        kind=_SNAPSHOT_KINDS.get(i.kind, "unknown"),
        labels=dict(i.labels),
        created_at=_time(i.created_at),
        updated_at=_time(i.updated_at),
    )


def _lease(lease: leases_pb.Lease) -> Lease:
    return Lease(lease.id, dict(lease.labels), _time(lease.created_at))


def _container(c: containers_pb.Container) -> Container:
    spec: Mapping[str, Any] | None = None
    if c.HasField("spec") and c.spec.value:
        spec = json.loads(c.spec.value)
    return Container(
        id=c.id,
        image=c.image,
        runtime=c.runtime.name,
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        labels=dict(c.labels),
        spec=spec,
        created_at=_time(c.created_at),
        updated_at=_time(c.updated_at),
    )


_TASK_STATUS = {
    process_pb.CREATED: "created",
    process_pb.RUNNING: "running",
    process_pb.STOPPED: "stopped",
    process_pb.PAUSED: "paused",
    process_pb.PAUSING: "pausing",
}


def _task(p: process_pb.Process, container_id: str = "") -> TaskInfo:
    # containerd 1.6 leaves container_id empty in Tasks.List and Tasks.Get answers; the init
    # process's id is then the container id.
    return TaskInfo(
        container_id=container_id or p.container_id or p.id,
        id=p.id,
        pid=p.pid,
        status=_TASK_STATUS.get(p.status, "unknown"),
        exit_status=p.exit_status,
        exited_at=_epoch(p.exited_at),
    )


def _json_any(type_url: str, value: Mapping[str, Any]) -> any_pb2.Any:
    """An OCI document as containerd wants it: JSON bytes in an Any with the OCI type URL."""
    return any_pb2.Any(type_url=type_url, value=json.dumps(value).encode())


def _decode_task_exit(raw: bytes) -> EventPayload:
    m = events_pb.TaskExit.FromString(raw)
    return TaskExit(m.container_id, m.id, m.pid, m.exit_status, _epoch(m.exited_at))


def _decode_task_start(raw: bytes) -> EventPayload:
    m = events_pb.TaskStart.FromString(raw)
    return TaskStart(m.container_id, m.pid)


def _decode_task_create(raw: bytes) -> EventPayload:
    m = events_pb.TaskCreate.FromString(raw)
    return TaskCreate(m.container_id, m.pid, m.bundle)


def _decode_task_delete(raw: bytes) -> EventPayload:
    m = events_pb.TaskDelete.FromString(raw)
    return TaskDelete(m.container_id, m.id, m.pid, m.exit_status, _epoch(m.exited_at))


def _decode_task_oom(raw: bytes) -> EventPayload:
    return TaskOOM(events_pb.TaskOOM.FromString(raw).container_id)


# Keyed by the message's full name: containerd 1.6 sends it bare as the Any's type_url,
# other versions may prefix a host ("types.containerd.io/"); we look at the last segment.
_EVENT_DECODERS = {
    "containerd.events.TaskExit": _decode_task_exit,
    "containerd.events.TaskStart": _decode_task_start,
    "containerd.events.TaskCreate": _decode_task_create,
    "containerd.events.TaskDelete": _decode_task_delete,
    "containerd.events.TaskOOM": _decode_task_oom,
}


def _event(envelope: envelope_pb.Envelope) -> Event:
    type_url = envelope.event.type_url
    decode = _EVENT_DECODERS.get(type_url.rsplit("/", 1)[-1])
    return Event(
        topic=envelope.topic,
        namespace=envelope.namespace,
        timestamp=_epoch(envelope.timestamp),
        type_url=type_url,
        payload=decode(envelope.event.value) if decode else None,
    )


def _iter_chunks(source: IO[bytes] | bytes, size: int) -> Iterator[bytes]:
    """Chunks of a blob without reading a file object whole into memory."""
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source)
        for start in range(0, len(view), size):
            yield bytes(view[start : start + size])
        return
    while chunk := source.read(size):
        yield chunk


class ContentWriter:
    """One open content ingest (a Content.Write stream, which holds the ingest's lock).

    `offset` is where the ingest stands: bytes an earlier, interrupted writer left under
    the same ref count, so a caller resumes there instead of starting over. Writes are
    pipelined (up to _WRITE_WINDOW answers outstanding); commit() waits for them all and
    lets containerd verify the digest and size of the whole ingest.
    """

    def __init__(self, client: Containerd, call: Any, ref: str, digest: str, size: int) -> None:
        self._client = client
        self._call = call
        self.ref = ref
        self.digest = digest
        self.size = size
        self.offset = 0
        self._pending = 0
        self._what = f"blob {digest} (ingest {ref!r})"

    async def _send(self, request: Any) -> None:
        with self._client._errors("Content.Write", self._what):
            await self._call.write(request)
            self._pending += 1
            while self._pending >= _WRITE_WINDOW:
                await self._receive()

    async def _receive(self) -> Any:
        resp = await self._call.read()
        self._pending -= 1
        if resp is grpc.aio.EOF:
            raise ContainerdError(f"containerd ended the write of {self._what} early")
        return resp

    async def stat(self) -> int:
        """Open (or resume) the ingest; returns and records its current offset."""
        await self._send(
            content_pb.WriteContentRequest(
                action=content_pb.STAT, ref=self.ref, total=self.size, expected=self.digest
            )
        )
        with self._client._errors("Content.Write", self._what):
            resp = await self._receive()
        self.offset = int(resp.offset)
        return self.offset

    def restart(self) -> None:
        """Start over: the next write goes to offset 0, which truncates the ingest."""
        self.offset = 0

    async def write(self, data: bytes) -> None:
        """Append `data` at the current offset."""
        await self._send(
            content_pb.WriteContentRequest(
                action=content_pb.WRITE, ref=self.ref, offset=self.offset, data=data
            )
        )
        self.offset += len(data)

    async def commit(self, labels: Mapping[str, str] | None = None) -> None:
        """Commit with the expected digest and size: containerd refuses (FAILED_PRECONDITION)
        an ingest whose bytes do not match, so nothing unverified is ever committed."""
        await self._send(
            content_pb.WriteContentRequest(
                action=content_pb.COMMIT,
                ref=self.ref,
                offset=self.offset,
                total=self.size,
                expected=self.digest,
                labels=dict(labels or {}),
            )
        )
        with self._client._errors("Content.Write", self._what):
            while self._pending:
                await self._receive()
            await self._call.done_writing()


# --- the client -----------------------------------------------------------------------


class Containerd:
    """An asyncio client for one containerd socket and one containerd namespace.

    Use as `async with Containerd(namespace="nstask") as ctd: ...`, or call close().
    The channel is opened lazily, inside the running event loop that first uses it.
    """

    def __init__(
        self,
        *,
        address: str = DEFAULT_ADDRESS,
        namespace: str = DEFAULT_NAMESPACE,
        snapshotter: str = DEFAULT_SNAPSHOTTER,
        runtime: str = DEFAULT_RUNTIME,
        timeout: float = 60.0,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self.snapshotter = snapshotter
        self.runtime = runtime
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._stubs: dict[str, Any] = {}

    async def __aenter__(self) -> Containerd:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; in-flight streams (wait, subscribe) end with an error."""
        if self._channel is not None:
            channel, self._channel = self._channel, None
            self._stubs.clear()
            await channel.close()

    # -- plumbing: channel, metadata, error translation (the one place) --

    def _stub(self, name: str) -> Any:
        """The gRPC stub of one service, on a channel created on first use."""
        if self._channel is None:
            target = self.address if "://" in self.address else f"unix://{self.address}"
            self._channel = grpc.aio.insecure_channel(
                target,
                options=[
                    ("grpc.max_receive_message_length", _MAX_MESSAGE),
                    ("grpc.max_send_message_length", _MAX_MESSAGE),
                    # containerd restarts are local and quick: reconnect within seconds,
                    # not after gRPC's default backoff of up to two minutes.
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 2000),
                ],
            )
        stub = self._stubs.get(name)
        if stub is None:
            stub = _STUB_FACTORIES[name](self._channel)
            self._stubs[name] = stub
        return stub

    def _metadata(self, lease: str | None = None) -> tuple[tuple[str, str], ...]:
        md: tuple[tuple[str, str], ...] = (("containerd-namespace", self.namespace),)
        if lease:
            md += (("containerd-lease", lease),)
        return md

    @contextlib.contextmanager
    def _errors(self, rpc: str, what: str) -> Iterator[None]:
        """Translate any gRPC failure of `rpc` (acting on `what`) into an nstask error."""
        try:
            yield
        except grpc.aio.AioRpcError as exc:
            raise self._translate(rpc, what, exc.code(), exc.details() or "") from exc

    def _translate(
        self, rpc: str, what: str, code: grpc.StatusCode, details: str
    ) -> ContainerdError | NotFound | AlreadyExists | Unavailable:
        where = f"(containerd {rpc}, namespace {self.namespace})"
        info = {"rpc": rpc, "object": what, "status": code.name, "detail": details}
        if code == grpc.StatusCode.NOT_FOUND:
            return ContainerdNotFound(f"{what} not found {where}", **info)
        if code == grpc.StatusCode.ALREADY_EXISTS:
            return ContainerdAlreadyExists(f"{what} already exists {where}", **info)
        # containerd also answers UNAVAILABLE itself for a content ingest that another
        # writer holds ("ref ... locked"): that is a busy daemon, not a missing one.
        if code == grpc.StatusCode.UNAVAILABLE and "locked" not in details:
            return ContainerdUnavailable(
                f"containerd does not answer on {self.address}: start it with "
                "scripts/bootstrap.sh or `containerd &`",
                **info,
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ContainerdTimeout(f"containerd {rpc} on {what} timed out: {details}", **info)
        return ContainerdError(f"containerd {rpc} on {what} failed: {code.name}: {details}", **info)

    async def _unary(
        self,
        rpc: str,
        what: str,
        request: Any,
        *,
        lease: str | None = None,
        timeout: float | None = -1.0,
    ) -> Any:
        """Call `Service.Method` (rpc) with our metadata; timeout -1 means the default."""
        service, method = rpc.split(".")
        call = getattr(self._stub(service), method)
        with self._errors(rpc, what):
            return await call(
                request,
                metadata=self._metadata(lease),
                timeout=self.timeout if timeout == -1.0 else timeout,
            )

    async def _lookup(self, rpc: str, what: str, request: Any) -> Any | None:
        """A unary lookup that answers None instead of raising for a missing object."""
        try:
            return await self._unary(rpc, what, request)
        except ContainerdNotFound:
            return None

    # -- version and namespaces --

    async def version(self) -> Version:
        """The daemon's version; also the cheapest way to learn that it answers."""
        resp = await self._unary("Version.Version", "version", empty_pb2.Empty(), timeout=10.0)
        return Version(resp.version, resp.revision)

    async def ensure_namespace(
        self, name: str | None = None, *, labels: Mapping[str, str] | None = None
    ) -> None:
        """Create the namespace (ours by default) unless it exists."""
        ns = namespaces_pb.Namespace(name=name or self.namespace, labels=dict(labels or {}))
        with contextlib.suppress(ContainerdAlreadyExists):
            await self._unary(
                "Namespaces.Create",
                f"namespace {ns.name!r}",
                namespaces_pb.CreateNamespaceRequest(namespace=ns),
            )

    async def list_namespaces(self) -> list[str]:
        resp = await self._unary(
            "Namespaces.List", "namespaces", namespaces_pb.ListNamespacesRequest()
        )
        return [ns.name for ns in resp.namespaces]

    async def delete_namespace(self, name: str | None = None) -> None:
        """Delete an empty namespace; containerd refuses (FAILED_PRECONDITION) if it is not."""
        name = name or self.namespace
        await self._unary(
            "Namespaces.Delete",
            f"namespace {name!r}",
            namespaces_pb.DeleteNamespaceRequest(name=name),
        )

    # -- images --

    async def get_image(self, name: str) -> Image | None:
        resp = await self._lookup(
            "Images.Get", f"image {name!r}", images_pb.GetImageRequest(name=name)
        )
        return _image(resp.image) if resp else None

    async def list_images(self, filters: Iterable[str] = ()) -> list[Image]:
        resp = await self._unary(
            "Images.List", "images", images_pb.ListImagesRequest(filters=list(filters))
        )
        return [_image(i) for i in resp.images]

    async def create_image(
        self,
        name: str,
        target: Descriptor,
        *,
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> Image:
        """Create the image record, or point an existing one at `target` (as ctr import)."""
        image = images_pb.Image(name=name, target=_descriptor_pb(target), labels=dict(labels or {}))
        try:
            resp = await self._unary(
                "Images.Create",
                f"image {name!r}",
                images_pb.CreateImageRequest(image=image),
                lease=lease,
            )
        except ContainerdAlreadyExists:
            return await self.update_image(name, target, labels=labels, lease=lease)
        return _image(resp.image)

    async def update_image(
        self,
        name: str,
        target: Descriptor,
        *,
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> Image:
        """Replace target and labels of an existing image record."""
        image = images_pb.Image(name=name, target=_descriptor_pb(target), labels=dict(labels or {}))
        mask = field_mask_pb2.FieldMask(paths=["target", "labels"])
        resp = await self._unary(
            "Images.Update",
            f"image {name!r}",
            images_pb.UpdateImageRequest(image=image, update_mask=mask),
            lease=lease,
        )
        return _image(resp.image)

    async def delete_image(self, name: str, *, sync: bool = False) -> None:
        """Delete the record; sync=True also runs the garbage collector before answering."""
        await self._unary(
            "Images.Delete", f"image {name!r}", images_pb.DeleteImageRequest(name=name, sync=sync)
        )

    # -- content --

    async def content_info(self, digest: str) -> ContentInfo | None:
        resp = await self._lookup(
            "Content.Info", f"blob {digest}", content_pb.InfoRequest(digest=digest)
        )
        return _content_info(resp.info) if resp else None

    async def list_content(self, filters: Iterable[str] = ()) -> list[ContentInfo]:
        found: list[ContentInfo] = []
        call = self._stub("Content").List(
            content_pb.ListContentRequest(filters=list(filters)), metadata=self._metadata()
        )
        with self._errors("Content.List", "content"):
            async for resp in call:
                found.extend(_content_info(i) for i in resp.info)
        return found

    async def update_content_labels(
        self, digest: str, labels: Mapping[str, str], *, lease: str | None = None
    ) -> ContentInfo:
        """Set (or, with an empty value, remove) the given labels; others stay as they are."""
        info = content_pb.Info(digest=digest, labels={k: v for k, v in labels.items() if v})
        mask = field_mask_pb2.FieldMask(paths=[f"labels.{key}" for key in labels])
        resp = await self._unary(
            "Content.Update",
            f"blob {digest}",
            content_pb.UpdateRequest(info=info, update_mask=mask),
            lease=lease,
        )
        return _content_info(resp.info)

    async def delete_content(self, digest: str) -> None:
        await self._unary(
            "Content.Delete", f"blob {digest}", content_pb.DeleteContentRequest(digest=digest)
        )

    async def read_blob(self, digest: str) -> bytes:
        """The whole blob; meant for manifests and configs, not for layers."""
        return b"".join([chunk async for chunk in self.read_blob_chunks(digest)])

    async def read_blob_chunks(self, digest: str) -> AsyncIterator[bytes]:
        """The blob as the chunks the server sends (streamed, for big blobs)."""
        call = self._stub("Content").Read(
            content_pb.ReadContentRequest(digest=digest), metadata=self._metadata()
        )
        with self._errors("Content.Read", f"blob {digest}"):
            async for resp in call:
                yield resp.data

    async def write_blob(
        self,
        ref: str,
        digest: str,
        size: int,
        source: IO[bytes] | bytes,
        *,
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> bool:
        """Stream a blob into the content store; False when it was already there.

        Protocol (Content.Write, one bidi stream): STAT the ingest `ref` (it may hold a
        partial earlier write), WRITE chunks at increasing offsets, COMMIT with the
        expected digest and size so containerd verifies them. A blob already present only
        gets its labels updated. `source` is read in 1 MiB chunks, never whole.
        """
        present = await self.content_info(digest)
        if present is not None:
            missing = {k: v for k, v in (labels or {}).items() if present.labels.get(k) != v}
            if missing:
                await self.update_content_labels(digest, missing, lease=lease)
            return False
        call = self._stub("Content").Write(metadata=self._metadata(lease))
        what = f"blob {digest} (ingest {ref!r})"
        try:
            with self._errors("Content.Write", what):
                await call.write(
                    content_pb.WriteContentRequest(
                        action=content_pb.STAT, ref=ref, total=size, expected=digest
                    )
                )
                await call.read()
                # Restart from zero: a partial ingest from a crashed writer is discarded by
                # the first WRITE at offset 0, which is simpler than seeking the source.
                offset = 0
                for chunk in _iter_chunks(source, _WRITE_CHUNK):
                    await call.write(
                        content_pb.WriteContentRequest(
                            action=content_pb.WRITE, ref=ref, offset=offset, data=chunk
                        )
                    )
                    await call.read()
                    offset += len(chunk)
                await call.write(
                    content_pb.WriteContentRequest(
                        action=content_pb.COMMIT,
                        ref=ref,
                        offset=offset,
                        total=size,
                        expected=digest,
                        labels=dict(labels or {}),
                    )
                )
                await call.read()
                await call.done_writing()
        except ContainerdAlreadyExists:
            # Another writer committed the same digest first: the content is there.
            if labels:
                await self.update_content_labels(digest, labels, lease=lease)
            return False
        except BaseException:
            # Drop the partial ingest now rather than leave it to the garbage collector.
            call.cancel()
            with contextlib.suppress(NotFound, ContainerdError, Unavailable):
                await self.abort_write(ref)
            raise
        finally:
            call.cancel()
        return True

    @contextlib.asynccontextmanager
    async def open_writer(
        self, ref: str, digest: str, size: int, *, lease: str | None = None
    ) -> AsyncIterator[ContentWriter]:
        """An ingest to stream a blob into, resumable: its `offset` after STAT is what an
        earlier writer of `ref` left. Leaving the block without commit() keeps the partial
        ingest (under `lease`) for a later resume; abort_write(ref) drops it. Raises
        ContainerdAlreadyExists when the blob is already committed, and ContainerdError
        (status UNAVAILABLE, "locked") while another writer holds `ref`."""
        call = self._stub("Content").Write(metadata=self._metadata(lease))
        writer = ContentWriter(self, call, ref, digest, size)
        try:
            await writer.stat()
            yield writer
        finally:
            call.cancel()

    async def abort_write(self, ref: str) -> None:
        await self._unary("Content.Abort", f"ingest {ref!r}", content_pb.AbortRequest(ref=ref))

    # -- snapshots --

    def _snapshotter(self, snapshotter: str | None) -> str:
        return snapshotter or self.snapshotter

    async def stat_snapshot(
        self, key: str, *, snapshotter: str | None = None
    ) -> SnapshotInfo | None:
        req = snapshots_pb.StatSnapshotRequest(snapshotter=self._snapshotter(snapshotter), key=key)
        resp = await self._lookup("Snapshots.Stat", f"snapshot {key!r}", req)
        return _snapshot_info(resp.info) if resp else None

    async def prepare_snapshot(
        self,
        key: str,
        parent: str = "",
        *,
        labels: Mapping[str, str] | None = None,
        snapshotter: str | None = None,
        lease: str | None = None,
    ) -> list[Mount]:
        """An active (writable) snapshot on top of `parent`; returns its mounts."""
        req = snapshots_pb.PrepareSnapshotRequest(
            snapshotter=self._snapshotter(snapshotter),
            key=key,
            parent=parent,
            labels=dict(labels or {}),
        )
        resp = await self._unary("Snapshots.Prepare", f"snapshot {key!r}", req, lease=lease)
        return [_mount(m) for m in resp.mounts]

    async def view_snapshot(
        self,
        key: str,
        parent: str,
        *,
        labels: Mapping[str, str] | None = None,
        snapshotter: str | None = None,
        lease: str | None = None,
    ) -> list[Mount]:
        """A read-only view of the committed snapshot `parent`."""
        req = snapshots_pb.ViewSnapshotRequest(
            snapshotter=self._snapshotter(snapshotter),
            key=key,
            parent=parent,
            labels=dict(labels or {}),
        )
        resp = await self._unary("Snapshots.View", f"snapshot {key!r}", req, lease=lease)
        return [_mount(m) for m in resp.mounts]

    async def snapshot_mounts(self, key: str, *, snapshotter: str | None = None) -> list[Mount]:
        req = snapshots_pb.MountsRequest(snapshotter=self._snapshotter(snapshotter), key=key)
        resp = await self._unary("Snapshots.Mounts", f"snapshot {key!r}", req)
        return [_mount(m) for m in resp.mounts]

    async def commit_snapshot(
        self,
        name: str,
        key: str,
        *,
        labels: Mapping[str, str] | None = None,
        snapshotter: str | None = None,
        lease: str | None = None,
    ) -> None:
        """Turn the active snapshot `key` into the committed snapshot `name`."""
        req = snapshots_pb.CommitSnapshotRequest(
            snapshotter=self._snapshotter(snapshotter),
            name=name,
            key=key,
            labels=dict(labels or {}),
        )
        await self._unary("Snapshots.Commit", f"snapshot {key!r} -> {name!r}", req, lease=lease)

    async def remove_snapshot(self, key: str, *, snapshotter: str | None = None) -> None:
        req = snapshots_pb.RemoveSnapshotRequest(
            snapshotter=self._snapshotter(snapshotter), key=key
        )
        await self._unary("Snapshots.Remove", f"snapshot {key!r}", req)

    async def list_snapshots(
        self, filters: Iterable[str] = (), *, snapshotter: str | None = None
    ) -> list[SnapshotInfo]:
        req = snapshots_pb.ListSnapshotsRequest(
            snapshotter=self._snapshotter(snapshotter), filters=list(filters)
        )
        found: list[SnapshotInfo] = []
        call = self._stub("Snapshots").List(req, metadata=self._metadata())
        with self._errors("Snapshots.List", "snapshots"):
            async for resp in call:
                found.extend(_snapshot_info(i) for i in resp.info)
        return found

    # -- diff --

    async def apply_diff(
        self, layer: Descriptor, mounts: Iterable[Mount], *, lease: str | None = None
    ) -> Descriptor:
        """Unpack the layer blob onto the mounts; returns the uncompressed (diff id) descriptor."""
        req = diff_pb.ApplyRequest(
            diff=_descriptor_pb(layer), mounts=[_mount_pb(m) for m in mounts]
        )
        resp = await self._unary(
            "Diff.Apply", f"layer {layer.digest}", req, lease=lease, timeout=None
        )
        return _descriptor(resp.applied)

    # -- leases --

    async def create_lease(
        self,
        lease_id: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        expire: timedelta | None = None,
    ) -> Lease:
        """A lease protecting what is created under it; `expire` lets containerd drop it
        by itself should we crash before deleting it (the gc.expire label, as ctr sets)."""
        all_labels = dict(labels or {})
        if expire is not None:
            when = datetime.now(UTC) + expire
            all_labels["containerd.io/gc.expire"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        lease_id = lease_id or f"nstask-{uuid.uuid4().hex[:16]}"
        resp = await self._unary(
            "Leases.Create",
            f"lease {lease_id!r}",
            leases_pb.CreateRequest(id=lease_id, labels=all_labels),
        )
        return _lease(resp.lease)

    async def delete_lease(self, lease_id: str, *, sync: bool = True) -> None:
        await self._unary(
            "Leases.Delete",
            f"lease {lease_id!r}",
            leases_pb.DeleteRequest(id=lease_id, sync=sync),
            timeout=None if sync else -1.0,
        )

    async def list_leases(self, filters: Iterable[str] = ()) -> list[Lease]:
        resp = await self._unary(
            "Leases.List", "leases", leases_pb.ListRequest(filters=list(filters))
        )
        return [_lease(lease) for lease in resp.leases]

    @contextlib.asynccontextmanager
    async def leased(
        self, *, expire: timedelta = timedelta(hours=1), sync: bool = False
    ) -> AsyncIterator[str]:
        """A temporary lease for a multi-step operation, deleted at the end even on error."""
        lease = await self.create_lease(expire=expire)
        try:
            yield lease.id
        finally:
            await self.delete_lease(lease.id, sync=sync)

    # -- containers --

    async def create_container(
        self,
        container_id: str,
        *,
        image: str,
        spec: Mapping[str, Any],
        snapshot_key: str,
        snapshotter: str | None = None,
        runtime: str | None = None,
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> Container:
        """Record a container: the OCI spec goes as JSON in an Any with the OCI type URL."""
        container = containers_pb.Container(
            id=container_id,
            image=image,
            labels=dict(labels or {}),
            runtime=containers_pb.Container.Runtime(name=runtime or self.runtime),
            spec=_json_any(SPEC_TYPE_URL, spec),
            snapshotter=self._snapshotter(snapshotter),
            snapshot_key=snapshot_key,
        )
        resp = await self._unary(
            "Containers.Create",
            f"container {container_id!r}",
            containers_pb.CreateContainerRequest(container=container),
            lease=lease,
        )
        return _container(resp.container)

    async def get_container(self, container_id: str) -> Container | None:
        resp = await self._lookup(
            "Containers.Get",
            f"container {container_id!r}",
            containers_pb.GetContainerRequest(id=container_id),
        )
        return _container(resp.container) if resp else None

    async def list_containers(self, filters: Iterable[str] = ()) -> list[Container]:
        resp = await self._unary(
            "Containers.List",
            "containers",
            containers_pb.ListContainersRequest(filters=list(filters)),
        )
        return [_container(c) for c in resp.containers]

    async def update_container_labels(
        self, container_id: str, labels: Mapping[str, str]
    ) -> Container:
        """Set the given labels (an empty value removes one); others stay."""
        container = containers_pb.Container(
            id=container_id, labels={k: v for k, v in labels.items() if v}
        )
        mask = field_mask_pb2.FieldMask(paths=[f"labels.{key}" for key in labels])
        resp = await self._unary(
            "Containers.Update",
            f"container {container_id!r}",
            containers_pb.UpdateContainerRequest(container=container, update_mask=mask),
        )
        return _container(resp.container)

    async def delete_container(self, container_id: str) -> None:
        await self._unary(
            "Containers.Delete",
            f"container {container_id!r}",
            containers_pb.DeleteContainerRequest(id=container_id),
        )

    # -- tasks --

    async def create_task(
        self,
        container_id: str,
        *,
        rootfs: Iterable[Mount],
        stdout: str = "",
        stderr: str = "",
        stdin: str = "",
        terminal: bool = False,
    ) -> int:
        """Create the container's init process (not started); returns its pid.

        stdout/stderr are URIs the shim understands: file:///abs/path, or
        binary:///abs/logger?k=v for a logging binary (which must signal readiness).
        """
        req = tasks_pb.CreateTaskRequest(
            container_id=container_id,
            rootfs=[_mount_pb(m) for m in rootfs],
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            terminal=terminal,
        )
        resp = await self._unary("Tasks.Create", f"task {container_id!r}", req)
        return int(resp.pid)

    async def start_task(self, container_id: str, *, exec_id: str = "") -> int:
        """Start the init process (or an exec); register wait_task BEFORE calling this."""
        req = tasks_pb.StartRequest(container_id=container_id, exec_id=exec_id)
        resp = await self._unary("Tasks.Start", f"task {container_id!r}", req)
        return int(resp.pid)

    async def wait_task(self, container_id: str, *, exec_id: str = "") -> ExitStatus:
        """Block until the process exits. Long-running and without deadline: start it as an
        asyncio task before start_task, so that an immediate exit cannot be missed."""
        req = tasks_pb.WaitRequest(container_id=container_id, exec_id=exec_id)
        resp = await self._unary("Tasks.Wait", f"task {container_id!r}", req, timeout=None)
        return ExitStatus(int(resp.exit_status), _epoch(resp.exited_at))

    async def kill_task(
        self,
        container_id: str,
        signal: int = _signal.SIGTERM,
        *,
        all_processes: bool = False,
        exec_id: str = "",
    ) -> None:
        """Send a signal to the init process (or an exec); all_processes=True signals every
        process of the container (what a stop needs when PID 1 ignores the signal)."""
        req = tasks_pb.KillRequest(
            container_id=container_id, exec_id=exec_id, signal=int(signal), all=all_processes
        )
        await self._unary("Tasks.Kill", f"task {container_id!r}", req)

    async def delete_task(self, container_id: str) -> ExitStatus:
        """Delete a stopped task (the shim drains and stops its loggers); returns its exit."""
        req = tasks_pb.DeleteTaskRequest(container_id=container_id)
        resp = await self._unary("Tasks.Delete", f"task {container_id!r}", req)
        return ExitStatus(int(resp.exit_status), _epoch(resp.exited_at))

    async def delete_process(self, container_id: str, exec_id: str) -> ExitStatus:
        req = tasks_pb.DeleteProcessRequest(container_id=container_id, exec_id=exec_id)
        resp = await self._unary(
            "Tasks.DeleteProcess", f"exec {exec_id!r} of task {container_id!r}", req
        )
        return ExitStatus(int(resp.exit_status), _epoch(resp.exited_at))

    async def get_task(self, container_id: str, *, exec_id: str = "") -> TaskInfo | None:
        req = tasks_pb.GetRequest(container_id=container_id, exec_id=exec_id)
        resp = await self._lookup("Tasks.Get", f"task {container_id!r}", req)
        return _task(resp.process, container_id) if resp else None

    async def list_tasks(self, filter: str = "") -> list[TaskInfo]:
        resp = await self._unary("Tasks.List", "tasks", tasks_pb.ListTasksRequest(filter=filter))
        return [_task(p) for p in resp.tasks]

    async def exec_process(
        self,
        container_id: str,
        exec_id: str,
        *,
        process_spec: Mapping[str, Any],
        stdout: str = "",
        stderr: str = "",
        stdin: str = "",
        terminal: bool = False,
    ) -> None:
        """Add an extra process (OCI process spec) to a running task; start it with
        start_task(container_id, exec_id=...) after registering wait_task for it."""
        req = tasks_pb.ExecProcessRequest(
            container_id=container_id,
            exec_id=exec_id,
            spec=_json_any(PROCESS_SPEC_TYPE_URL, process_spec),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            terminal=terminal,
        )
        await self._unary("Tasks.Exec", f"exec {exec_id!r} of task {container_id!r}", req)

    async def resize_pty(
        self, container_id: str, *, width: int, height: int, exec_id: str = ""
    ) -> None:
        """Set the size of a process's terminal (columns, rows): at start and on each
        SIGWINCH of the user's terminal, as `ctr tasks exec -t` does."""
        req = tasks_pb.ResizePtyRequest(
            container_id=container_id, exec_id=exec_id, width=width, height=height
        )
        await self._unary("Tasks.ResizePty", f"terminal of task {container_id!r}", req)

    async def close_stdin(self, container_id: str, *, exec_id: str = "") -> None:
        """Close a process's stdin (the user's input ended): the process reads EOF."""
        req = tasks_pb.CloseIORequest(container_id=container_id, exec_id=exec_id, stdin=True)
        await self._unary("Tasks.CloseIO", f"stdin of task {container_id!r}", req)

    async def metrics(self, container_ids: Iterable[str]) -> list[Metric]:
        """cgroup statistics of the given tasks (data left encoded, see Metric)."""
        filters = [f"id=={cid}" for cid in container_ids]
        resp = await self._unary(
            "Tasks.Metrics", "metrics", tasks_pb.MetricsRequest(filters=filters)
        )
        return [
            Metric(m.id, _time(m.timestamp), m.data.type_url, m.data.value) for m in resp.metrics
        ]

    # -- events --

    def subscribe(self, filters: Iterable[str] = ()) -> AsyncIterator[Event]:
        """Events of our namespace matching any of the filters (e.g. 'topic=="/tasks/exit"').

        The RPC starts at this call, not at the first iteration. Still, an event published
        before containerd has registered the subscription is not delivered (the stream has
        no acknowledgement), so exits that must not be missed are taken from wait_task.
        Leaving the `async for` (or aclose()) cancels the stream.
        """
        scope = f'namespace=="{self.namespace}"'
        wanted = [f"{scope},{f}" for f in filters] or [scope]
        call = self._stub("Events").Subscribe(
            envelope_pb.SubscribeRequest(filters=wanted), metadata=self._metadata()
        )
        return self._events(call)

    async def _events(self, call: Any) -> AsyncIterator[Event]:
        try:
            with self._errors("Events.Subscribe", "events"):
                async for envelope in call:
                    yield _event(envelope)
        finally:
            call.cancel()


async def purge_namespace(
    client: Containerd, *, kill_timeout: float = 10.0, attempts: int = 20
) -> None:
    """Remove everything in the client's namespace, then the namespace itself.

    Tasks are SIGKILLed and deleted, then containers, images, leases, snapshots (children
    before parents) and blobs. containerd may still count an object that is going away
    (the namespace delete answers FAILED_PRECONDITION), so the sweep is retried briefly.
    Meant for test namespaces and a user's explicit reset; never for a namespace nstask
    does not own.
    """
    for attempt in range(attempts):
        await _sweep(client, kill_timeout)
        try:
            await client.delete_namespace()
            return
        except ContainerdNotFound:
            return
        except ContainerdError as exc:
            if exc.details.get("status") != "FAILED_PRECONDITION" or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.1)


async def _sweep(client: Containerd, kill_timeout: float) -> None:
    """One pass of purge_namespace over every kind of object, tolerant of races."""
    for task in await client.list_tasks():
        if task.status != "stopped":
            waiter = asyncio.ensure_future(client.wait_task(task.container_id))
            with contextlib.suppress(ContainerdNotFound, ContainerdError):
                await client.kill_task(task.container_id, _signal.SIGKILL, all_processes=True)
            with contextlib.suppress(TimeoutError, ContainerdNotFound, ContainerdError):
                await asyncio.wait_for(waiter, kill_timeout)
        with contextlib.suppress(ContainerdNotFound):
            await client.delete_task(task.container_id)
    for container in await client.list_containers():
        with contextlib.suppress(ContainerdNotFound):
            await client.delete_container(container.id)
    for image in await client.list_images():
        with contextlib.suppress(ContainerdNotFound):
            await client.delete_image(image.name)
    for lease in await client.list_leases():
        with contextlib.suppress(ContainerdNotFound):
            await client.delete_lease(lease.id, sync=False)
    snapshots = await client.list_snapshots()
    while snapshots:
        parents = {s.parent for s in snapshots}
        for snap in [s for s in snapshots if s.name not in parents]:
            with contextlib.suppress(ContainerdNotFound, ContainerdError):
                await client.remove_snapshot(snap.name)
        remaining = await client.list_snapshots()
        if len(remaining) >= len(snapshots):
            break  # something still holds them; the namespace delete will say what
        snapshots = remaining
    for blob in await client.list_content():
        with contextlib.suppress(ContainerdNotFound):
            await client.delete_content(blob.digest)


_STUB_FACTORIES: dict[str, Any] = {
    "Containers": containers_grpc.ContainersStub,
    "Content": content_grpc.ContentStub,
    "Diff": diff_grpc.DiffStub,
    "Events": events_grpc.EventsStub,
    "Images": images_grpc.ImagesStub,
    "Leases": leases_grpc.LeasesStub,
    "Namespaces": namespaces_grpc.NamespacesStub,
    "Snapshots": snapshots_grpc.SnapshotsStub,
    "Tasks": tasks_grpc.TasksStub,
    "Version": version_grpc.VersionStub,
}
