"""Pull speed: nstask's registry client against `ctr images pull --plain-http`, same image,
same loopback registry, alternating, in one run.

    .venv/bin/python bench/pull.py [-n 5] [--layers 5] [--mb 100]

Builds an image of N layers of random data locally, pushes it with skopeo to a
docker-registry it starts on 127.0.0.1 (temporary storage), then pulls it into a fresh
containerd namespace each time (so nothing is cached) with each client. Prints both medians
and the ratio. Needs the Debian packages docker-registry and skopeo (`scripts/bootstrap.sh
--test` installs them) and containerd running.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent import images, pull
from agent.containerd import Containerd, purge_namespace

CTR_SOCK = "/run/containerd/containerd.sock"
CONTENT_ROOT = "/var/lib/containerd/io.containerd.content.v1.content/blobs/sha256"


def build(base: Path, layers: int, total_mb: int) -> Path:
    """An OCI layout with `layers` layers of random bytes (incompressible, like real data)."""
    per = total_mb * 1024 * 1024 // layers
    archives = []
    for i in range(layers):
        d = base / f"l{i}"
        d.mkdir()
        (d / f"data{i}").write_bytes(os.urandom(per))
        archives.append(d)
    # pack() makes one-layer images: pack each directory, then write one manifest that
    # lists all their layers.
    import hashlib
    import json
    import tarfile

    layout = base / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    descs, diff_ids = [], []
    for d in archives:
        out = base / f"{d.name}.tar"
        images.pack(d, f"nstask.local/{d.name}:1", out, cmd=["true"])
        with tarfile.open(out) as tar:
            index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
            mdig = index["manifests"][0]["digest"].split(":")[1]
            manifest = json.load(tar.extractfile(f"blobs/sha256/{mdig}"))  # type: ignore[arg-type]
            cdig = manifest["config"]["digest"].split(":")[1]
            config = json.load(tar.extractfile(f"blobs/sha256/{cdig}"))  # type: ignore[arg-type]
            layer = manifest["layers"][0]
            data = tar.extractfile(f"blobs/sha256/{layer['digest'].split(':')[1]}")
            assert data is not None
            (layout / "blobs" / "sha256" / layer["digest"].split(":")[1]).write_bytes(data.read())
        descs.append(layer)
        diff_ids.append(config["rootfs"]["diff_ids"][0])
    config["rootfs"]["diff_ids"] = diff_ids

    def blob(raw: bytes, media: str) -> dict[str, object]:
        digest = hashlib.sha256(raw).hexdigest()
        (layout / "blobs" / "sha256" / digest).write_bytes(raw)
        return {"mediaType": media, "digest": f"sha256:{digest}", "size": len(raw)}

    cfg = blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
    man = blob(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": cfg,
                "layers": descs,
            }
        ).encode(),
        "application/vnd.oci.image.manifest.v1+json",
    )
    man["annotations"] = {"org.opencontainers.image.ref.name": "bench"}
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [man]}))
    return layout


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--mb", type=int, default=100)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="nstask-bench-pull-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (base / "config.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {base}/data\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    registry = subprocess.Popen(
        ["docker-registry", "serve", str(base / "config.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ref = f"127.0.0.1:{port}/bench/image:1"
    ours: list[float] = []
    theirs: list[float] = []
    try:
        layout = build(base, args.layers, args.mb)
        time.sleep(0.5)
        subprocess.run(
            ["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:bench", f"docker://{ref}"],
            check=True,
            capture_output=True,
        )
        layers = _layer_digests(layout)
        for i in range(args.n):
            ns = f"nstask-bench-pull-{os.getpid()}-{i}"
            _assert_gone(layers)
            ours.append(asyncio.run(_ours(ns + "a", ref)))
            _assert_gone(layers)
            t0 = time.perf_counter()
            subprocess.run(
                ["ctr", "-n", ns + "b", "images", "pull", "--plain-http", ref],
                check=True,
                capture_output=True,
            )
            theirs.append(time.perf_counter() - t0)
            asyncio.run(_purge(ns + "b"))
        m_ours, m_theirs = statistics.median(ours), statistics.median(theirs)
        print(f"image: {args.layers} layers, {args.mb} MB, pulled {args.n} times each")
        print(f"nstask pull                median {m_ours:.3f} s  {[round(x, 3) for x in ours]}")
        print(
            f"ctr images pull --plain-http median {m_theirs:.3f} s  {[round(x, 3) for x in theirs]}"
        )
        print(f"ratio nstask/ctr: {m_ours / m_theirs:.2f}x")
        return 0
    finally:
        registry.terminate()
        registry.wait()
        shutil.rmtree(base, ignore_errors=True)


async def _ours(ns: str, ref: str) -> float:
    client = Containerd(namespace=ns)
    try:
        await client.ensure_namespace()
        t0 = time.perf_counter()
        await pull.pull(client, ref)
        return time.perf_counter() - t0
    finally:
        await purge_namespace(client)
        await client.close()
        await _collect(ns)


async def _purge(ns: str) -> None:
    client = Containerd(namespace=ns)
    try:
        await purge_namespace(client)
    finally:
        await client.close()
    await _collect(ns)


async def _collect(ns: str) -> None:
    """Run containerd's garbage collector now (a lease deleted with sync=True does), so the
    blobs of the purged namespace leave the shared content store: otherwise the next pull
    in a fresh namespace finds them there (containerd shares content between namespaces)
    and transfers nothing, whichever client pulls."""
    client = Containerd(namespace=ns + "-gc")
    try:
        await client.ensure_namespace()
        lease = await client.create_lease()
        await client.delete_lease(lease.id, sync=True)
        await purge_namespace(client)
    finally:
        await client.close()


def _layer_digests(layout: Path) -> list[str]:
    import json

    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / digest).read_text())
    return [str(layer["digest"]) for layer in manifest["layers"]]


def _assert_gone(digests: list[str]) -> None:
    """No layer of the bench image is left in containerd's content store."""
    root = Path(CONTENT_ROOT)
    left = [d for d in digests if (root / d.split(":")[1]).exists()]
    if root.is_dir() and left:
        raise SystemExit(f"containerd still holds {len(left)} layers: the timing would lie")


if __name__ == "__main__":
    sys.exit(main())
