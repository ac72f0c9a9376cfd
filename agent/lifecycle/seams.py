"""The outside systems the lifecycle drives, each as the smallest interface a step needs
(agent.containerd.Containerd and agent.network.TaskNetwork implement them; tests give fakes)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Protocol

from agent.containerd import (
    Container,
    Event,
    ExitStatus,
    Image,
    Lease,
    Mount,
    TaskInfo,
    Version,
)
from agent.images import ImageConfig
from agent.registry import Credentials
from agent.warmpool import Taken


class NetnsSeam(Protocol):
    async def create_netns(self, name: str) -> str: ...
    async def remove_netns(self, name: str) -> None: ...


class AttachSeam(Protocol):
    @property
    def name(self) -> str: ...
    async def attach(
        self, task_id: str, netns_path: str, *, port_mappings: Sequence[dict[str, Any]] = ()
    ) -> str | None: ...
    async def detach(
        self, task_id: str, netns_path: str | None, *, ifname: str = "eth0"
    ) -> None: ...


class NetworkSeam(NetnsSeam, AttachSeam, Protocol):
    """What the network step and its removal need of agent.network.TaskNetwork."""


class PoolSeam(Protocol):
    """The warm pool (agent.warmpool.WarmPool): an attachment made ahead of time, whose
    records `take` moves to the task in one transaction; None when the pool is empty."""

    async def take(self, task_id: str) -> Taken | None: ...


class CgroupSeam(Protocol):
    """agent.cgroups (a module satisfies it)."""

    def create(
        self,
        task_id: str,
        *,
        memory_mib: int | None,
        cpu_units: int | None,
        pids_limit: int | None = None,
    ) -> None: ...
    def remove(self, task_id: str) -> None: ...
    def task_path(self, task_id: str) -> str: ...


class ImageSeam(Protocol):
    async def ensure(self, image: str, *, auth: Credentials | None = None) -> ImageConfig:
        """`auth`: the container's repositoryCredentials (else config.json is asked)."""
        ...


class KillClient(Protocol):
    async def kill_task(
        self,
        container_id: str,
        signal: int = ...,
        *,
        all_processes: bool = False,
        exec_id: str = "",
    ) -> None: ...
    async def wait_task(self, container_id: str, *, exec_id: str = "") -> ExitStatus: ...
    async def get_task(self, container_id: str, *, exec_id: str = "") -> TaskInfo | None: ...


class RemovalClient(KillClient, Protocol):
    async def delete_task(self, container_id: str) -> ExitStatus: ...
    async def delete_container(self, container_id: str) -> None: ...
    async def remove_snapshot(self, key: str, *, snapshotter: str | None = None) -> None: ...
    async def delete_lease(self, lease_id: str, *, sync: bool = True) -> None: ...


class ContainerClient(Protocol):
    """Creating and starting a container (the containers step)."""

    async def create_lease(
        self, lease_id: str | None = None, *, labels: Mapping[str, str] | None = None
    ) -> Lease: ...
    async def prepare_snapshot(
        self,
        key: str,
        parent: str = "",
        *,
        labels: Mapping[str, str] | None = None,
        snapshotter: str | None = None,
        lease: str | None = None,
    ) -> list[Mount]: ...
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
    ) -> Container: ...
    async def create_task(
        self,
        container_id: str,
        *,
        rootfs: Iterable[Mount],
        stdout: str = "",
        stderr: str = "",
        stdin: str = "",
        terminal: bool = False,
    ) -> int: ...
    async def start_task(self, container_id: str, *, exec_id: str = "") -> int: ...


class EventClient(Protocol):
    """The exit sources (the running step)."""

    @property
    def namespace(self) -> str: ...
    def subscribe(self, filters: Iterable[str] = ()) -> AsyncIterator[Event]: ...
    async def version(self) -> Version: ...
    async def get_container(self, container_id: str) -> Container | None: ...


class ExecClient(Protocol):
    async def exec_process(
        self, container_id: str, exec_id: str, *, process_spec: Mapping[str, Any]
    ) -> None: ...
    async def delete_process(self, container_id: str, exec_id: str) -> ExitStatus: ...


class Client(ContainerClient, RemovalClient, EventClient, ExecClient, Protocol):
    """Everything the lifecycle calls on containerd."""

    async def get_image(self, name: str) -> Image | None: ...
