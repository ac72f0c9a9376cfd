"""The committed stubs match the .proto sources, and the wire facts we rely on hold."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="needs grpcio-tools")
def test_committed_stubs_are_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _number(message: type, field: str) -> int:
    return int(message.DESCRIPTOR.fields_by_name[field].number)  # type: ignore[attr-defined]


def test_field_numbers_match_containerd_wire_protocol() -> None:
    """Numbers that differ from containerd's would silently drop or garble data."""
    from agent._pb.containerd.events import task_pb2 as events
    from agent._pb.containerd.services.content.v1 import content_pb2 as content
    from agent._pb.containerd.services.images.v1 import images_pb2 as images
    from agent._pb.containerd.services.tasks.v1 import tasks_pb2 as tasks
    from agent._pb.containerd.types import descriptor_pb2 as descriptor

    assert _number(events.TaskExit, "exit_status") == 4
    assert _number(events.TaskExit, "exited_at") == 5
    assert _number(content.WriteContentRequest, "labels") == 7
    assert _number(images.Image, "created_at") == 7
    assert _number(tasks.CreateTaskRequest, "rootfs") == 3
    assert _number(descriptor.Descriptor, "annotations") == 5


def test_service_names_match_containerd() -> None:
    """gRPC routes by /<package>.<Service>/<Method>; a wrong package is UNIMPLEMENTED."""
    from agent._pb.containerd.services.content.v1 import content_pb2 as content
    from agent._pb.containerd.services.tasks.v1 import tasks_pb2 as tasks

    assert (
        tasks.DESCRIPTOR.services_by_name["Tasks"].full_name == "containerd.services.tasks.v1.Tasks"
    )
    write = content.DESCRIPTOR.services_by_name["Content"].methods_by_name["Write"]
    assert write.client_streaming and write.server_streaming
    assert events_type_name() == "containerd.events.TaskExit"


def events_type_name() -> str:
    from agent._pb.containerd.events import task_pb2 as events

    return str(events.TaskExit.DESCRIPTOR.full_name)
