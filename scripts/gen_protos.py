#!/usr/bin/env python3
"""Regenerate the Python stubs in agent/_pb/ from our own .proto files in agent/protos/.

The sources live at agent/protos/agent/_pb/containerd/..., so protoc's import paths
("agent/_pb/containerd/types/mount.proto") turn into Python imports that work as is
("from agent._pb.containerd.types import mount_pb2"): no post-processing of the output.

    scripts/gen_protos.py           rewrite agent/_pb/ (the stubs are committed)
    scripts/gen_protos.py --check   regenerate into a temp dir; exit 1 when agent/_pb/ differs

Needs grpcio-tools (a dev dependency); the agent itself never imports it.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "agent" / "protos"
PB_PACKAGE = Path("agent") / "_pb"


def proto_files() -> list[str]:
    """The .proto sources, relative to PROTO_ROOT (protoc wants them that way), sorted."""
    return sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))


def run_protoc(args: list[str]) -> None:
    """Run the protoc bundled with grpcio-tools, with its well-known types on the path."""
    from importlib import resources

    from grpc_tools import protoc  # type: ignore[import-untyped]

    include = str(resources.files("grpc_tools") / "_proto")
    code = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", *args])
    if code != 0:
        raise SystemExit(f"gen_protos: protoc failed with exit code {code}")


def generate(out_root: Path) -> Path:
    """Generate messages (+ .pyi) for every file and gRPC stubs for service files only.

    Returns the generated package directory (out_root/agent/_pb). Every directory gets an
    __init__.py so that setuptools packages them and mypy sees regular packages.
    """
    files = proto_files()
    services = [f for f in files if "/services/" in f]
    run_protoc([f"--python_out={out_root}", f"--pyi_out={out_root}", *files])
    run_protoc([f"--grpc_python_out={out_root}", *services])
    pb_dir = out_root / PB_PACKAGE
    for directory in [pb_dir, *(d for d in pb_dir.rglob("*") if d.is_dir())]:
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text("")
    return pb_dir


def tree(root: Path) -> dict[str, Path]:
    """Files under root keyed by relative path, ignoring bytecode caches."""
    return {
        p.relative_to(root).as_posix(): p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def differences(expected: Path, actual: Path) -> list[str]:
    """Human-readable lines for every file missing, extra or changed in actual."""
    want, have = tree(expected), tree(actual)
    lines = [f"missing: {name}" for name in sorted(want.keys() - have.keys())]
    lines += [f"extra:   {name}" for name in sorted(have.keys() - want.keys())]
    lines += [
        f"changed: {name}"
        for name in sorted(want.keys() & have.keys())
        if not filecmp.cmp(want[name], have[name], shallow=False)
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only compare the committed stubs with fresh ones"
    )
    opts = parser.parse_args(argv)
    committed = REPO / PB_PACKAGE
    with tempfile.TemporaryDirectory(prefix="nstask-protos-") as tmp:
        fresh = generate(Path(tmp))
        if opts.check:
            diff = differences(fresh, committed)
            if diff:
                print(f"gen_protos: {len(diff)} file(s) in {PB_PACKAGE} are out of date:")
                print("\n".join(f"  {line}" for line in diff))
                print("run scripts/gen_protos.py to regenerate them")
                return 1
            print(f"gen_protos: {PB_PACKAGE} is up to date ({len(tree(fresh))} files)")
            return 0
        if committed.exists():
            shutil.rmtree(committed)
        shutil.copytree(fresh, committed)
    print(f"gen_protos: wrote {len(tree(committed))} files to {PB_PACKAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
