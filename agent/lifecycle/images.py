"""Step 4, images: every image of the task present and unpacked before any container
starts, per the agent's pull behaviour (agent.pull)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from agent import faults, pull
from agent.containerd import Containerd
from agent.images import ImageConfig, UnpackedMemo
from agent.lifecycle.runtime import Context, phase
from agent.registry import Credentials
from agent.store import TaskRecord
from agent.taskdef import TaskDefinition


class PullImages:
    """The image seam on the real stack: agent.pull.ensure_image."""

    def __init__(
        self,
        client: Containerd,
        *,
        policy: str,
        snapshotter: str,
        insecure: Sequence[str],
        docker_config: str = "",
    ) -> None:
        self.client = client
        self.policy = policy
        self.snapshotter = snapshotter
        self.insecure = insecure
        self.docker_config = docker_config
        self.memo = UnpackedMemo()

    async def ensure(self, image: str, *, auth: Credentials | None = None) -> ImageConfig:
        return await pull.ensure_image(
            self.client,
            image,
            policy=self.policy,
            snapshotter=self.snapshotter,
            insecure=self.insecure,
            memo=self.memo,
            auth=auth,
            docker_config=self.docker_config or None,
        )


async def ensure(
    ctx: Context,
    task: TaskRecord,
    td: TaskDefinition,
    registry_auth: Mapping[str, Credentials] | None = None,
) -> dict[str, ImageConfig]:
    """`registry_auth`: container name -> its repositoryCredentials (else config.json)."""
    out: dict[str, ImageConfig] = {}
    task.pull_started_at = time.time()  # the metadata endpoint's PullStartedAt
    with phase(task, "images"):
        for cdef in td.containers:
            if cdef.image not in out:
                auth = (registry_auth or {}).get(cdef.name)
                out[cdef.image] = await ctx.images.ensure(cdef.image, auth=auth)
    task.pull_stopped_at = time.time()  # ... and PullStoppedAt (saved with the digests)
    for c in task.containers:
        c.image_digest = out[c.image].digest
    ctx.save(task)
    faults.point("images")
    return out
