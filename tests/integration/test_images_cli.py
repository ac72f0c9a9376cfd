"""`nstask image pack` / `image import` / `image ls` through the agent, then a task runs
the packed image."""

from __future__ import annotations

import shutil
from pathlib import Path

from support import Agent, ctr, write_taskdef


def test_pack_import_and_run_an_image_from_a_directory(agent: Agent, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    (rootfs / "bin" / "sh").symlink_to("busybox")
    (rootfs / "greeting").write_text("packed by nstask\n")
    ref = "nstask.local/packed-test:1"
    archive = tmp_path / "packed.tar"
    pack = agent.cli(
        "image",
        "pack",
        str(rootfs),
        ref,
        "-o",
        str(archive),
        "--cmd",
        '["/bin/busybox", "cat", "/greeting"]',
        check=True,
    )
    assert str(archive) in pack.stdout and "sha256:" in pack.stdout
    imported = agent.cli("image", "import", str(archive), check=True)
    assert ref in imported.stdout
    # containerd's own client sees the image and its committed snapshot.
    assert ref in ctr(agent.namespace, "images", "ls", "-q").split()
    assert "Committed" in ctr(agent.namespace, "snapshots", "ls")
    assert ref in agent.cli("image", "ls", check=True).stdout
    # The image's CMD runs when the definition gives no command.
    td: dict[str, object] = {
        "family": "packed",
        "containerDefinitions": [{"name": "packed", "image": ref, "essential": True}],
    }
    run = agent.cli("run", "--rm", write_taskdef(tmp_path, td))
    assert run.returncode == 0, run.stderr
    assert run.stdout == "packed by nstask\n"
    # Importing again is harmless.
    agent.cli("image", "import", str(archive), check=True)


def test_import_of_a_file_that_is_not_an_archive_is_refused(agent: Agent, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tar"
    bogus.write_text("not a tar")
    images_before = ctr(agent.namespace, "images", "ls", "-q")
    proc = agent.cli("image", "import", str(bogus))
    assert proc.returncode == 2, proc.stderr
    assert "bogus.tar" in proc.stderr
    assert ctr(agent.namespace, "images", "ls", "-q") == images_before
    assert not ctr(agent.namespace, "leases", "ls", "-q").split()
