"""agent.containerd against the real daemon: namespaces, content, leases, containers, tasks,
events and the error mapping. Each test works in a namespace nstask-test-<random> of its own
and removes everything in it at the end, even on failure."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.containerd import (
    Containerd,
    ContainerdAlreadyExists,
    ContainerdNotFound,
    ContainerdUnavailable,
    Event,
    TaskExit,
    purge_namespace,
)
from agent.errors import ContainerdError, Unavailable
from agent.images import image_config, import_archive, pack

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and a running containerd"),
]

REPO = Path(__file__).resolve().parents[2]
ADDRESS = os.environ.get("NSTASK_CONTAINERD_ADDRESS", "/run/containerd/containerd.sock")
REF = "nstask.local/busybox:test"


def busybox_archive(directory: Path) -> Path:
    """Pack the busybox test image with the same code bootstrap uses."""
    spec = importlib.util.spec_from_file_location(
        "make_test_image", REPO / "scripts/make_test_image.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rootfs = directory / "rootfs"
    rootfs.mkdir()
    module.busybox_rootfs(rootfs)
    archive = directory / "busybox.tar"
    pack(rootfs, REF, archive, cmd=["sh"])
    return archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_archive(tmp_path_factory.mktemp("image"))


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"nstask-test-{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        asyncio.run(_purge(name))


async def _purge(name: str) -> None:
    async with Containerd(address=ADDRESS, namespace=name) as client:
        if name in await client.list_namespaces():
            await purge_namespace(client)


def minimal_spec(namespace: str, container_id: str, args: list[str]) -> dict[str, Any]:
    """The smallest OCI spec runc runs: own namespaces, /proc and /dev, no network."""
    caps = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETGID", "CAP_SETUID"]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs"},
        "hostname": "nstask-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "cgroupsPath": f"/{namespace}/{container_id}",
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        },
    }


async def _first_exit(events: AsyncIterator[Event], container_id: str) -> Event:
    async for event in events:
        if isinstance(event.payload, TaskExit) and event.payload.container_id == container_id:
            return event
    raise AssertionError("event stream ended")


def test_task_round_trip_exit_code_via_wait_and_event(
    namespace: str, archive: Path, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Containerd(address=ADDRESS, namespace=namespace) as client:
            await client.ensure_namespace()
            [ref] = await import_archive(client, archive)
            config = await image_config(client, ref.name)
            cid = f"nstask-t-{secrets.token_hex(4)}"
            lease = (await client.create_lease(expire=timedelta(minutes=10))).id
            mounts = await client.prepare_snapshot(cid, config.chain_id, lease=lease)
            args = ["sh", "-c", "echo hello; echo oops >&2; sleep 0.5; exit 3"]
            container = await client.create_container(
                cid,
                image=ref.name,
                spec=minimal_spec(namespace, cid, args),
                snapshot_key=cid,
                labels={"nstask.test": "1"},
                lease=lease,
            )
            assert container.spec is not None and container.spec["process"]["args"] == args
            assert (await client.get_container(cid)) == container
            events = client.subscribe(['topic=="/tasks/exit"'])
            exit_event = asyncio.ensure_future(_first_exit(events, cid))
            await asyncio.sleep(0.2)  # let containerd register the subscription
            # The runc shim writes both streams into the stdout file for file:// URIs.
            out = tmp_path / "output"
            pid = await client.create_task(
                cid, rootfs=mounts, stdout=f"file://{out}", stderr=f"file://{out}"
            )
            task = await client.get_task(cid)
            assert task is not None and task.status == "created" and task.pid == pid
            waiter = asyncio.ensure_future(client.wait_task(cid))  # before start
            await asyncio.sleep(0)
            assert await client.start_task(cid) == pid
            assert (await client.get_task(cid)).status == "running"  # type: ignore[union-attr]
            status = await asyncio.wait_for(waiter, 15)
            assert status.code == 3 and status.exited_at > 0
            event = await asyncio.wait_for(exit_event, 15)
            await events.aclose()  # type: ignore[attr-defined]
            assert isinstance(event.payload, TaskExit)
            assert (event.topic, event.namespace) == ("/tasks/exit", namespace)
            assert (event.payload.exit_status, event.payload.pid) == (3, pid)
            assert sorted(out.read_text().splitlines()) == ["hello", "oops"]
            assert (await client.delete_task(cid)).code == 3
            assert await client.get_task(cid) is None
            await client.delete_container(cid)
            await client.remove_snapshot(cid)
            assert await client.list_containers() == []

    asyncio.run(scenario())


def test_kill_stops_a_sleeping_task(namespace: str, archive: Path) -> None:
    async def scenario() -> None:
        async with Containerd(address=ADDRESS, namespace=namespace) as client:
            await client.ensure_namespace()
            [ref] = await import_archive(client, archive)
            config = await image_config(client, ref.name)
            cid = f"nstask-t-{secrets.token_hex(4)}"
            lease = (await client.create_lease(expire=timedelta(minutes=10))).id
            mounts = await client.prepare_snapshot(cid, config.chain_id, lease=lease)
            spec = minimal_spec(namespace, cid, ["sleep", "60"])
            await client.create_container(
                cid, image=ref.name, spec=spec, snapshot_key=cid, lease=lease
            )
            await client.create_task(cid, rootfs=mounts)
            waiter = asyncio.ensure_future(client.wait_task(cid))
            await client.start_task(cid)
            assert [t.container_id for t in await client.list_tasks()] == [cid]
            await client.kill_task(cid, 9, all_processes=True)
            assert (await asyncio.wait_for(waiter, 15)).code == 137
            await client.delete_task(cid)
            await client.delete_container(cid)
            await client.remove_snapshot(cid)

    asyncio.run(scenario())


def test_errors_name_the_object_and_the_rpc(namespace: str, archive: Path) -> None:
    async def scenario() -> None:
        async with Containerd(address=ADDRESS, namespace=namespace) as client:
            await client.ensure_namespace()
            await client.ensure_namespace()  # idempotent
            assert await client.get_container("nstask-nope") is None
            assert await client.get_task("nstask-nope") is None
            assert await client.get_image("nstask.local/nope:1") is None
            with pytest.raises(ContainerdNotFound) as missing:
                await client.delete_task("nstask-nope")
            assert "task 'nstask-nope'" in str(missing.value)
            assert "Tasks.Delete" in str(missing.value) and namespace in str(missing.value)
            spec = minimal_spec(namespace, "nstask-dup", ["true"])
            await client.create_container("nstask-dup", image=REF, spec=spec, snapshot_key="")
            with pytest.raises(ContainerdAlreadyExists):
                await client.create_container("nstask-dup", image=REF, spec=spec, snapshot_key="")
            # Metadata carries the namespace: another namespace sees nothing of ours.
            async with Containerd(address=ADDRESS, namespace=f"{namespace}-other") as other:
                assert await other.get_container("nstask-dup") is None
            await client.delete_container("nstask-dup")
            with pytest.raises(ContainerdError) as busy:  # it still holds the seed blob
                await client.delete_namespace(namespace)
            assert busy.value.details["status"] == "FAILED_PRECONDITION"

    asyncio.run(_seed_content(namespace))
    asyncio.run(scenario())


async def _seed_content(namespace: str) -> None:
    """A blob, so that the namespace is not empty and its delete is refused."""
    async with Containerd(address=ADDRESS, namespace=namespace) as client:
        data = b"nstask seed\n"
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        async with client.leased() as lease:
            await client.write_blob("nstask-seed", digest, len(data), data, lease=lease)
            await client.update_content_labels(digest, {"containerd.io/gc.root": "1"})


def test_content_write_streams_a_file_and_verifies_it(namespace: str, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    data = blob.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    async def scenario() -> None:
        async with (
            Containerd(address=ADDRESS, namespace=namespace) as client,
            client.leased() as lease,
        ):
            with blob.open("rb") as f:
                assert await client.write_blob(
                    "nstask-big", digest, len(data), f, labels={"x": "1"}, lease=lease
                )
            with blob.open("rb") as f:  # present: not written again, labels merged
                assert not await client.write_blob(
                    "nstask-big", digest, len(data), f, labels={"y": "2"}, lease=lease
                )
            info = await client.content_info(digest)
            assert info is not None and info.size == len(data)
            assert info.labels == {"x": "1", "y": "2"}
            assert await client.read_blob(digest) == data
            wrong = "sha256:" + "0" * 64
            with pytest.raises(ContainerdError) as bad:
                await client.write_blob("nstask-bad", wrong, 5, b"abcde", lease=lease)
            assert bad.value.details["rpc"] == "Content.Write"
            assert await client.content_info(wrong) is None
            await client.delete_content(digest)
            assert await client.content_info(digest) is None

    asyncio.run(scenario())


def test_leases_carry_labels_and_expiry(namespace: str) -> None:
    async def scenario() -> None:
        async with Containerd(address=ADDRESS, namespace=namespace) as client:
            lease = await client.create_lease(
                "nstask-lease-test", labels={"nstask.task": "t1"}, expire=timedelta(minutes=5)
            )
            assert lease.id == "nstask-lease-test"
            [listed] = await client.list_leases()
            assert listed.labels["nstask.task"] == "t1"
            assert "containerd.io/gc.expire" in listed.labels
            with pytest.raises(ContainerdAlreadyExists):
                await client.create_lease("nstask-lease-test")
            await client.delete_lease(lease.id)
            assert await client.list_leases() == []

    asyncio.run(scenario())


def test_nothing_listening_maps_to_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "dead.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()  # the socket file stays, nobody listens: connect() is refused

    async def scenario() -> None:
        async with Containerd(address=str(path), namespace="nstask-test-dead") as client:
            with pytest.raises(ContainerdUnavailable) as exc:
                await client.version()
        assert isinstance(exc.value, Unavailable)
        assert str(path) in str(exc.value) and "scripts/bootstrap.sh" in str(exc.value)

    asyncio.run(scenario())


def test_version_answers() -> None:
    async def scenario() -> str:
        async with Containerd(address=ADDRESS) as client:
            return (await client.version()).version

    assert asyncio.run(scenario()).startswith("1.")


def test_purge_namespace_removes_a_running_task(archive: Path) -> None:
    name = f"nstask-test-{secrets.token_hex(4)}"

    async def scenario() -> list[str]:
        async with Containerd(address=ADDRESS, namespace=name) as client:
            await client.ensure_namespace()
            [ref] = await import_archive(client, archive)
            config = await image_config(client, ref.name)
            lease = (await client.create_lease(expire=timedelta(minutes=10))).id
            mounts = await client.prepare_snapshot("nstask-run", config.chain_id, lease=lease)
            spec = minimal_spec(name, "nstask-run", ["sleep", "60"])
            await client.create_container(
                "nstask-run", image=ref.name, spec=spec, snapshot_key="nstask-run", lease=lease
            )
            await client.create_task("nstask-run", rootfs=mounts)
            await client.start_task("nstask-run")
            await purge_namespace(client)
            return await client.list_namespaces()

    try:
        assert name not in asyncio.run(scenario())
    finally:
        asyncio.run(_purge(name))
