"""ECS's ARN formats, as the metadata endpoint and the introspection API show them.

    arn:aws:ecs:<region>:<account>:cluster/<cluster>
    arn:aws:ecs:<region>:<account>:task/<cluster>/<task id>
    arn:aws:ecs:<region>:<account>:container/<cluster>/<task id>/<container uuid>
    arn:aws:ecs:<region>:<account>:container-instance/<cluster>/<instance id>

These are the "long" formats ECS uses since 2018; OpenTelemetry's ECS resource detector and
the Datadog agent split them on ':' and '/' to find region, account, cluster and task id.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from agent.errors import InvalidInput

__all__ = [
    "Arn",
    "check_account",
    "check_cluster",
    "check_region",
    "cluster_arn",
    "container_arn",
    "container_instance_arn",
    "parse",
    "task_arn",
]

_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")
_ACCOUNT = re.compile(r"\d{12}")
# ECS: up to 255 letters, digits, hyphens and underscores.
_CLUSTER = re.compile(r"[A-Za-z0-9_-]{1,255}")


class Arn(NamedTuple):
    partition: str
    service: str
    region: str
    account: str
    resource_type: str
    resource: str  # what follows "<type>/"


def check_region(region: str) -> str:
    if not _REGION.fullmatch(region):
        raise InvalidInput(f"region {region!r}: not an AWS region name (like us-east-1)")
    return region


def check_account(account: str) -> str:
    if not _ACCOUNT.fullmatch(account):
        raise InvalidInput(f"account_id {account!r}: must be 12 digits")
    return account


def check_cluster(cluster: str) -> str:
    if not _CLUSTER.fullmatch(cluster):
        raise InvalidInput(
            f"cluster {cluster!r}: use 1-255 letters, digits, hyphens and underscores"
        )
    return cluster


def _arn(region: str, account: str, resource: str) -> str:
    return f"arn:aws:ecs:{region}:{account}:{resource}"


def cluster_arn(region: str, account: str, cluster: str) -> str:
    return _arn(region, account, f"cluster/{cluster}")


def task_arn(region: str, account: str, cluster: str, task_id: str) -> str:
    return _arn(region, account, f"task/{cluster}/{task_id}")


def container_arn(region: str, account: str, cluster: str, task_id: str, uuid: str) -> str:
    return _arn(region, account, f"container/{cluster}/{task_id}/{uuid}")


def container_instance_arn(region: str, account: str, cluster: str, instance: str) -> str:
    return _arn(region, account, f"container-instance/{cluster}/{instance}")


def parse(arn: str) -> Arn:
    """Split an ARN as the consumers of the metadata endpoint do (ValueError when it is not
    one)."""
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or "/" not in parts[5]:
        raise ValueError(f"not an ARN with a resource type: {arn!r}")
    rtype, resource = parts[5].split("/", 1)
    return Arn(parts[1], parts[2], parts[3], parts[4], rtype, resource)
