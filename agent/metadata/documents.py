"""The JSON bodies of the task metadata endpoint (v2/v3/v4) and the introspection API.

Field names, types and omission rules are ECS's (the ECS agent's tmds v4 response types and
the AWS docs' Fargate example responses): a field whose value is unknown is left out, not
sent as null; Revision is a string; times are RFC 3339 in UTC with up to nine fractional
digits and trailing zeros cut (Go's RFC3339Nano, which the ECS agent writes); the task's
Limits.CPU is in vCPUs (a float), a container's in CPU units.

Pure functions of our records and a Platform (the agent's settings): the server gathers
what needs the host (a MAC address) and passes it in. Nothing here sees a secret: an
environment value, a secretOptions value or a credential never reaches these builders.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.config import AgentConfig
from agent.metadata import arns
from agent.store import ContainerRecord, TaskRecord

__all__ = [
    "Platform",
    "container_document",
    "introspection_metadata",
    "introspection_task",
    "rfc3339",
    "task_document",
    "task_role_arn",
    "task_tags",
]

LAUNCH_TYPE = "FARGATE"
# Our task states (lastStatus, ECS API names) -> the agent's known status names, which the
# metadata endpoint reports (NONE, PULLED, CREATED, RUNNING, STOPPED).
_TASK_KNOWN = {
    "PROVISIONING": "NONE",
    "PENDING": "PULLED",
    "RUNNING": "RUNNING",
    "DEPROVISIONING": "RUNNING",  # still running until every container stopped
    "STOPPED": "STOPPED",
}
_CONTAINER_KNOWN = {"PENDING": "NONE", "RUNNING": "RUNNING", "STOPPED": "STOPPED"}
# ContainerARN's last part: stable and derived from nothing secret (not the metadata id).
_CONTAINER_NS = uuid.UUID("5b0d7f8e-2c1a-4f7e-9d3b-6e8a1c2f4b90")


@dataclass(frozen=True)
class Platform:
    """What a task is told about where it runs."""

    cluster: str
    region: str
    account: str
    availability_zone: str
    subnet: str
    dns_servers: tuple[str, ...] = ()
    agent_version: str = "0.1.0"

    @classmethod
    def from_config(cls, config: AgentConfig, *, agent_version: str = "0.1.0") -> Platform:
        return cls(
            cluster=arns.check_cluster(config.cluster),
            region=arns.check_region(config.region),
            account=arns.check_account(config.account_id),
            availability_zone=config.availability_zone or f"{config.region}a",
            subnet=config.subnet,
            dns_servers=config.dns_servers,
            agent_version=agent_version,
        )

    @property
    def cluster_arn(self) -> str:
        return arns.cluster_arn(self.region, self.account, self.cluster)

    def task_arn(self, task_id: str) -> str:
        return arns.task_arn(self.region, self.account, self.cluster, task_id)

    def container_arn(self, c: ContainerRecord) -> str:
        cuuid = str(uuid.uuid5(_CONTAINER_NS, c.containerd_id))
        return arns.container_arn(self.region, self.account, self.cluster, c.task_id, cuuid)

    @property
    def gateway(self) -> str:
        """The bridge's address: the subnet's first host (host-local's default gateway)."""
        return str(ipaddress.ip_network(self.subnet, strict=False).network_address + 1)

    def private_dns_name(self, ip: str) -> str:
        domain = "ec2.internal" if self.region == "us-east-1" else f"{self.region}.compute.internal"
        return f"ip-{ip.replace('.', '-')}.{domain}"


def rfc3339(t: float | None) -> str | None:
    """Epoch seconds as Go's RFC3339Nano in UTC (None stays None: the field is omitted)."""
    if t is None:
        return None
    ns = round(t * 1_000_000) * 1000  # a float epoch holds microseconds, not more
    secs, frac = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{frac:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def _definition(task: TaskRecord) -> Mapping[str, Any]:
    """The task definition as given (describe-task-definition output is unwrapped)."""
    d = task.definition
    inner = d.get("taskDefinition") if isinstance(d, Mapping) else None
    return inner if isinstance(inner, Mapping) else d


def _container_definition(task: TaskRecord, name: str) -> Mapping[str, Any]:
    for c in _definition(task).get("containerDefinitions") or []:
        if isinstance(c, Mapping) and c.get("name") == name:
            return c
    return {}


def task_role_arn(definition: Mapping[str, Any]) -> str | None:
    """The definition's taskRoleArn, or None (no role: no credentials variable)."""
    inner = definition.get("taskDefinition")
    d = inner if isinstance(inner, Mapping) else definition
    role = d.get("taskRoleArn")
    return role if isinstance(role, str) and role else None


def task_tags(task: TaskRecord) -> dict[str, str]:
    """The definition's tags ([{key, value}], also at the top of describe output) as a map."""
    found = _definition(task).get("tags")
    if found is None and isinstance(task.definition, Mapping):
        found = task.definition.get("tags")
    out: dict[str, str] = {}
    for t in found if isinstance(found, list) else []:
        if isinstance(t, Mapping) and isinstance(t.get("key"), str):
            out[t["key"]] = str(t.get("value", ""))
    return out


def revision(task: TaskRecord) -> str:
    r = _definition(task).get("revision")
    return str(r) if isinstance(r, int | str) and str(r) else "1"


def _set(out: dict[str, Any], key: str, value: Any) -> None:
    """ECS's omitempty: None, "", empty lists and maps are left out."""
    if value is None or value == "" or value == [] or value == {}:
        return
    out[key] = value


def _labels(p: Platform, task: TaskRecord, c: ContainerRecord) -> dict[str, str]:
    labels = {
        k: str(v)
        for k, v in (_container_definition(task, c.name).get("dockerLabels") or {}).items()
    }
    labels.update(
        {
            "com.amazonaws.ecs.cluster": p.cluster_arn,
            "com.amazonaws.ecs.container-name": c.name,
            "com.amazonaws.ecs.task-arn": p.task_arn(task.id),
            "com.amazonaws.ecs.task-definition-family": task.family,
            "com.amazonaws.ecs.task-definition-version": revision(task),
        }
    )
    return labels


def _ports(task: TaskRecord, c: ContainerRecord, mode: str) -> list[dict[str, Any]]:
    if mode in ("bridge", "host"):
        return [
            {
                "ContainerPort": p["containerPort"],
                "Protocol": p["protocol"],
                "HostPort": p["hostPort"],
                "HostIp": "0.0.0.0",
            }
            for p in task.ports
            if p.get("containerName") == c.name
        ]
    out = []
    for pm in _container_definition(task, c.name).get("portMappings") or []:
        if isinstance(pm, Mapping) and isinstance(pm.get("containerPort"), int):
            port = pm["containerPort"]
            out.append(
                {
                    "ContainerPort": port,
                    "Protocol": str(pm.get("protocol") or "tcp"),
                    "HostPort": port,  # awsvpc: the task's own address and port
                }
            )
    return out


def _volumes(task: TaskRecord, c: ContainerRecord, task_dir: str) -> list[dict[str, str]]:
    d = _definition(task)
    volumes = {v.get("name"): v for v in d.get("volumes") or [] if isinstance(v, Mapping)}
    out = []
    for mp in _container_definition(task, c.name).get("mountPoints") or []:
        if not isinstance(mp, Mapping):
            continue
        name = mp.get("sourceVolume")
        v = volumes.get(name) or {}
        host = v.get("host") if isinstance(v.get("host"), Mapping) else None
        source = (host or {}).get("sourcePath") or f"{task_dir}/volumes/{name}"
        out.append(
            {
                "DockerName": str(name),
                "Source": str(source),
                "Destination": str(mp.get("containerPath")),
            }
        )
    return out


def _network(p: Platform, task: TaskRecord, mode: str, mac: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"NetworkMode": mode}
    if mode == "host" or task.ip is None:
        return out
    out["IPv4Addresses"] = [task.ip]
    if mode == "awsvpc":
        net = ipaddress.ip_network(p.subnet, strict=False)
        out["AttachmentIndex"] = 0
        _set(out, "MACAddress", mac)
        out["IPv4SubnetCIDRBlock"] = str(net)
        _set(out, "DomainNameServers", list(p.dns_servers))
        out["PrivateDNSName"] = p.private_dns_name(task.ip)
        out["SubnetGatewayIpv4Address"] = f"{p.gateway}/{net.prefixlen}"
    return out


def _health(c: ContainerRecord) -> dict[str, Any] | None:
    return {"status": c.health} if c.health else None


def container_document(
    p: Platform,
    task: TaskRecord,
    c: ContainerRecord,
    *,
    mac: str | None = None,
    task_dir: str = "",
) -> dict[str, Any]:
    """One container, as `${ECS_CONTAINER_METADATA_URI_V4}` answers."""
    cdef = _container_definition(task, c.name)
    mode = str(_definition(task).get("networkMode") or "awsvpc")
    out: dict[str, Any] = {
        "DockerId": c.containerd_id,
        "Name": c.name,
        "DockerName": c.name,  # as on Fargate
        "Image": c.image,
    }
    _set(out, "ImageID", c.image_digest)
    out["Ports"] = _ports(task, c, mode)
    if not out["Ports"]:
        del out["Ports"]
    out["Labels"] = _labels(p, task, c)
    out["DesiredStatus"] = "STOPPED" if task.desired_status == "STOPPED" else "RUNNING"
    known = _CONTAINER_KNOWN.get(c.last_status, c.last_status)
    if known == "NONE" and c.created_at is not None:
        known = "CREATED"
    out["KnownStatus"] = known
    if c.exit_code is not None:
        out["ExitCode"] = c.exit_code
    limits: dict[str, Any] = {"CPU": int(cdef.get("cpu") or 0)}
    memory = cdef.get("memory") or cdef.get("memoryReservation")
    if isinstance(memory, int) and memory:
        limits["Memory"] = memory
    out["Limits"] = limits
    _set(out, "CreatedAt", rfc3339(c.created_at))
    _set(out, "StartedAt", rfc3339(c.started_at))
    _set(out, "FinishedAt", rfc3339(c.finished_at))
    out["Type"] = "NORMAL"
    _set(out, "Health", _health(c))
    _set(out, "Volumes", _volumes(task, c, task_dir))
    lc = cdef.get("logConfiguration")
    if isinstance(lc, Mapping) and isinstance(lc.get("logDriver"), str):
        out["LogDriver"] = lc["logDriver"]
        # options only: secretOptions are resolved secrets and never shown
        _set(out, "LogOptions", {k: str(v) for k, v in (lc.get("options") or {}).items()})
    out["ContainerARN"] = p.container_arn(c)
    out["Networks"] = [_network(p, task, mode, mac)]
    return out


def _task_limits(task: TaskRecord) -> dict[str, Any]:
    """Task-level cpu (as vCPUs) and memory (MiB), as the definition (validated at submit)
    gives them; absent when it does not."""
    from agent.taskdef import _parse_cpu, _parse_memory  # the one parser of both

    d = _definition(task)
    out: dict[str, Any] = {}
    for key, field, parse, scale in (
        ("cpu", "CPU", _parse_cpu, 1024),
        ("memory", "Memory", _parse_memory, 1),
    ):
        if d.get(key) is None:
            continue
        try:
            value = parse(d[key])
        except ValueError:
            continue
        out[field] = value / scale if scale != 1 else value
    return out


def task_document(
    p: Platform,
    task: TaskRecord,
    *,
    mac: str | None = None,
    task_dir: str = "",
    with_tags: bool = False,
    clock: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The task, as `${ECS_CONTAINER_METADATA_URI_V4}/task` (and /v2/metadata) answers."""
    out: dict[str, Any] = {
        "Cluster": p.cluster_arn,
        "TaskARN": p.task_arn(task.id),
        "Family": task.family,
        "Revision": revision(task),
        "DesiredStatus": "STOPPED" if task.desired_status == "STOPPED" else "RUNNING",
        "KnownStatus": _TASK_KNOWN.get(task.last_status, task.last_status),
    }
    _set(out, "Limits", _task_limits(task))
    _set(out, "PullStartedAt", rfc3339(task.pull_started_at))
    _set(out, "PullStoppedAt", rfc3339(task.pull_stopped_at))
    _set(out, "ExecutionStoppedAt", rfc3339(task.stopped_at))
    out["AvailabilityZone"] = p.availability_zone
    if with_tags:
        out["TaskTags"] = task_tags(task)  # Fargate has no container instance to tag
    out["LaunchType"] = LAUNCH_TYPE
    out["Containers"] = [
        container_document(p, task, c, mac=mac, task_dir=task_dir) for c in task.containers
    ]
    _set(out, "ClockDrift", dict(clock) if clock else None)
    return out


# -- the introspection API (127.0.0.1:51678) ----------------------------------------------


def introspection_metadata(p: Platform, instance_id: str) -> dict[str, Any]:
    """`/v1/metadata`: the cluster, this "container instance" and the agent's version."""
    return {
        "Cluster": p.cluster,
        "ContainerInstanceArn": arns.container_instance_arn(
            p.region, p.account, p.cluster, instance_id
        ),
        "Version": f"Amazon ECS Agent - v{p.agent_version} (nstask)",
    }


def introspection_task(p: Platform, task: TaskRecord) -> dict[str, Any]:
    """One entry of `/v1/tasks` (the ECS agent's field names)."""
    mode = str(_definition(task).get("networkMode") or "awsvpc")
    containers = []
    for c in task.containers:
        entry: dict[str, Any] = {"DockerId": c.containerd_id, "DockerName": c.name, "Name": c.name}
        if task.ip is not None and mode != "host":
            entry["Networks"] = [{"NetworkMode": mode, "IPv4Addresses": [task.ip]}]
        containers.append(entry)
    return {
        "Arn": p.task_arn(task.id),
        "DesiredStatus": "STOPPED" if task.desired_status == "STOPPED" else "RUNNING",
        "KnownStatus": _TASK_KNOWN.get(task.last_status, task.last_status),
        "Family": task.family,
        "Version": revision(task),
        "Containers": containers,
    }
