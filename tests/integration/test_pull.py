"""Pulling from a real OCI registry (Debian's docker-registry, distribution v2) started by
these tests on 127.0.0.1 with temporary storage; images pushed there with skopeo."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import CTR_SOCK, Agent, busybox_task, ctr, leaks, write_taskdef

from agent import images, pull
from agent.containerd import Containerd, purge_namespace
from agent.errors import ImageNotFound, Unavailable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    def __init__(self, base: Path, *, htpasswd: Path | None = None, auth: str = "") -> None:
        """`auth`: an `auth:` section of the registry's config of the caller's own."""
        base.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.storage = base / "data"
        auth = auth or (
            f"auth:\n  htpasswd:\n    realm: nstask-test\n    path: {htpasswd}\n"
            if htpasswd
            else ""
        )
        config = base / "config.yml"
        config.write_text(
            f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {self.storage}\n"
            f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{self.port}\n{auth}"
        )
        self.log = open(base / "registry.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, (base / "registry.log").read_text()
                time.sleep(0.05)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def push(
        self, archive: Path, name: str, *, creds: str | None = None, all_platforms: bool = False
    ) -> None:
        cmd = ["skopeo", "copy", "--dest-tls-verify=false"]
        if creds:
            cmd.append(f"--dest-creds={creds}")
        if all_platforms:
            cmd.append("--all")
        source = f"oci-archive:{archive}" if archive.is_file() else f"oci:{archive}"
        subprocess.run(
            [*cmd, source, f"docker://{self.host}/{name}"], check=True, capture_output=True
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("img")
    rootfs = d / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "echo", "cat"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "hello").write_text("pulled from a registry\n")
    # A layer of this run's own: containerd shares content between namespaces, so a
    # layer another test session already holds would cost this one's first pull nothing.
    (rootfs / "nonce").write_bytes(os.urandom(16))
    images.pack(rootfs, "nstask.local/pushed:1", d / "img.tar", cmd=["cat", "/hello"])
    return d / "img.tar"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, archive: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("registry"))
    reg.push(archive, "team/app:1")
    yield reg
    reg.stop()


def _pull(agent: Agent, ref: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return agent.cli("image", "pull", ref, *extra, timeout=60)


def test_pull_by_tag_then_again_transfers_nothing_and_runs(
    agent: Agent, registry: Registry, tmp_path: Path
) -> None:
    ref = f"{registry.host}/team/app:1"
    first = _pull(agent, ref)
    assert first.returncode == 0, first.stderr
    assert ref in first.stdout and "0 B transferred" not in first.stdout
    assert ref in ctr(agent.namespace, "images", "ls", "-q").split()
    assert "Committed" in ctr(agent.namespace, "snapshots", "ls")
    again = _pull(agent, ref)
    assert again.returncode == 0 and "(0 B transferred)" in again.stdout
    digest = first.stdout.split()[1]
    by_digest = _pull(agent, f"{registry.host}/team/app@{digest}")
    assert by_digest.returncode == 0, by_digest.stderr
    # The pulled image runs as a task (its CMD prints the file).
    td = busybox_task("pulled", ["cat", "/hello"])
    td["containerDefinitions"][0]["image"] = ref  # type: ignore[index]
    run = agent.cli("run", "--rm", write_taskdef(tmp_path, td))
    assert run.returncode == 0, run.stderr
    assert run.stdout == "pulled from a registry\n"
    assert not ctr(agent.namespace, "leases", "ls", "-q").split()


def test_unknown_tag_and_unreachable_registry_are_clear_errors(
    agent: Agent, registry: Registry
) -> None:
    missing = _pull(agent, f"{registry.host}/team/app:nope")
    assert missing.returncode == 1
    assert "team/app:nope" in missing.stderr and "not in the registry" in missing.stderr
    down = _pull(agent, f"127.0.0.1:{_free_port()}/team/app:1")
    assert down.returncode == 1 and "unreachable" in down.stderr
    local = _pull(agent, "nstask.local/anything:1")
    assert local.returncode == 1 and "never pulled" in local.stderr


def test_a_corrupted_blob_is_rejected_and_leaves_no_image(agent: Agent, tmp_path: Path) -> None:
    # An image of its own, so its layer is not already in the content store.
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "unique").write_bytes(os.urandom(4096))
    archive = tmp_path / "bad.tar"
    images.pack(rootfs, "nstask.local/bad:1", archive, cmd=["true"])
    reg = Registry(tmp_path / "corrupt")
    try:
        reg.push(archive, "team/bad:1")
        layer = _layer_digest(archive)
        data = next(reg.storage.rglob(f"blobs/sha256/{layer[7:9]}/{layer[7:]}/data"))
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
        proc = _pull(agent, f"{reg.host}/team/bad:1")
        assert proc.returncode == 1
        assert "failed verification" in proc.stderr and layer in proc.stderr
        assert f"{reg.host}/team/bad:1" not in ctr(agent.namespace, "images", "ls", "-q")
        assert not ctr(agent.namespace, "leases", "ls", "-q").split()
        # Nothing of the image stays: no blob (not even the good config) and no ingest.
        blobs = ctr(agent.namespace, "content", "ls", "-q").split()
        assert layer not in blobs and _config_digest(archive) not in blobs
        assert layer not in ctr(agent.namespace, "content", "active")
    finally:
        reg.stop()


def _archive_manifest(archive: Path) -> dict[str, Any]:
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        mdigest = index["manifests"][0]["digest"].split(":")[1]
        manifest = json.load(tar.extractfile(f"blobs/sha256/{mdigest}"))  # type: ignore[arg-type]
    return dict(manifest)


def _layer_digest(archive: Path) -> str:
    return str(_archive_manifest(archive)["layers"][0]["digest"])


def _config_digest(archive: Path) -> str:
    return str(_archive_manifest(archive)["config"]["digest"])


def test_basic_auth(agent: Agent, tmp_path: Path, archive: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    subprocess.run(
        ["htpasswd", "-Bbc", str(htpasswd), "nstask", "s3cret"], check=True, capture_output=True
    )
    reg = Registry(tmp_path / "auth", htpasswd=htpasswd)
    try:
        reg.push(archive, "team/private:1", creds="nstask:s3cret")
        ref = f"{reg.host}/team/private:1"
        anonymous = _pull(agent, ref)
        assert anonymous.returncode == 1 and "needs credentials" in anonymous.stderr
        wrong = _pull(agent, ref, "--user", "nstask:wrong")
        assert wrong.returncode == 1 and "refused the credentials" in wrong.stderr
        right = _pull(agent, ref, "--user", "nstask:s3cret")
        assert right.returncode == 0, right.stderr
    finally:
        reg.stop()


def test_an_index_with_two_platforms_gives_the_hosts(
    agent: Agent, registry: Registry, tmp_path: Path, archive: Path
) -> None:
    """An OCI layout whose index lists the real image for this host and a second manifest
    for another architecture (pointing at an empty config): the pull must pick ours."""
    layout = tmp_path / "multi"
    with tarfile.open(archive) as tar:
        tar.extractall(layout, filter="data")
    index = json.loads((layout / "index.json").read_text())
    ours = index["manifests"][0]
    host = images.host_architecture()
    other = "arm64" if host != "arm64" else "amd64"
    config = json.dumps(
        {"architecture": other, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": _blob(layout, config, "application/vnd.oci.image.config.v1+json"),
            "layers": [],
        }
    ).encode()
    other_desc = _blob(layout, manifest, "application/vnd.oci.image.manifest.v1+json")
    ours = {**ours, "platform": {"os": "linux", "architecture": host}}
    ours.pop("annotations", None)
    other_desc["platform"] = {"os": "linux", "architecture": other}
    top = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [other_desc, ours],
        }
    ).encode()
    top_desc = _blob(layout, top, "application/vnd.oci.image.index.v1+json")
    top_desc["annotations"] = {"org.opencontainers.image.ref.name": "multi"}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top_desc]}))
    registry.push(Path(f"{layout}:multi"), "team/multi:1", all_platforms=True)
    proc = _pull(agent, f"{registry.host}/team/multi:1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[1] == top_desc["digest"]  # the record points at the index
    td = busybox_task("multi", ["cat", "/hello"])
    td["containerDefinitions"][0]["image"] = f"{registry.host}/team/multi:1"  # type: ignore[index]
    run = agent.cli("run", "--rm", write_taskdef(tmp_path, td))
    assert run.returncode == 0 and run.stdout == "pulled from a registry\n", run.stderr
    assert not leaks(agent)


def _blob(layout: Path, data: bytes, media_type: str) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def test_image_inspect_rm_and_prune(registry: Registry, tmp_path: Path) -> None:
    from conftest import start_agent, stop_agent

    a, proc, base = start_agent()  # an agent of its own: prune empties its namespace
    try:
        ref = f"{registry.host}/team/app:1"
        assert _pull(a, ref).returncode == 0
        info = json.loads(a.cli("image", "inspect", ref, check=True).stdout)
        assert info["cmd"] == ["cat", "/hello"] and info["digest"].startswith("sha256:")
        td = busybox_task(
            "user", ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]
        )
        task_id = a.cli("run", "-d", write_taskdef(tmp_path, td), check=True).stdout.strip()
        a.wait_status(task_id, "RUNNING")
        busy = a.cli("image", "rm", "nstask.local/busybox:latest")
        assert busy.returncode == 1 and "used by a task" in busy.stderr
        pruned = a.cli("image", "prune", check=True).stdout.split()
        assert pruned == [ref]  # the busybox image is in use and stays
        assert ref not in ctr(a.namespace, "images", "ls", "-q")
        missing = a.cli("image", "inspect", ref)
        assert missing.returncode == 1 and "not present" in missing.stderr
        a.cli("stop", task_id, check=True)
        a.cli("rm", task_id, check=True)
        assert a.cli("image", "rm", "nstask.local/busybox:latest").returncode == 0
        assert not ctr(a.namespace, "images", "ls", "-q").split()
    finally:
        stop_agent(a, proc, base)


def test_pull_progress_stream_reports_every_layer(
    agent: Agent, tmp_path: Path, registry: Registry
) -> None:
    from cli_fast import Client

    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "payload").write_bytes(os.urandom(3 << 20))
    archive = tmp_path / "progress.tar"
    images.pack(rootfs, "nstask.local/progress:1", archive, cmd=["true"])
    registry.push(archive, "team/progress:1")
    body = {"ref": f"{registry.host}/team/progress:1", "progress": True}
    resp = Client(agent.socket).request("POST", "/v1/images/pull", body, timeout=60)
    lines = [json.loads(x) for x in resp.read().splitlines()]
    assert "image" in lines[-1] and lines[-1]["image"]["transferred"] > 3 << 20
    last = lines[-2]["progress"]
    assert len(last) == 2  # config and the layer
    assert all(done == total for done, total in last.values())


# --- direct pulls (agent.pull) in a containerd namespace of each test's own ----------------


def _in_namespace(scenario: Callable[[Containerd], Awaitable[None]]) -> None:
    """Run `scenario` with a client on a fresh nstask-test-<random> namespace, purged after."""

    async def main() -> None:
        client = Containerd(address=CTR_SOCK, namespace=f"nstask-test-{os.urandom(4).hex()}")
        try:
            await client.ensure_namespace()
            await scenario(client)
        finally:
            await purge_namespace(client)
            await client.close()

    asyncio.run(main())


def _layered_layout(base: Path, layers: list[dict[str, bytes]], name: str) -> Path:
    """An OCI layout (ref name `name`) of a busybox layer plus one layer per dict of
    files: a multi-layer image, which image pack alone does not make."""
    rootfs = base / "l0"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "cat", "sha256sum"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    dirs = [rootfs]
    for i, files in enumerate(layers, start=1):
        d = base / f"l{i}"
        d.mkdir()
        for fname, data in files.items():
            (d / fname).write_bytes(data)
        dirs.append(d)
    layout = base / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    descs, diff_ids = [], []
    config: dict[str, Any] = {}
    for d in dirs:
        archive = base / f"{d.name}.tar"
        images.pack(d, f"nstask.local/{d.name}:1", archive, cmd=["sh"])
        manifest = _archive_manifest(archive)
        with tarfile.open(archive) as tar:
            cfg = tar.extractfile(f"blobs/sha256/{manifest['config']['digest'][7:]}")
            config = json.load(cfg)  # type: ignore[arg-type]
            layer = manifest["layers"][0]
            blob = tar.extractfile(f"blobs/sha256/{layer['digest'][7:]}")
            assert blob is not None
            (layout / "blobs" / "sha256" / layer["digest"][7:]).write_bytes(blob.read())
        descs.append(layer)
        diff_ids.append(config["rootfs"]["diff_ids"][0])
    config["rootfs"]["diff_ids"] = diff_ids
    cfg_desc = _blob(layout, json.dumps(config).encode(), images.MEDIA_CONFIG)
    body = {"schemaVersion": 2, "mediaType": images.MEDIA_MANIFEST, "config": cfg_desc}
    top = _blob(layout, json.dumps({**body, "layers": descs}).encode(), images.MEDIA_MANIFEST)
    top["annotations"] = {"org.opencontainers.image.ref.name": name}
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return layout


def _sha256sums(client: Containerd, ref: str, files: list[str]) -> dict[str, str]:
    """sha256 of files inside the image, as a container under containerd (ctr run) sees them."""
    out = subprocess.run(
        [
            "ctr",
            "--address",
            CTR_SOCK,
            "-n",
            client.namespace,
            "run",
            "--rm",
            ref,
            f"nstask-t-{os.urandom(4).hex()}",
            "sha256sum",
            *files,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return {line.split()[1].lstrip("/"): line.split()[0] for line in out.splitlines()}


def test_a_cancelled_multi_layer_pull_resumes_and_runs(registry: Registry, tmp_path: Path) -> None:
    """Cancel a pull of a 4-layer image half way: its lease keeps what arrived; the next
    pull moves only the rest, and the image's files are intact under containerd."""
    data = {f"part{i}": os.urandom(8 << 20) for i in range(3)}
    layout = _layered_layout(tmp_path, [{k: v} for k, v in data.items()], "layers")
    registry.push(Path(f"{layout}:layers"), "team/layers:1")
    ref = f"{registry.host}/team/layers:1"

    async def scenario(client: Containerd) -> None:
        first: list[pull.Progress] = []
        halfway = asyncio.Event()

        def watch(p: pull.Progress) -> None:
            first[:] = [p]
            if p.transferred >= p.total // 2:
                halfway.set()

        job = asyncio.ensure_future(pull.pull(client, ref, progress=watch))
        await asyncio.wait_for(halfway.wait(), 60)
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job
        total = first[0].total
        assert await client.get_image(ref) is None
        kept = [x for x in await client.list_leases() if x.labels.get(pull.LABEL_PULL_REF) == ref]
        assert len(kept) == 1  # the interrupted pull's lease, holding its blobs and ingests

        second: list[pull.Progress] = []
        image = await pull.pull(
            client, ref, progress=lambda p: second.__setitem__(slice(None), [p])
        )
        again = second[0]
        assert again.done == again.total == total
        assert again.transferred <= total - (8 << 20), (again.transferred, total)
        assert again.resumed > 0  # partial ingests continued (HTTP Range), not restarted
        assert image.name == ref
        assert not await client.list_leases()  # both leases gone: the image record holds it
        assert len(await client.list_snapshots()) == 4  # one committed snapshot per layer
        sums = await asyncio.to_thread(_sha256sums, client, ref, list(data))
        assert sums == {k: hashlib.sha256(v).hexdigest() for k, v in data.items()}

    _in_namespace(scenario)


def test_concurrent_pulls_fetch_each_blob_once(registry: Registry, tmp_path: Path) -> None:
    """Two tasks starting together with one image, and a second name for the same image:
    all three pulls succeed and every blob crosses the network once."""
    layout = _layered_layout(tmp_path, [{"x": os.urandom(2 << 20)}], "same")
    registry.push(Path(f"{layout}:same"), "team/same:1")
    registry.push(Path(f"{layout}:same"), "team/other:1")
    refs = [f"{registry.host}/team/same:1"] * 2 + [f"{registry.host}/team/other:1"]

    async def scenario(client: Containerd) -> None:
        states: list[list[pull.Progress]] = [[], [], []]

        def keeper(i: int) -> Callable[[pull.Progress], None]:
            return lambda p: states[i].__setitem__(slice(None), [p])

        random.shuffle(refs)
        done = await asyncio.gather(
            *(pull.pull(client, r, progress=keeper(i)) for i, r in enumerate(refs))
        )
        assert {d.name for d in done} == set(refs)
        assert all(states), "every pull reports progress"
        # Each blob once: downloaded, or found whole in containerd's store (which shares
        # content between namespaces: another namespace may hold the busybox layer).
        moved = sum(s[0].transferred + s[0].resumed for s in states)
        assert moved == states[0][0].total  # config + 2 layers, once
        assert not await client.list_leases()

    _in_namespace(scenario)


def test_ensure_image_pull_behaviours(registry: Registry) -> None:
    """once / prefer-cached use a cached image; default falls back to it when the registry
    is unreachable, always does not; without a cached image nothing falls back."""
    ref = f"{registry.host}/team/app:1"
    down = f"127.0.0.1:{_free_port()}/team/app:1"

    async def scenario(client: Containerd) -> None:
        cfg = await pull.ensure_image(client, ref, policy="always", snapshotter="overlayfs")
        assert cfg.cmd == ("cat", "/hello")
        # The same image under the unreachable registry's name, as if pulled from there.
        image = await client.get_image(ref)
        assert image is not None
        await client.create_image(down, image.target)
        for policy in ("once", "prefer-cached", "default"):
            got = await pull.ensure_image(client, down, policy=policy, snapshotter="overlayfs")
            assert got.digest == cfg.digest, policy
        with pytest.raises(Unavailable, match="unreachable"):
            await pull.ensure_image(client, down, policy="always", snapshotter="overlayfs")
        await client.delete_image(down)
        with pytest.raises(Unavailable):
            await pull.ensure_image(client, down, policy="default", snapshotter="overlayfs")

    _in_namespace(scenario)


def test_inspect_remove_and_prune_pulled_images(registry: Registry) -> None:
    ref = f"{registry.host}/team/app:1"
    alias = f"{registry.host}/team/alias:1"

    async def scenario(client: Containerd) -> None:
        pulled = await pull.pull(client, ref)
        info = await images.inspect_image(client, ref)
        assert info["digest"] == pulled.target.digest
        assert info["config"]["config"]["Cmd"] == ["cat", "/hello"]
        assert [layer["unpacked"] for layer in info["layers"]] == [True]
        assert info["platform"] == f"linux/{images.host_architecture()}"
        await client.create_image(alias, pulled.target)
        assert await images.prune_images(client, {ref}) == [alias]
        assert [i.name for i in await client.list_images()] == [ref]
        await images.remove_image(client, ref)
        assert not await client.list_images()
        assert not await client.list_content()  # the GC took the blobs with the record
        with pytest.raises(ImageNotFound, match="not present"):
            await images.remove_image(client, ref)

    _in_namespace(scenario)
