"""Every field of an ECS task definition with nstask's verdict on it.

One table, `FIELDS`: a field's path (`containerDefinitions.linuxParameters.devices`, list
items have no brackets) -> (kind, text). Kinds:

- IMPLEMENTED: nstask does what ECS does with it; the text says how (and where it differs).
- WARNED: accepted, with a warning at validation that says what nstask does instead (the
  text is that warning, after the field's path). Its sub-fields share the verdict.
- BOOKKEEPING: what describe-task-definition adds (ARN, revision, status, ...): not a
  setting, accepted without a warning.

agent.taskdef takes its warnings from here, scripts/field_table.py prints the README's table
from it, and tests/unit/test_fields.py fails when botocore's ECS model has a member of
TaskDefinition / ContainerDefinition (or of the nested shapes below) without a verdict.

Plain data and no imports: agent.taskdef is on `nstask validate`'s fast path.
"""

from __future__ import annotations

__all__ = [
    "BOOKKEEPING",
    "FIELDS",
    "IMPLEMENTED",
    "NOT_ECS",
    "WARNED",
    "unused_warning",
]

IMPLEMENTED = "implemented"
WARNED = "warning"
BOOKKEEPING = "bookkeeping"


# Fields nstask reads that ECS does not have (Docker's or podman's).
NOT_ECS = frozenset({"containerDefinitions.stopSignal", "containerDefinitions.gpu"})

_I, _W, _B = IMPLEMENTED, WARNED, BOOKKEEPING
_EMPTY_VOLUME = "not supported by nstask; the volume is an empty task-scoped directory"

FIELDS: dict[str, tuple[str, str]] = {
    # -- the task ---------------------------------------------------------------------------
    "family": (_I, "names the task (`nstask ps`, metadata); default `nstask`"),
    "taskRoleArn": (
        _I,
        "credentials at 169.254.170.2 from the local store, then STS AssumeRole",
    ),
    "executionRoleArn": (_I, "the role the agent reads secrets with; never given to a task"),
    "networkMode": (
        _I,
        "awsvpc (own netns, CNI chain), bridge (ports published on the host), host, none",
    ),
    "containerDefinitions": (_I, "at most 10, as in ECS"),
    "volumes": (_I, "see the volume fields"),
    "placementConstraints": (_W, "nstask runs every task on this one host; ignored"),
    "requiresCompatibilities": (
        _B,
        "the launch types ECS checks the definition against; not a setting of the task",
    ),
    "cpu": (
        _I,
        "CPU units or a vCPU string (`1 vcpu`); the task cgroup's CFS quota",
    ),
    "memory": (
        _I,
        "MiB or a size string (`2 GB`, `2GB`, `2048 MiB`); the task cgroup's memory limit",
    ),
    "tags": (_I, "served by the metadata endpoint's /taskWithTags"),
    "tags.key": (_I, "1-128 characters; at most 50 tags"),
    "tags.value": (_I, "up to 256 characters"),
    "pidMode": (_I, "`task` (one PID namespace for the task's containers) and `host`"),
    "ipcMode": (_I, "`task` (one IPC namespace for the task's containers) and `host`"),
    "proxyConfiguration": (
        _W,
        "no App Mesh proxy redirect is set up; the containers' traffic goes out directly; ignored",
    ),
    "inferenceAccelerators": (_W, "no Elastic Inference accelerators here; ignored"),
    "ephemeralStorage": (
        _I,
        "sizeInGiB checked (21-200, as ECS); a warning says nstask does not limit the task's "
        "storage (its containers write to their snapshots on the host's disk)",
    ),
    "ephemeralStorage.sizeInGiB": (_I, "21-200, as ECS; not enforced (see ephemeralStorage)"),
    "runtimePlatform": (
        _I,
        "checked against the host: another CPU architecture or OS is refused",
    ),
    "runtimePlatform.cpuArchitecture": (_I, "X86_64 or ARM64; must be the host's"),
    "runtimePlatform.operatingSystemFamily": (_I, "LINUX"),
    "enableFaultInjection": (_W, "ECS's fault injection endpoints are not served; ignored"),
    "trustedExecutionConfiguration": (
        _W,
        "no trusted execution environment on this host; the task runs as any other; ignored",
    ),
    "revision": (_B, "describe-task-definition output"),
    "taskDefinitionArn": (_B, "describe-task-definition output"),
    "status": (_B, "describe-task-definition output"),
    "compatibilities": (_B, "describe-task-definition output"),
    "requiresAttributes": (_B, "describe-task-definition output"),
    "registeredAt": (_B, "describe-task-definition output"),
    "registeredBy": (_B, "describe-task-definition output"),
    "deregisteredAt": (_B, "describe-task-definition output"),
    "deleteRequestedAt": (_B, "describe-task-definition output"),
    # -- volumes ----------------------------------------------------------------------------
    "volumes.name": (_I, "letters, digits, `-`, `_`"),
    "volumes.host": (_I, "a bind mount of the host path"),
    "volumes.host.sourcePath": (
        _I,
        "must exist; `/`, /etc, /proc, /sys, /dev accepted with a warning",
    ),
    "volumes.dockerVolumeConfiguration": (
        _I,
        "the local driver; a volume created with the task and removed with it",
    ),
    "volumes.dockerVolumeConfiguration.scope": (
        _I,
        "`task`; `shared` is run as `task` with a warning",
    ),
    "volumes.dockerVolumeConfiguration.autoprovision": (
        _I,
        "accepted: a task volume is always created",
    ),
    "volumes.dockerVolumeConfiguration.driver": (_I, "`local` only"),
    "volumes.dockerVolumeConfiguration.driverOpts": (
        _I,
        "type=tmpfs device=tmpfs with tmpfs `o` options (size, mode, uid, gid, ...); "
        "always nosuid,nodev",
    ),
    "volumes.dockerVolumeConfiguration.labels": (_I, "checked (string map), not stored"),
    "volumes.efsVolumeConfiguration": (_W, _EMPTY_VOLUME),
    "volumes.s3filesVolumeConfiguration": (_W, _EMPTY_VOLUME),
    "volumes.fsxWindowsFileServerVolumeConfiguration": (_W, _EMPTY_VOLUME),
    "volumes.configuredAtLaunch": (_W, _EMPTY_VOLUME),
    # -- a container ------------------------------------------------------------------------
    "containerDefinitions.name": (_I, "letters, digits, `-`, `_`; unique in the task"),
    "containerDefinitions.image": (
        _I,
        "pulled from its registry (or local `*.local/...` images) by the pull behaviour",
    ),
    "containerDefinitions.repositoryCredentials": (
        _I,
        "a secret holding username and password",
    ),
    "containerDefinitions.repositoryCredentials.credentialsParameter": (
        _I,
        "resolved like other secrets",
    ),
    "containerDefinitions.cpu": (_I, "CPU shares of the container's cgroup"),
    "containerDefinitions.memory": (_I, "the container's memory limit (MiB)"),
    "containerDefinitions.memoryReservation": (_I, "the container's soft memory limit (MiB)"),
    "containerDefinitions.links": (
        _W,
        "the containers of a task share one network namespace and reach each other on "
        "localhost; ignored",
    ),
    "containerDefinitions.portMappings": (
        _I,
        "awsvpc: reachable at the task's IP; bridge: published on the host (portmap)",
    ),
    "containerDefinitions.portMappings.containerPort": (_I, "1-65535"),
    "containerDefinitions.portMappings.hostPort": (
        _I,
        "equal to containerPort in awsvpc and host mode, as in ECS",
    ),
    "containerDefinitions.portMappings.protocol": (_I, "tcp or udp"),
    "containerDefinitions.portMappings.name": (
        _W,
        "Service Connect names are not used (no Service Connect here); ignored",
    ),
    "containerDefinitions.portMappings.appProtocol": (
        _W,
        "Service Connect protocols are not used (no Service Connect here); ignored",
    ),
    "containerDefinitions.portMappings.containerPortRange": (
        _W,
        "port ranges are not mapped; list each port as its own mapping; ignored",
    ),
    "containerDefinitions.essential": (
        _I,
        "an essential container that stops, or cannot start, stops the task",
    ),
    "containerDefinitions.restartPolicy": (
        _I,
        "the container is restarted in place, as ECS does",
    ),
    "containerDefinitions.restartPolicy.enabled": (_I, "restart the container when it exits"),
    "containerDefinitions.restartPolicy.ignoredExitCodes": (
        _I,
        "exit codes that do not restart (at most 50)",
    ),
    "containerDefinitions.restartPolicy.restartAttemptPeriod": (
        _I,
        "seconds a container must run before it is restarted (default 300)",
    ),
    "containerDefinitions.entryPoint": (_I, "replaces the image's ENTRYPOINT"),
    "containerDefinitions.command": (_I, "replaces the image's CMD"),
    "containerDefinitions.environment": (_I, "after environmentFiles, before secrets"),
    "containerDefinitions.environment.name": (_I, "no `=`"),
    "containerDefinitions.environment.value": (_I, ""),
    "containerDefinitions.environmentFiles": (
        _I,
        "up to 10, read once at submit; regular files of at most 5 MiB",
    ),
    "containerDefinitions.environmentFiles.value": (
        _I,
        "a local path or file:// URL; an S3 ARN is refused (no S3 here)",
    ),
    "containerDefinitions.environmentFiles.type": (_I, "`s3`, as in ECS"),
    "containerDefinitions.mountPoints": (_I, "bind mounts of the task's volumes"),
    "containerDefinitions.mountPoints.sourceVolume": (_I, "a volume of the task"),
    "containerDefinitions.mountPoints.containerPath": (_I, "absolute, no `..`"),
    "containerDefinitions.mountPoints.readOnly": (_I, ""),
    "containerDefinitions.volumesFrom": (_I, "the source container's mount points"),
    "containerDefinitions.volumesFrom.sourceContainer": (_I, "a container of the task"),
    "containerDefinitions.volumesFrom.readOnly": (_I, ""),
    "containerDefinitions.linuxParameters": (_I, "see its fields"),
    "containerDefinitions.linuxParameters.capabilities": (_I, "from Docker's default set"),
    "containerDefinitions.linuxParameters.capabilities.add": (
        _I,
        "`ALL`, SYS_ADMIN, SYS_MODULE, NET_ADMIN accepted with a warning",
    ),
    "containerDefinitions.linuxParameters.capabilities.drop": (_I, "`ALL` too"),
    "containerDefinitions.linuxParameters.devices": (
        _I,
        "host devices in the container, allowed in its device cgroup",
    ),
    "containerDefinitions.linuxParameters.devices.hostPath": (
        _I,
        "must be a device node on the host",
    ),
    "containerDefinitions.linuxParameters.devices.containerPath": (_I, "default: the host path"),
    "containerDefinitions.linuxParameters.devices.permissions": (_I, "read, write, mknod"),
    "containerDefinitions.linuxParameters.initProcessEnabled": (
        _I,
        "the host's tini-static as PID 1",
    ),
    "containerDefinitions.linuxParameters.sharedMemorySize": (_I, "/dev/shm's size (MiB)"),
    "containerDefinitions.linuxParameters.tmpfs": (_I, "tmpfs mounts"),
    "containerDefinitions.linuxParameters.tmpfs.containerPath": (_I, "absolute, no `..`"),
    "containerDefinitions.linuxParameters.tmpfs.size": (_I, "MiB"),
    "containerDefinitions.linuxParameters.tmpfs.mountOptions": (_I, ""),
    "containerDefinitions.linuxParameters.maxSwap": (
        _I,
        "memory+swap limit as Docker sets it (needs `memory` and swap accounting; else a warning)",
    ),
    "containerDefinitions.linuxParameters.swappiness": (_I, "0-100, the cgroup's swappiness"),
    "containerDefinitions.secrets": (
        _I,
        "the local secret store, then Secrets Manager / SSM; never logged",
    ),
    "containerDefinitions.secrets.name": (_I, "the variable's name"),
    "containerDefinitions.secrets.valueFrom": (
        _I,
        "a Secrets Manager or SSM ARN (any region and account) or a local name",
    ),
    "containerDefinitions.dependsOn": (_I, "containers start in dependency order"),
    "containerDefinitions.dependsOn.containerName": (_I, "a container of the task"),
    "containerDefinitions.dependsOn.condition": (
        _I,
        "START, COMPLETE, SUCCESS, HEALTHY, as the ECS agent resolves them",
    ),
    "containerDefinitions.startTimeout": (_I, "bounds the wait of its dependents"),
    "containerDefinitions.stopTimeout": (_I, "signal, wait (default 30 s, at most 120), SIGKILL"),
    "containerDefinitions.versionConsistency": (
        _W,
        "the image is resolved by its tag at each pull, not pinned to a digest; ignored",
    ),
    "containerDefinitions.hostname": (_I, "bridge and host mode; refused in awsvpc, as in ECS"),
    "containerDefinitions.user": (
        _I,
        "uid, name, and `:group` forms resolved from the image's /etc/passwd and /etc/group, "
        "with supplementary groups and HOME",
    ),
    "containerDefinitions.workingDirectory": (_I, "absolute"),
    "containerDefinitions.disableNetworking": (_I, "loopback only"),
    "containerDefinitions.privileged": (_I, "every capability and the host's devices; warned"),
    "containerDefinitions.readonlyRootFilesystem": (_I, ""),
    "containerDefinitions.dnsServers": (_I, "the container's resolv.conf"),
    "containerDefinitions.dnsSearchDomains": (_I, "`search` in the container's resolv.conf"),
    "containerDefinitions.extraHosts": (_I, "the container's /etc/hosts"),
    "containerDefinitions.extraHosts.hostname": (_I, ""),
    "containerDefinitions.extraHosts.ipAddress": (_I, "an IP address"),
    "containerDefinitions.dockerSecurityOptions": (
        _I,
        "seccomp=unconfined or a profile file, no-new-privileges (always on); AppArmor and "
        "SELinux labels are accepted with a warning",
    ),
    "containerDefinitions.interactive": (
        _I,
        "with pseudoTerminal, stdin kept open (`docker run -dit`); alone, warned: the process's "
        "stdin is empty (containerd's binary logging gives it none)",
    ),
    "containerDefinitions.pseudoTerminal": (
        _I,
        "the main process runs in a pty; its output is logged as one stream, stdout",
    ),
    "containerDefinitions.dockerLabels": (_I, "containerd container labels"),
    "containerDefinitions.ulimits": (
        _I,
        "rlimits; one above the host's hard limit is a clear error",
    ),
    "containerDefinitions.ulimits.name": (_I, "Docker's names"),
    "containerDefinitions.ulimits.softLimit": (_I, ""),
    "containerDefinitions.ulimits.hardLimit": (_I, ""),
    "containerDefinitions.logConfiguration": (_I, "through nstask's logging shim"),
    "containerDefinitions.logConfiguration.logDriver": (
        _I,
        "json-file, fluentd, awsfirelens, none; awslogs, splunk, syslog, journald and gelf "
        "are written as json-file with a warning",
    ),
    "containerDefinitions.logConfiguration.options": (_I, "the driver's options"),
    "containerDefinitions.logConfiguration.secretOptions": (_I, "resolved as secrets"),
    "containerDefinitions.logConfiguration.secretOptions.name": (_I, ""),
    "containerDefinitions.logConfiguration.secretOptions.valueFrom": (_I, ""),
    "containerDefinitions.healthCheck": (
        _I,
        "run inside the container; a command without CMD or CMD-SHELL is accepted with a "
        "warning and never run (health stays UNKNOWN), as Docker does",
    ),
    "containerDefinitions.healthCheck.command": (_I, "CMD, CMD-SHELL, NONE"),
    "containerDefinitions.healthCheck.interval": (_I, "5-300 s (30)"),
    "containerDefinitions.healthCheck.timeout": (_I, "2-60 s (5)"),
    "containerDefinitions.healthCheck.retries": (_I, "1-10 (3)"),
    "containerDefinitions.healthCheck.startPeriod": (_I, "0-300 s (0)"),
    "containerDefinitions.systemControls": (
        _I,
        "namespaced sysctls only: net.* (not in host network mode) and the IPC ones",
    ),
    "containerDefinitions.systemControls.namespace": (_I, "a sysctl name"),
    "containerDefinitions.systemControls.value": (_I, "its value"),
    "containerDefinitions.resourceRequirements": (
        _W,
        "no GPUs or inference accelerators are assigned; the container runs without them; ignored",
    ),
    "containerDefinitions.firelensConfiguration": (
        _I,
        "the task's log router (fluentbit or fluentd) on a unix socket",
    ),
    "containerDefinitions.firelensConfiguration.type": (_I, "fluentbit or fluentd"),
    "containerDefinitions.firelensConfiguration.options": (_I, ""),
    "containerDefinitions.credentialSpecs": (
        _W,
        "Active Directory credential specs (gMSA) are not used; ignored",
    ),
    # -- not ECS's ----------------------------------------------------------------------------
    "containerDefinitions.stopSignal": (_I, "Docker's stop signal (overrides STOPSIGNAL)"),
    "containerDefinitions.gpu": (
        _W,
        "not an ECS container field (GPUs go in resourceRequirements); ignored",
    ),
}


def unused_warning(path: str) -> str | None:
    """What validation says about a field it does not act on: "" when nstask acts on it (or
    it is bookkeeping), the warning's text when it is only accepted, None when the field is
    unknown (the caller names it as such)."""
    verdict = FIELDS.get(path)
    if verdict is None:
        return None
    kind, text = verdict
    return text if kind == WARNED else ""
