#!/usr/bin/env python3
"""Build the busybox test image from busybox-static and import it into containerd.

There is no registry here, so the image nstask's tests and demos run is packed locally:
bin/busybox plus one symlink per applet, /etc/passwd and /etc/group with root and nobody,
and the usual empty directories. bootstrap.sh calls this once per machine.

    make_test_image.py --ref nstask.local/busybox:latest \\
        --address /run/containerd/containerd.sock --namespace nstask [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.containerd import Containerd
from agent.errors import NstaskError
from agent.images import import_archive, pack

BUSYBOX = Path("/bin/busybox")
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def busybox_rootfs(root: Path, busybox: Path = BUSYBOX) -> None:
    """Lay out a minimal busybox root filesystem in `root` (an empty directory)."""
    if not busybox.is_file():
        raise SystemExit(f"make_test_image: {busybox} is missing: apt-get install busybox-static")
    for name, mode in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("www", 0o755),
    ]:
        (root / name).mkdir()
        (root / name).chmod(mode)  # mkdir applies the umask; the image must not depend on it
    shutil.copyfile(busybox, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in sorted(set(applets) - {"busybox"}):
        (root / "bin" / applet).symlink_to("busybox")
    for name, text in [("passwd", PASSWD), ("group", GROUP)]:
        (root / "etc" / name).write_text(text)
        (root / "etc" / name).chmod(0o644)
    (root / "www" / "index.html").write_text("hello from nstask\n")
    (root / "www" / "index.html").chmod(0o644)


async def import_image(path: Path, address: str, namespace: str) -> list[str]:
    async with Containerd(address=address, namespace=namespace) as client:
        await client.ensure_namespace()
        return [ref.name for ref in await import_archive(client, path)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="image name, e.g. nstask.local/busybox:latest")
    parser.add_argument("--address", default="/run/containerd/containerd.sock")
    parser.add_argument("--namespace", default="nstask")
    parser.add_argument("--out", type=Path, help="keep the OCI archive at this path")
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nstask-image-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        rootfs.mkdir()
        busybox_rootfs(rootfs)
        archive = opts.out or Path(tmp) / "image.tar"
        digest = pack(rootfs, opts.ref, archive, cmd=["sh"])
        print(f"make_test_image: packed {opts.ref} ({digest}, {os.path.getsize(archive)} bytes)")
        try:
            names = asyncio.run(import_image(archive, opts.address, opts.namespace))
        except NstaskError as exc:
            print(f"make_test_image: {exc}", file=sys.stderr)
            return 1
    print(f"make_test_image: imported {', '.join(names)} into namespace {opts.namespace}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
