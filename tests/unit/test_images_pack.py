"""images.pack writes a valid, reproducible OCI image layout archive (no containerd needed)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from agent.images import chain_ids, host_architecture, pack


def _rootfs(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "bin" / "alias").symlink_to("tool")
    (root / "etc").mkdir()
    (root / "etc" / "secret").write_text("s3cret\n")
    (root / "etc" / "secret").chmod(0o600)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    return root


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _read_layout(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def _json(data: bytes) -> Any:
    return json.loads(data)


def test_pack_writes_a_valid_oci_layout(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path / "rootfs")
    out = tmp_path / "image.tar"
    digest = pack(
        rootfs,
        "nstask.local/app:1.2",
        out,
        cmd=["sh"],
        env=["A=1"],
        workdir="/srv",
        stop_signal="SIGINT",
        user="nobody",
        labels={"k": "v"},
    )
    files = _read_layout(out)
    assert _json(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert _sha(data) == "sha256:" + name.rsplit("/", 1)[1], f"{name} digest mismatch"
    index = _json(files["index.json"])
    [entry] = index["manifests"]
    assert entry["digest"] == digest
    assert entry["annotations"]["io.containerd.image.name"] == "nstask.local/app:1.2"
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "1.2"
    manifest = _json(files[f"blobs/sha256/{digest[7:]}"])
    assert entry["size"] == len(files[f"blobs/sha256/{digest[7:]}"])
    config_blob = files[f"blobs/sha256/{manifest['config']['digest'][7:]}"]
    assert manifest["config"]["size"] == len(config_blob)
    config = _json(config_blob)
    [layer_desc] = manifest["layers"]
    layer = files[f"blobs/sha256/{layer_desc['digest'][7:]}"]
    assert layer_desc["size"] == len(layer)
    assert layer_desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert config["rootfs"]["diff_ids"] == [_sha(gzip.decompress(layer))]
    assert (config["os"], config["architecture"]) == ("linux", host_architecture())
    assert config["config"]["Cmd"] == ["sh"]
    assert config["config"]["Env"] == ["A=1"]
    assert config["config"]["WorkingDir"] == "/srv"
    assert config["config"]["StopSignal"] == "SIGINT"
    assert config["config"]["User"] == "nobody"
    assert config["config"]["Labels"] == {"k": "v"}


def test_layer_keeps_modes_and_symlinks_with_root_owner(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path / "rootfs")
    out = tmp_path / "image.tar"
    pack(rootfs, "nstask.local/app:1", out)
    files = _read_layout(out)
    manifest = _json(
        files[f"blobs/sha256/{_json(files['index.json'])['manifests'][0]['digest'][7:]}"]
    )
    layer = files[f"blobs/sha256/{manifest['layers'][0]['digest'][7:]}"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members) == ["bin", "bin/alias", "bin/tool", "etc", "etc/secret", "tmp"]
    assert members["bin/alias"].issym() and members["bin/alias"].linkname == "tool"
    assert members["bin/tool"].mode == 0o755
    assert members["etc/secret"].mode == 0o600
    assert members["tmp"].mode == 0o1777
    assert all((m.uid, m.gid, m.mtime) == (0, 0, 0) for m in members.values())


def test_default_env_has_a_path(tmp_path: Path) -> None:
    out = tmp_path / "image.tar"
    pack(_rootfs(tmp_path / "rootfs"), "nstask.local/app", out)
    files = _read_layout(out)
    configs = [_json(d) for n, d in files.items() if n.startswith("blobs/") and b'"rootfs"' in d]
    assert configs[0]["config"]["Env"][0].startswith("PATH=/usr/local/sbin:")


def test_packing_is_reproducible(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path / "rootfs")
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    d1 = pack(rootfs, "nstask.local/app:1", first, cmd=["sh"])
    # Different mtimes and owner must not change the bytes.
    os.utime(rootfs / "bin" / "tool", (1_000_000, 1_000_000))
    if os.geteuid() == 0:
        os.chown(rootfs / "etc" / "secret", 1234, 1234)
    d2 = pack(rootfs, "nstask.local/app:1", second, cmd=["sh"])
    assert d1 == d2
    assert first.read_bytes() == second.read_bytes()


def test_content_changes_change_the_digest(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path / "rootfs")
    d1 = pack(rootfs, "nstask.local/app:1", tmp_path / "a.tar")
    (rootfs / "etc" / "secret").chmod(0o644)
    assert pack(rootfs, "nstask.local/app:1", tmp_path / "b.tar") != d1


def test_chain_ids_follow_the_oci_rule() -> None:
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    assert chain_ids([a, b]) == [a, _sha(f"{a} {b}".encode())]


def test_pack_refuses_a_missing_directory(tmp_path: Path) -> None:
    from agent.errors import InvalidInput

    with pytest.raises(InvalidInput):
        pack(tmp_path / "nope", "nstask.local/app", tmp_path / "x.tar")
