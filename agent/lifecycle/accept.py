"""Step 1, accept: validate the definition, check everything that can be checked without
touching the host, give the task its ids and persist its records. Nothing is created here,
so a task that cannot run is refused with nothing to clean up."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent import containers, hostfields, network, pull
from agent.errors import AlreadyExists, ImageNotFound, InvalidInput
from agent.lifecycle import restart
from agent.lifecycle.runtime import PROVISIONING, RUNNING, UNKNOWN, Context, ms
from agent.metadata.documents import task_role_arn
from agent.secrets import SecretNotFound
from agent.store import ContainerRecord, TaskRecord
from agent.taskdef import (
    ContainerDefinition,
    TaskDefinition,
    parse_task_definition,
    stop_order,
    with_environment,
)

log = structlog.get_logger("nstask.engine")


@dataclass(frozen=True)
class Accepted:
    task: TaskRecord
    definition: TaskDefinition
    env_files: dict[str, list[tuple[str, str]]]


async def accept(
    ctx: Context, definition: Any, *, source: str = "", env: dict[str, str] | None = None
) -> Accepted:
    """Validate and persist a task (PROVISIONING); raises before anything is stored when it
    cannot run."""
    t0 = time.monotonic()
    td = with_environment(parse_task_definition(definition, source=source), env or {})
    for w in td.warnings:
        log.warning("task_definition_warning", source=source, warning=w)
    env_files = await precheck(ctx, td)
    task_id = uuid.uuid4().hex
    log_dir = ctx.config.log_dir / task_id
    records = [
        ContainerRecord(
            task_id=task_id,
            name=c.name,
            position=i,
            containerd_id=containerd_id(task_id, i, c.name),
            image=c.image,
            log_path=str(log_dir / f"{i}-{re.sub(r'[^A-Za-z0-9_-]', '_', c.name)}.log"),
            essential=c.essential,
            health=UNKNOWN if c.health_check is not None else None,  # run or not: UNKNOWN
            metadata_id=secrets.token_hex(16),  # the container's metadata URI (agent.metadata)
        )
        for i, c in enumerate(td.containers)
    ]
    task = TaskRecord(
        id=task_id,
        family=td.family,
        definition=definition,
        source=source,
        overrides={
            "environment": env or {},
            "stop": stop_plan_of(td),
            "health": health_plan_of(td),
            "restart": restart.plan_of(td),  # restartPolicy (issue 12 B)
        },
        last_status=PROVISIONING,
        desired_status=RUNNING,
        created_at=time.time(),
        containers=records,
        # The task's credentials URI, only with a taskRoleArn (agent.metadata).
        credentials_id=str(uuid.uuid4()) if task_role_arn(definition) else None,
    )
    task.timings["accept"] = ms(t0)
    task.timeline["accept"] = -task.timings["accept"]  # validation ran before created_at
    ctx.store.insert_task(task)
    log.info("task_accepted", task=task_id, family=td.family, source=source)
    return Accepted(task, td, env_files)


def containerd_id(task_id: str, index: int, name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") or "c"
    return f"{task_id}-{index}-{safe}"


def has_check(cdef: ContainerDefinition) -> bool:
    """A check nstask runs: CMD or CMD-SHELL (another type is never run, as Docker does)."""
    return cdef.health_check is not None and cdef.health_check.command[0] in ("CMD", "CMD-SHELL")


def stop_plan_of(td: TaskDefinition) -> dict[str, Any]:
    """What a stop needs from the definition, kept with the task at submit."""
    return {
        "order": stop_order(td),
        "timeouts": {c.name: c.stop_timeout for c in td.containers},
    }


def health_plan_of(td: TaskDefinition) -> dict[str, dict[str, Any]]:
    """The health checks, kept with the task at submit, so a restarted agent resumes them
    without parsing the definition again (issue 10)."""
    return {
        c.name: {
            "command": list(c.health_check.command),
            "interval": c.health_check.interval,
            "timeout": c.health_check.timeout,
            "retries": c.health_check.retries,
            "startPeriod": c.health_check.start_period,
        }
        for c in td.containers
        if c.health_check is not None and has_check(c)
    }


async def precheck(ctx: Context, td: TaskDefinition) -> dict[str, list[tuple[str, str]]]:
    """Returns the environment files' contents, read here once, off the event loop."""
    for image in sorted({c.image for c in td.containers}):
        # A local (.local) image is never pulled: it must have been imported.
        if pull.is_local(image) and await ctx.client.get_image(image) is None:
            raise ImageNotFound(
                f"image {image} is not present in containerd namespace "
                f"{ctx.config.namespace}; import it with `nstask image import FILE`",
                image=image,
            )
    # Only what no configured source can answer (with AWS on, the secrets step asks it).
    missing = ctx.secret_sources.missing_at_submit(td)
    if missing:
        raise SecretNotFound(
            "secret(s) not in the local secret store: "
            + ", ".join(missing)
            + "; add each with `nstask secret put NAME`",
            secrets=missing,
        )
    env_files = await asyncio.to_thread(containers.read_environment_files, td)
    check_host_volumes(ctx, td)
    check_host_limits(td)
    # A user name is resolved from the image at container create (agent.users, issue 12).
    hostfields.check(td)  # devices, swap accounting, runtimePlatform (issue 12 B)
    if td.network_mode in ("bridge", "host"):
        ports_for(ctx, td, check_only=True)
    return env_files


def _protected_paths(ctx: Context) -> list[tuple[Path, str]]:
    cfg = ctx.config
    return [
        (cfg.state_dir, "the agent's state directory"),
        (cfg.run_dir, "the agent's runtime directory"),
        (cfg.socket.parent, "the directory of the agent's API socket"),
        (Path(cfg.containerd_address).parent, "containerd's socket directory"),
    ]


def check_host_volumes(ctx: Context, td: TaskDefinition) -> None:
    """Host volumes are allowed, as ECS allows them, but never onto what runs the host's
    tasks: a task with the agent's state or containerd's socket can drive both (issue
    9). Symlinks are resolved first. --allow-host-path lets an operator say otherwise."""
    allowed = [Path(os.path.realpath(p)) for p in ctx.config.allow_host_paths]
    protected = [(Path(os.path.realpath(p)), what) for p, what in _protected_paths(ctx)]
    for i, v in enumerate(td.volumes):
        if v.host_path is None:
            continue
        at = f"volumes[{i}].host.sourcePath"
        if not Path(v.host_path).exists():
            raise InvalidInput(f"{at}: host path {v.host_path} does not exist")
        real = Path(os.path.realpath(v.host_path))
        if any(real == a or a in real.parents for a in allowed):
            continue
        for p, what in protected:
            if real == p or p in real.parents:
                shown = v.host_path if str(real) == v.host_path else f"{v.host_path} ({real})"
                raise InvalidInput(
                    f"{at}: {shown} is {what} or inside it ({p}); a task with it could "
                    "drive the agent or containerd. Start the agent with "
                    f"--allow-host-path {real} to allow it"
                )


def _host_memory_mib() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return None


def check_host_limits(td: TaskDefinition) -> None:
    """Limits within ECS's ranges (validation checks those) but beyond this host: set as
    asked, since a Fargate size must run unchanged, with a warning saying so."""
    host_mib = _host_memory_mib()
    host_units = (os.cpu_count() or 1) * 1024
    asks = [("memory", td.memory)] + [
        (f"containerDefinitions[{i}].memory", c.memory) for i, c in enumerate(td.containers)
    ]
    for where, mib in asks:
        if mib is not None and host_mib is not None and mib > host_mib:
            log.warning(
                "limit_above_host",
                field=where,
                warning=f"{where}: {mib} MiB is more than this host has ({host_mib} MiB); "
                "the limit is set but cannot be reached",
            )
    if td.cpu is not None and td.cpu > host_units:
        log.warning(
            "limit_above_host",
            field="cpu",
            warning=f"cpu: {td.cpu} units is more than this host has ({host_units} "
            "units); the task gets at most the host's CPUs",
        )


def ports_for(
    ctx: Context, td: TaskDefinition, *, check_only: bool = False
) -> list[dict[str, Any]]:
    """Host ports of the task (bridge: published through portmap; host: the container's
    own). A port in use on the host or by another task is refused; 0 or none in bridge
    mode gets a free port."""
    taken = {(p["hostPort"], p["protocol"]) for t in ctx.list_tasks() for p in t.ports}
    out = []
    for c in td.containers:
        for pm in c.port_mappings:
            host_port = pm.host_port or (pm.container_port if td.network_mode == "host" else 0)
            if host_port == 0:
                host_port = 0 if check_only else network.free_host_port(pm.protocol)
            elif (host_port, pm.protocol) in taken or not network.host_port_free(
                host_port, pm.protocol
            ):
                raise AlreadyExists(
                    f"containerDefinitions {c.name}: host port {host_port}/{pm.protocol} "
                    "is already in use on this host",
                    port=host_port,
                )
            out.append(
                {
                    "containerName": c.name,
                    "containerPort": pm.container_port,
                    "hostPort": host_port,
                    "protocol": pm.protocol,
                }
            )
            taken.add((host_port, pm.protocol))
    return out
