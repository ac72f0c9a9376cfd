"""What a task's containers are given for the endpoint: their environment variables, and
the fields FireLens adds to their log records. Called by the containers step."""

from __future__ import annotations

from agent.config import AgentConfig
from agent.metadata import documents, netfilter
from agent.store import ContainerRecord, TaskRecord
from agent.taskdef import TaskDefinition

__all__ = ["container_environment", "enabled", "firelens_metadata"]


def enabled(config: AgentConfig) -> bool:
    """The endpoint needs the built-in network (its gateway is where the listener is)."""
    return config.metadata_port != 0 and config.conflist_file is None


def container_environment(config: AgentConfig, task: TaskRecord, c: ContainerRecord) -> list[str]:
    """What ECS puts in every container's environment for the endpoint: the v4 and v3 URIs
    and, with a taskRoleArn, the credentials URI. The executionRoleArn never reaches a
    container; no role, no variable."""
    if not enabled(config):
        return []
    out = []
    if c.metadata_id:
        out += [
            f"ECS_CONTAINER_METADATA_URI_V4=http://{netfilter.ENDPOINT}/v4/{c.metadata_id}",
            f"ECS_CONTAINER_METADATA_URI=http://{netfilter.ENDPOINT}/v3/{c.metadata_id}",
        ]
    if task.credentials_id and documents.task_role_arn(task.definition):
        out.append(f"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/v2/credentials/{task.credentials_id}")
    return out


def firelens_metadata(config: AgentConfig, task: TaskRecord, td: TaskDefinition) -> dict[str, str]:
    """ecs_cluster, ecs_task_arn, ecs_task_definition ("family:revision"), which FireLens adds
    to every record of the task's app containers unless the log router's firelensConfiguration
    option enable-ecs-log-metadata is "false"; {} when it is."""
    router = next((c.firelens for c in td.containers if c.firelens is not None), None)
    if router is None or dict(router.options).get("enable-ecs-log-metadata", "true") == "false":
        return {}
    p = documents.Platform(
        cluster=config.cluster,
        region=config.region,
        account=config.account_id,
        availability_zone=config.availability_zone or f"{config.region}a",
        subnet=config.subnet,
    )
    return {
        "ecs_cluster": config.cluster,
        "ecs_task_arn": p.task_arn(task.id),
        "ecs_task_definition": f"{task.family}:{documents.revision(task)}",
    }
