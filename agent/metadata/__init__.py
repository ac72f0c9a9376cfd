"""What ECS serves to its tasks at 169.254.170.2 (task metadata v2/v3/v4, task-role
credentials) and the agent's introspection API (127.0.0.1:51678), built from our records.

- arns: ECS's ARN formats (cluster, task, container, container instance) and their parser.
- documents: the JSON bodies, with ECS's field names and omission rules (pure functions).
- netfilter: the per-agent iptables chains that make 169.254.170.2:80 reach the agent.
- server: the two aiohttp listeners, caller identification and isolation.
"""

from agent.metadata.env import container_environment, enabled, firelens_metadata

__all__ = ["container_environment", "enabled", "firelens_metadata"]
