"""agent.images against the real daemon: an archive from pack() imports, unpacks and runs
exactly as `ctr images import` would have it. Each test uses namespaces nstask-test-<random>
that are removed at the end, even on failure."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_containerd import ADDRESS, REF, busybox_archive

from agent.containerd import Containerd, purge_namespace
from agent.errors import ImageNotFound
from agent.images import (
    ImageConfig,
    UnpackedMemo,
    ensure_unpacked,
    image_config,
    import_archive,
    list_images,
    unpack,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and a running containerd"),
]


def ctr(namespace: str, *args: str) -> str:
    return subprocess.run(
        ["ctr", "--address", ADDRESS, "-n", namespace, *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_archive(tmp_path_factory.mktemp("image"))


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    """A factory list: tests append names; all are purged at the end."""
    names: list[str] = []
    try:
        yield names
    finally:
        for name in names:
            asyncio.run(_purge(name))


def _new(names: list[str]) -> str:
    names.append(f"nstask-test-{secrets.token_hex(4)}")
    return names[-1]


async def _purge(name: str) -> None:
    async with Containerd(address=ADDRESS, namespace=name) as client:
        if name in await client.list_namespaces():
            await purge_namespace(client)


async def _import(namespace: str, archive: Path) -> list[str]:
    async with Containerd(address=ADDRESS, namespace=namespace) as client:
        await client.ensure_namespace()
        return [r.name for r in await import_archive(client, archive)]


def _content_table(namespace: str) -> list[tuple[str, str, str]]:
    """`ctr content ls` without the AGE column: (digest, size, labels sorted; ctr prints
    them in Go's random map order)."""
    rows = ctr(namespace, "content", "ls").splitlines()[1:]
    cells = (re.split(r"\t+", r.strip()) for r in rows)
    return sorted((c[0], c[1], ",".join(sorted(c[-1].split(",")))) for c in cells)


def test_import_matches_ctr_import(namespaces: list[str], archive: Path) -> None:
    ours, theirs = _new(namespaces), _new(namespaces)
    assert asyncio.run(_import(ours, archive)) == [REF]
    ctr(theirs, "images", "import", str(archive))  # the baseline: ctr accepts pack()'s output
    assert ctr(ours, "images", "ls") == ctr(theirs, "images", "ls")
    assert ctr(ours, "snapshots", "ls") == ctr(theirs, "snapshots", "ls")
    assert _content_table(ours) == _content_table(theirs)
    assert "Committed" in ctr(ours, "snapshots", "ls")
    assert ctr(ours, "leases", "ls", "-q").strip() == ""


def test_ctr_runs_the_imported_image(namespaces: list[str], archive: Path) -> None:
    ns = _new(namespaces)
    asyncio.run(_import(ns, archive))
    out = ctr(ns, "run", "--rm", REF, f"nstask-t-{secrets.token_hex(4)}", "echo", "hello")
    assert out == "hello\n"


def test_importing_twice_is_harmless(namespaces: list[str], archive: Path) -> None:
    ns = _new(namespaces)
    asyncio.run(_import(ns, archive))
    before = (ctr(ns, "images", "ls"), ctr(ns, "snapshots", "ls"), _content_table(ns))

    async def again() -> tuple[list[str], str]:
        async with Containerd(address=ADDRESS, namespace=ns) as client:
            refs = [r.name for r in await import_archive(client, archive)]
            chain = await unpack(client, REF)
            config = await image_config(client, REF)
            assert config.chain_id == chain
            assert config.cmd == ("sh",) and config.env[0].startswith("PATH=")
            [summary] = await list_images(client)
            assert (summary.ref, summary.digest) == (REF, config.digest)
            return refs, chain

    refs, chain = asyncio.run(again())
    assert refs == [REF]
    assert (ctr(ns, "images", "ls"), ctr(ns, "snapshots", "ls"), _content_table(ns)) == before
    assert chain in before[1]
    assert ctr(ns, "leases", "ls", "-q").strip() == ""


def test_unpack_restores_a_removed_snapshot(namespaces: list[str], archive: Path) -> None:
    ns = _new(namespaces)
    asyncio.run(_import(ns, archive))

    async def scenario() -> str:
        async with Containerd(address=ADDRESS, namespace=ns) as client:
            chain = (await image_config(client, REF)).chain_id
            await client.remove_snapshot(chain)
            assert await client.stat_snapshot(chain) is None
            return await unpack(client, REF)

    chain = asyncio.run(scenario())
    assert chain in ctr(ns, "snapshots", "ls")


def test_a_remembered_image_is_checked_again_where_it_can_have_changed(
    namespaces: list[str], archive: Path
) -> None:
    """The memo saves the reads of a known image, but a removed snapshot is unpacked again
    and a name that now points at other content is read again."""
    ns = _new(namespaces)
    asyncio.run(_import(ns, archive))

    async def scenario() -> None:
        memo = UnpackedMemo()
        async with Containerd(address=ADDRESS, namespace=ns) as client:
            first = await ensure_unpacked(client, REF, memo=memo)
            assert memo.get(REF, first.digest, "overlayfs") == first
            assert await ensure_unpacked(client, REF, memo=memo) == first
            await client.remove_snapshot(first.chain_id)
            again = await ensure_unpacked(client, REF, memo=memo)
            assert again == first
            assert await client.stat_snapshot(first.chain_id) is not None
            # The name now points at another digest: the remembered config is not used.
            image = await client.get_image(REF)
            assert image is not None
            memo.put(_with_digest(first, "sha256:" + "0" * 64), "overlayfs")
            assert (await ensure_unpacked(client, REF, memo=memo)).digest == image.target.digest

    asyncio.run(scenario())


def _with_digest(config: ImageConfig, digest: str) -> ImageConfig:
    from dataclasses import replace

    return replace(config, digest=digest, cmd=("stale",))


def test_missing_image_says_how_to_import_it(namespaces: list[str]) -> None:
    ns = _new(namespaces)

    async def scenario() -> None:
        async with Containerd(address=ADDRESS, namespace=ns) as client:
            await client.ensure_namespace()
            with pytest.raises(ImageNotFound) as exc:
                await image_config(client, "nstask.local/absent:1")
            assert "nstask.local/absent:1" in str(exc.value)
            assert ns in str(exc.value) and "nstask image import" in str(exc.value)

    asyncio.run(scenario())
