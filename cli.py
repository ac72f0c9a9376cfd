"""nstask: the command line. Thin: parse, call the agent's local API, print, exit.

Exit codes: 0 ok; 2 bad input (bad task definition, bad argument); 1 any other error;
`run` attached exits with the essential container's exit code (125 if the task never ran).
The `nstask` console script is cli_fast.main: it runs `ps`, `validate`, `run` and `--help` without
importing click, with what it generates from the commands below (the one definition of every
option), and hands everything else to this module. Imports stay light (no agent internals at
the top) so every command starts fast.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

import cli_fast
from cli_fast import DEFAULT_SOCKET, ApiError, Client, Response, fail, read_file

_api_fail = cli_fast.api_fail
_read_file = read_file


def _client(ctx: click.Context) -> Client:
    return Client(ctx.obj["socket"])


_read_definition = cli_fast.read_definition


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket",
    "socket_path",
    envvar="NSTASK_SOCKET",
    default=DEFAULT_SOCKET,
    show_default=True,
    help="The agent's API socket.",
)
@click.pass_context
def main(ctx: click.Context, socket_path: str) -> None:
    """Run ECS task definitions on this host, the way the Fargate data plane does."""
    ctx.ensure_object(dict)
    ctx.obj["socket"] = socket_path


# -- agent -----------------------------------------------------------------------------------
# A group that runs the agent when no subcommand is named (`nstask agent [FLAGS]`), as before,
# and has `nstask agent status` / `nstask agent stop` (cli_admin-like helpers at the end).
@main.group(invoke_without_command=True)
@click.option("--detach", "-d", is_flag=True, help="Run in the background; print its pid.")
@click.option("--state-dir", type=click.Path(), help="State, logs (default /var/lib/nstask).")
@click.option("--run-dir", type=click.Path(), help="Socket, locks, pid (default /run/nstask).")
@click.option("--containerd-address", help="containerd socket.")
@click.option("--namespace", help="containerd namespace (default nstask).")
@click.option("--bridge", help="Task network bridge (default nstask0).")
@click.option("--subnet", help="Task network subnet (default 10.213.0.0/24).")
@click.option("--network-name", help="CNI network name (default nstask).")
@click.option(
    "--conflist",
    "conflist_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Use this CNI conflist instead of the built-in network.",
)
@click.option("--stop-timeout", type=float, help="Default stopTimeout in seconds (30).")
@click.option(
    "--pull-policy",
    type=click.Choice(["default", "always", "once", "prefer-cached"]),
    help="Image pull behaviour, as ECS's (default here: prefer-cached).",
)
@click.option(
    "--docker-config",
    help="The docker config.json with registry credentials, or its directory "
    "(default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json).",
)
@click.option(
    "--stop-tasks-on-exit",
    is_flag=True,
    default=None,
    help="Stop every task when the agent gets SIGTERM (default: leave them running).",
)
@click.option(
    "--allow-host-path",
    "allow_host_paths",
    multiple=True,
    help="Let host volumes bind this path although it holds the agent's or containerd's "
    "state (repeatable; refused by default).",
)
@click.option(
    "--pids-limit",
    type=click.IntRange(min=0),
    help="Processes and threads per task, all its containers together (4096; 0: no limit).",
)
@click.option(
    "--warm-pool-size",
    type=click.IntRange(min=0),
    help="Network namespaces kept attached ahead of tasks (2; 0: none).",
)
@click.option("--cluster", help="Cluster name tasks are told (nstask).")
@click.option("--region", help="Region in the tasks' ARNs (us-east-1).")
@click.option("--account-id", help="Account in the tasks' ARNs (000000000000).")
@click.option(
    "--metadata-port",
    type=click.IntRange(min=0, max=65535),
    help="Port of the bridge's gateway 169.254.170.2:80 is sent to (51679; 0: no endpoint).",
)
@click.option(
    "--introspection-port",
    type=click.IntRange(min=0, max=65535),
    help="Introspection API port on 127.0.0.1 (51678; 0: off).",
)
@click.option(
    "--metadata-host-mode/--no-metadata-host-mode",
    default=None,
    help="Host-mode tasks reach 169.254.170.2 too (a host-wide rule: one agent per host).",
)
@click.option(
    "--metrics-address",
    help="Serve Prometheus metrics at [HOST]:PORT/metrics (no HOST: 127.0.0.1; default off).",
)
@click.option(
    "--otlp-endpoint",
    help="Export each task's start as an OpenTelemetry trace to this OTLP/HTTP endpoint "
    "(default: $OTEL_EXPORTER_OTLP_ENDPOINT, else off).",
)
@click.option("--log-json", is_flag=True, help="Log JSON lines instead of key=value.")
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False),
    help="Where the agent logs, rotated by size (default: stderr; with --detach "
    "<state-dir>/agent.log).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="The agent's config file (default /etc/nstask/agent.toml; $NSTASK_CONFIG).",
)
@click.pass_context
def agent(
    ctx: click.Context,
    /,
    detach: bool,
    log_json: bool,
    log_file: str | None,
    config_file: str | None,
    **flags: Any,
) -> None:
    """Run the nstask agent (it owns every task and host resource).

    With a subcommand (status, stop), ask about or stop the agent on --socket instead."""
    if ctx.invoked_subcommand is not None:
        return
    from pathlib import Path

    from agent.config import load_config
    from agent.errors import InvalidInput

    socket_path = ctx.obj["socket"]
    values = {
        k: (Path(v) if k in ("state_dir", "run_dir", "conflist_file") and v else v)
        for k, v in flags.items()
    }
    values["allow_host_paths"] = tuple(flags.get("allow_host_paths") or ()) or None
    try:
        # --socket unset (its default): the config file may name the socket.
        source = ctx.parent.get_parameter_source("socket_path") if ctx.parent else None
        if source != click.core.ParameterSource.DEFAULT:
            values["socket"] = Path(socket_path)
        config = load_config(config_file=config_file, **values)
    except InvalidInput as e:
        fail(e.message, 2)
    if os.geteuid() != 0:
        fail("the agent must run as root (it creates network namespaces and containers)")
    if detach:
        if config_file:  # the detached agent reads the same file (what flags do not set)
            os.environ["NSTASK_CONFIG"] = os.path.abspath(config_file)
        _detach(config, log_json, log_file)
        return
    from agent.daemon import configure_logging
    from agent.daemon import main as agent_main

    if log_file:  # before logging is configured: it writes to sys.stderr
        from agent.logfile import RotatingLog

        sys.stderr = RotatingLog(
            log_file, max_bytes=config.log_max_bytes, max_files=config.log_max_files
        )
    configure_logging(json_output=log_json)
    _set_process_title()
    sys.exit(agent_main(config))


def _self_argv() -> list[str]:
    """How to start this nstask again: its launcher beside the interpreter (so the detached
    agent shows as `nstask ... agent ...` in ps), else the interpreter on cli."""
    launcher = os.path.join(os.path.dirname(sys.executable), "nstask")
    if os.access(launcher, os.X_OK):
        return [launcher]
    return [sys.executable, "-c", "import cli; cli.main()"]


def _set_process_title() -> None:
    """`nstask agent --socket ...` in ps (cmdline and comm), whatever started the process."""
    title = " ".join(["nstask", *sys.argv[1:]])
    try:
        import setproctitle  # type: ignore[import-not-found,unused-ignore]

        setproctitle.setproctitle(title)
    except ImportError:  # no argv rewriting without it: at least the name `ps -e` shows
        import contextlib

        with contextlib.suppress(OSError), open("/proc/self/comm", "w") as f:
            f.write("nstask")


def _start_error(log_path: str) -> str:
    """The error a detached agent that failed at start logged last (agent_failed)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(log_path) - 65536))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if "agent_failed" not in line:
            continue
        if line.startswith("{"):
            try:
                return str(json.loads(line).get("error", ""))
            except ValueError:
                return ""
        _, sep, rest = line.partition("error=")
        return rest.strip().strip("'\"") if sep else ""
    return ""


def _detach(config: Any, log_json: bool, log_file: str | None) -> None:
    import subprocess
    import time

    client = Client(str(config.socket))
    if _answers(client):
        fail(f"an agent already answers on {config.socket}")
    log_path = log_file or str(config.state_dir / "agent.log")
    if not log_file:
        from agent.daemon import private_dir

        private_dir(config.state_dir)  # 0700, as the agent makes it
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    argv = [
        *_self_argv(),
        "--socket",
        str(config.socket),
        "agent",
        "--state-dir",
        str(config.state_dir),
        "--run-dir",
        str(config.run_dir),
        "--containerd-address",
        config.containerd_address,
        "--namespace",
        config.namespace,
        "--bridge",
        config.bridge,
        "--subnet",
        config.subnet,
        "--network-name",
        config.network_name,
        "--stop-timeout",
        str(config.stop_timeout),
    ]
    if config.conflist_file:
        argv += ["--conflist", str(config.conflist_file)]
    if config.stop_tasks_on_exit:
        argv.append("--stop-tasks-on-exit")
    argv += ["--pull-policy", config.pull_policy]
    if config.docker_config:
        argv += ["--docker-config", config.docker_config]
    for path in config.allow_host_paths:
        argv += ["--allow-host-path", path]
    argv += ["--pids-limit", str(config.pids_limit)]
    argv += ["--warm-pool-size", str(config.warm_pool_size)]
    if log_json:
        argv.append("--log-json")
    argv += ["--log-file", os.path.abspath(log_path)]  # the agent rotates it (agent.logfile)
    # 0600: the log names tasks, images and errors; the agent fixes an older file's mode.
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with open(fd, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            why = _start_error(log_path)
            fail(
                f"the agent exited with code {proc.returncode} at start"
                + (f": {why}" if why else "")
                + f"; see {log_path}"
            )
        if _answers(client):
            click.echo(proc.pid)
            return
        time.sleep(0.05)
    fail(f"the agent (pid {proc.pid}) did not answer within 20 s; see {log_path}")


def _answers(client: Client) -> bool:
    try:
        resp = client.open("GET", "/v1/version", timeout=2)
        resp.close()
        return resp.status == 200
    except OSError:
        return False


# -- tasks -----------------------------------------------------------------------------------
@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--rm", "remove", is_flag=True, help="Remove the task and its logs when it stops.")
@click.option("--detach", "-d", is_flag=True, help="Print the task id and return.")
@click.option(
    "--env",
    "-e",
    "env",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set an environment variable in every container (like RunTask overrides).",
)
@click.pass_context
def run(ctx: click.Context, file: str, remove: bool, detach: bool, env: tuple[str, ...]) -> None:
    """Run the task definition in FILE."""
    cli_fast.run(_client(ctx), file, remove=remove, detach=detach, env=env)


_print_logs = cli_fast.print_logs


@main.command()
@click.option("--all", "-a", "all_tasks", is_flag=True, help="Show stopped tasks too.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--quiet", "-q", is_flag=True, help="Print task ids only.")
@click.pass_context
def ps(ctx: click.Context, all_tasks: bool, as_json: bool, quiet: bool) -> None:
    """List tasks."""
    cli_fast.ps(_client(ctx), all_tasks=all_tasks, as_json=as_json, quiet=quiet)


def _since(text: str) -> float:
    """A relative duration (10m, 1h30m, 45s) or an RFC 3339 time, as epoch seconds."""
    import re
    import time
    from datetime import datetime

    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", text)
    if m and any(m.groups()):
        h, mi, s = (float(g or 0) for g in m.groups())
        return time.time() - (h * 3600 + mi * 60 + s)
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        fail(
            f"--since {text!r}: expected a duration like 10m or a time like 2026-11-28T04:00:00Z", 2
        )


@main.command()
@click.argument("task", shell_complete=lambda c, p, i: _complete_tasks(c, p, i))
@click.argument(
    "container", required=False, shell_complete=lambda c, p, i: _complete_containers(c, p, i)
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the task stops.")
@click.option("--tail", "-n", type=int, help="Only the last N lines of each container.")
@click.option("--timestamps", "-t", is_flag=True, help="Prefix each line with its time.")
@click.option("--since", help="Only lines since a time: 10m, 1h30m, 45s, or 2026-11-28T04:00:00Z.")
@click.pass_context
def logs(
    ctx: click.Context,
    task: str,
    container: str | None,
    follow: bool,
    tail: int | None,
    timestamps: bool,
    since: str | None,
) -> None:
    """Print a task's output (all containers, or CONTAINER)."""
    try:
        _print_logs(
            _client(ctx),
            task,
            container,
            follow=follow,
            tail=tail,
            timestamps=timestamps,
            since=_since(since) if since else None,
        )
    except ApiError as e:
        _api_fail(e)
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument(
    "tasks", nargs=-1, required=True, shell_complete=lambda c, p, i: _complete_tasks(c, p, i)
)
@click.option(
    "--time",
    "-t",
    "timeout",
    type=float,
    help="Seconds to wait after the stop signal before SIGKILL (default: stopTimeout).",
)
@click.pass_context
def stop(ctx: click.Context, tasks: tuple[str, ...], timeout: float | None) -> None:
    """Stop tasks: stop signal, wait, SIGKILL; then remove their network and containers."""
    client = _client(ctx)
    body = {} if timeout is None else {"timeout": timeout}
    failed = False
    for t in tasks:
        try:
            task = client.call("POST", f"/v1/tasks/{t}/stop", body, timeout=None)
            click.echo(task["id"])
        except ApiError as e:
            click.echo(f"nstask: {e.body.get('message', e)}", err=True)
            failed = True
    sys.exit(1 if failed else 0)


@main.command()
@click.argument(
    "tasks", nargs=-1, required=True, shell_complete=lambda c, p, i: _complete_tasks(c, p, i)
)
@click.option("--force", "-f", is_flag=True, help="Stop running tasks first.")
@click.pass_context
def rm(ctx: click.Context, tasks: tuple[str, ...], force: bool) -> None:
    """Remove stopped tasks and their logs."""
    client = _client(ctx)
    failed = False
    for t in tasks:
        try:
            client.call("DELETE", f"/v1/tasks/{t}" + ("?force=1" if force else ""), timeout=None)
            click.echo(t)
        except ApiError as e:
            click.echo(f"nstask: {e.body.get('message', e)}", err=True)
            failed = True
    sys.exit(1 if failed else 0)


@main.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("task", shell_complete=lambda c, p, i: _complete_tasks(c, p, i))
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option(
    "--container",
    "-c",
    help="Which container (needed when the task has several).",
    shell_complete=lambda c, p, i: _complete_containers(c, p, i),
)
@click.option("--env", "-e", "env", multiple=True, metavar="KEY=VALUE")
@click.option("--interactive", "-i", is_flag=True, help="Send this terminal's input (stdin).")
@click.option("--tty", "-t", is_flag=True, help="Run the command in a terminal (a pty).")
@click.option("--user", "-u", help="Run as USER[:GROUP] (names or numbers, as in the container).")
@click.option("--workdir", "-w", help="Working directory inside the container (absolute).")
@click.pass_context
def exec_command(
    ctx: click.Context,
    task: str,
    command: tuple[str, ...],
    container: str | None,
    env: tuple[str, ...],
    interactive: bool = False,
    tty: bool = False,
    user: str | None = None,
    workdir: str | None = None,
) -> None:
    """Run COMMAND in a running container of TASK; exits with its exit code.

    -it gives an interactive shell in a terminal, as docker exec -it does; -i alone pipes
    stdin (echo hi | nstask exec -i TASK -- cat).

    Example: nstask exec TASK -- sh -c 'ls /'"""
    extra: dict[str, str] = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--env {item!r}: expected KEY=VALUE", 2)
        extra[key] = value
    if interactive or tty or user is not None or workdir is not None:
        _exec_session(ctx, task, command, container, extra, interactive, tty, user, workdir)
    body = {"command": list(command), "container": container, "environment": extra}
    try:
        resp = _client(ctx).request("POST", f"/v1/tasks/{task}/exec", body, timeout=None)
    except ApiError as e:
        _api_fail(e)
    code = 1
    while line := resp.readline():
        item = json.loads(line)
        if "exitCode" in item:
            code = int(item["exitCode"])
            continue
        stream = sys.stderr if item["stream"] == "stderr" else sys.stdout
        stream.write(item["data"])
        stream.flush()
    sys.exit(code)


def _exec_session(
    ctx: click.Context,
    task: str,
    command: tuple[str, ...],
    container: str | None,
    env: dict[str, str],
    interactive: bool,
    tty: bool,
    user: str | None,
    workdir: str | None,
) -> None:
    """`nstask exec -i/-t`: the interactive exec over a WebSocket (agent.exec_stream)."""
    from urllib.parse import quote

    from agent import exec_stream

    if tty and interactive and not os.isatty(0):
        fail("-t needs a terminal on stdin (the input is not a TTY); use -i alone to pipe", 2)
    if workdir is not None and not workdir.startswith("/"):
        fail(f"--workdir {workdir!r}: must be an absolute path", 2)
    columns, rows = exec_stream.terminal_size(0 if interactive else 1) if tty else (0, 0)
    body = {
        "command": list(command),
        "container": container,
        "environment": env,
        "tty": tty,
        "stdin": interactive,
        "user": user,
        "workdir": workdir,
        "columns": columns,
        "rows": rows,
    }
    path = f"/v1/tasks/{quote(task, safe='')}/exec?request=" + quote(json.dumps(body), safe="")
    socket_path = ctx.obj["socket"]
    try:
        sock, early = exec_stream.connect(socket_path, path)
    except ApiError as e:
        _api_fail(e)
    except (FileNotFoundError, ConnectionRefusedError):
        fail(
            f"the nstask agent is not running (nothing answers on {socket_path}); "
            f"{cli_fast.START_HINT}"
        )
    except PermissionError:
        fail(f"permission denied on {socket_path}: the agent's socket is root-only")
    except exec_stream.SessionError as e:
        fail(e.message, e.code)
    try:
        code = exec_stream.run_session(sock, early, tty=tty, stdin=interactive)
    except exec_stream.SessionError as e:
        fail(e.message, e.code)
    except (OSError, exec_stream.StreamError) as e:
        fail(f"the exec session broke: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)


@main.command()
@click.argument("task", shell_complete=lambda c, p, i: _complete_tasks(c, p, i))
@click.option(
    "--timeline", is_flag=True, help="Draw the start phases as a waterfall instead of JSON."
)
@click.pass_context
def inspect(ctx: click.Context, task: str, timeline: bool) -> None:
    """Show a task as JSON, with per-phase timings in milliseconds."""
    try:
        t = _client(ctx).call("GET", f"/v1/tasks/{task}")
    except ApiError as e:
        _api_fail(e)
    if timeline:
        import shutil

        width = max(20, min(shutil.get_terminal_size((100, 24)).columns, 160) - 50)
        utf8 = (sys.stdout.encoding or "").lower().replace("-", "") == "utf8"
        click.echo("\n".join(_timeline(t, width=width, bar="█" if utf8 else "#")))
        return
    click.echo(json.dumps(t, indent=2))


def _timeline(t: dict[str, Any], *, width: int, bar: str = "#") -> list[str]:
    """The task's phases as a waterfall: one row per phase in start order, its bar placed at
    its start (ms after the task was created) and as long as it took, on one scale; bars that
    overlap ran at the same time. Phases without a start (the stop's) are listed below."""
    timings: dict[str, float] = t.get("timings") or {}
    starts: dict[str, float] = {k: v for k, v in (t.get("timeline") or {}).items() if k in timings}
    head = f"task {t['id'][:12]} ({t['family']}): start timeline, ms after the task was created"
    if not starts:
        return [head, "  (no timeline recorded: the task was started by an older agent)"]
    origin = min(0.0, *starts.values())
    end = max(starts[k] + timings[k] for k in starts)
    span = max(end - origin, 0.001)
    name_w = max(len(k) for k in starts)
    right = f"{end:.0f} ms"
    scale = f"{origin:.0f}".ljust(width - len(right)) + right
    rows = [head, f"{'PHASE'.ljust(name_w)}  {'START':>9}  {'TOOK':>9}  |{scale}|"]
    for name in sorted(starts, key=lambda k: (starts[k], k)):
        begin, took = starts[name], timings[name]
        col = int((begin - origin) / span * width)
        length = max(1, round(took / span * width))
        col = min(col, width - 1)
        length = min(length, width - col)
        cells = " " * col + bar * length + " " * (width - col - length)
        rows.append(f"{name.ljust(name_w)}  {begin:9.1f}  {took:9.1f}  |{cells}|")
    rest = [k for k in timings if k not in starts]
    if rest:
        rows.append("not on the timeline: " + ", ".join(f"{k} {timings[k]:.1f} ms" for k in rest))
    return rows


@main.command("stats")
@click.argument("tasks", nargs=-1, shell_complete=lambda c, p, i: _complete_tasks(c, p, i))
@click.option("--no-stream", is_flag=True, help="Print one sample and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one array per sample).")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2),
    default=1.0,
    show_default=True,
    help="Seconds between samples.",
)
@click.pass_context
def stats_command(
    ctx: click.Context, tasks: tuple[str, ...], no_stream: bool, as_json: bool, interval: float
) -> None:
    """Live CPU, memory, network, block I/O and pids of the containers of running tasks (all,
    or TASK...), as `docker stats` shows them. CPU % needs two samples: the first table comes
    after one interval."""
    import time

    client = _client(ctx)
    first = True
    try:
        _stats_sample(client, tasks)  # the baseline of the first CPU %
        while True:
            time.sleep(interval)
            rows = _stats_sample(client, tasks)
            _print_stats(rows, as_json=as_json, no_stream=no_stream, clear=not first)
            first = False
            if no_stream:
                return
    except ApiError as e:
        _api_fail(e)
    except KeyboardInterrupt:
        return


def _stats_sample(client: Client, refs: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per container of the tasks (named, else every task not stopped)."""
    from agent import stats

    if refs:
        tasks = [client.call("GET", f"/v1/tasks/{ref}") for ref in refs]
    else:
        tasks = [t for t in client.call("GET", "/v1/tasks") if t["lastStatus"] == "RUNNING"]
    rows = []
    for t in tasks:
        try:
            by_id = client.call("GET", f"/v1/tasks/{t['id']}/stats")
        except ApiError as e:
            if refs or e.status != 404:
                raise
            continue  # removed since the listing
        for c in t["containers"]:
            s = by_id.get(c["containerdId"])
            row: dict[str, Any] = {"task": t["id"], "container": c["name"], "running": bool(s)}
            if s:
                used, limit = stats.memory_usage(s)
                (rx, tx), (rd, wr) = stats.net_io(s), stats.block_io(s)
                row.update(
                    cpuPercent=round(stats.cpu_percent(s), 2),
                    memoryUsage=used,
                    memoryLimit=limit,
                    memoryPercent=round(used / limit * 100, 2) if limit else 0.0,
                    netRx=rx,
                    netTx=tx,
                    blockRead=rd,
                    blockWrite=wr,
                    pids=s["pids_stats"].get("current", 0),
                    stats=s,
                )
            rows.append(row)
    return rows


def _print_stats(
    rows: list[dict[str, Any]], *, as_json: bool, no_stream: bool, clear: bool
) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2) if no_stream else json.dumps(rows))
        return
    lines = [_host_summary(rows, _host_memory(), os.cpu_count() or 1), "", *_stats_table(rows)]
    if no_stream or not sys.stdout.isatty():
        click.echo("\n".join(lines) + ("" if no_stream else "\n"))
        return
    # Redraw in place, as docker stats does: home, table, clear the rest of the screen.
    sys.stdout.write("\x1b[H" + ("" if clear else "\x1b[2J"))
    sys.stdout.write("\n".join(line + "\x1b[K" for line in lines) + "\n\x1b[J")
    sys.stdout.flush()


def _host_memory() -> tuple[int, int]:
    """(total, in use) bytes of the host's memory, as `free` counts them (/proc/meminfo)."""
    info: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            info[key] = int(value.split()[0]) * 1024
    total = info.get("MemTotal", 0)
    return total, total - info.get("MemAvailable", total)


def _host_summary(rows: list[dict[str, Any]], memory: tuple[int, int], cores: int) -> str:
    """One line on the host, as a Container Insights cluster view would put it: tasks and
    containers running, what they use of its CPUs and memory, and the memory the host uses."""
    live = [r for r in rows if r["running"]]
    tasks = len({r["task"] for r in rows})
    cpu = sum(r["cpuPercent"] for r in live) / cores
    mem = sum(r["memoryUsage"] for r in live)
    total, used = memory
    return (
        f"host: {tasks} task(s), {len(live)} of {len(rows)} container(s) running; "
        f"CPU {cpu:.2f}% of {cores} core(s); memory {_binary(mem)} in containers, "
        f"host {_binary(used)} / {_binary(total)} in use"
    )


def _stats_table(rows: list[dict[str, Any]]) -> list[str]:
    head = ("TASK", "CONTAINER", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O")
    table = [(*head, "PIDS")]
    for r in rows:
        if not r["running"]:
            table.append((r["task"][:12], r["container"], "--", "-- / --", "--", "--", "--", "--"))
            continue
        table.append(
            (
                r["task"][:12],
                r["container"],
                f"{r['cpuPercent']:.2f}%",
                f"{_binary(r['memoryUsage'])} / {_binary(r['memoryLimit'])}",
                f"{r['memoryPercent']:.2f}%",
                f"{_decimal(r['netRx'])} / {_decimal(r['netTx'])}",
                f"{_decimal(r['blockRead'])} / {_decimal(r['blockWrite'])}",
                str(r["pids"]),
            )
        )
    cells = [tuple(cli_fast._cell(v) for v in r) for r in table]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return ["   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]


def _binary(n: float) -> str:
    """Bytes in binary units, 4 significant digits (docker's MEM USAGE: 47.5MiB)."""
    return _units(n, 1024.0, ("B", "KiB", "MiB", "GiB", "TiB", "PiB"))


def _decimal(n: float) -> str:
    """Bytes in decimal units, 4 significant digits (docker's NET I/O, BLOCK I/O: 1.05MB)."""
    return _units(n, 1000.0, ("B", "kB", "MB", "GB", "TB", "PB"))


def _units(n: float, base: float, names: tuple[str, ...]) -> str:
    i = 0
    while n >= base and i < len(names) - 1:
        n /= base
        i += 1
    return f"{n:.4g}{names[i]}"


@main.command()
@click.argument("task", shell_complete=lambda c, p, i: _complete_tasks(c, p, i))
@click.pass_context
def wait(ctx: click.Context, task: str) -> None:
    """Wait for a task to stop; print its exit code."""
    try:
        t = _client(ctx).call("GET", f"/v1/tasks/{task}/wait", timeout=None)
    except ApiError as e:
        _api_fail(e)
    click.echo("" if t["exitCode"] is None else t["exitCode"])


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
def validate(file: str) -> None:
    """Check a task definition without running it (no agent needed)."""
    cli_fast.validate(file)


@main.command()
@click.option("--dry-run", is_flag=True, help="Only show what would be removed.")
@click.option(
    "--stop-unknown",
    is_flag=True,
    help="Also stop running tasks the state store does not know, and remove what they hold.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def gc(ctx: click.Context, dry_run: bool, stop_unknown: bool, as_json: bool) -> None:
    """Remove what nstask left on the host that no task accounts for (netns, veths, IP
    allocations, CNI cache entries, containers, snapshots, leases, task dirs, cgroups, logs).

    A task still running in the agent's containerd namespace that the state store does not
    know (a store moved aside, say) is shown and kept, with everything it holds, unless
    --stop-unknown is given."""
    try:
        body = {"dryRun": dry_run, "stopUnknown": stop_unknown}
        report = _client(ctx).call("POST", "/v1/gc", body, timeout=None)
    except ApiError as e:
        _api_fail(e)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    if not report:
        click.echo("nothing to collect")
        return
    for item in report:
        detail = f" ({item['detail']})" if item["detail"] else ""
        click.echo(f"{item['status']}: {item['kind']} {item['name']}{detail}")
    if any(item["status"].startswith("failed") for item in report):
        sys.exit(1)


# -- secrets ---------------------------------------------------------------------------------
@main.group()
def secret() -> None:
    """The local secret store that `secrets[].valueFrom` resolves from (root-only).

    An ARN maps to a local name: arn:aws:secretsmanager:...:secret:NAME-AbCdEf -> NAME,
    arn:aws:ssm:...:parameter/PATH -> PATH; a plain name is used as it is."""


@secret.command("put")
@click.argument("name")
@click.option("--from-file", type=click.File("r"), help="Read the value from a file.")
@click.pass_context
def secret_put(ctx: click.Context, name: str, from_file: Any) -> None:
    """Store a secret; the value comes from stdin (or a hidden prompt, or --from-file)."""
    if from_file is not None:
        value = from_file.read()
    elif sys.stdin.isatty():
        value = click.prompt(f"value of {name}", hide_input=True)
    else:
        value = sys.stdin.read()
    value = value.removesuffix("\n")
    try:
        _client(ctx).call("PUT", f"/v1/secrets/{name}", {"value": value})
    except ApiError as e:
        _api_fail(e)
    click.echo(name)


@secret.command("ls")
@click.pass_context
def secret_ls(ctx: click.Context) -> None:
    """List secret names (never values)."""
    try:
        for name in _client(ctx).call("GET", "/v1/secrets"):
            click.echo(name)
    except ApiError as e:
        _api_fail(e)


@secret.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def secret_rm(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Remove secrets."""
    client = _client(ctx)
    for name in names:
        try:
            client.call("DELETE", f"/v1/secrets/{name}")
        except ApiError as e:
            _api_fail(e)
        click.echo(name)


# -- task-role credentials -------------------------------------------------------------------
@main.group()
def credentials() -> None:
    """Task-role credentials the metadata endpoint serves (root-only local store).

    A task whose definition has a taskRoleArn gets AWS_CONTAINER_CREDENTIALS_RELATIVE_URI; the
    SDKs in it then receive the keys stored here for that role."""


@credentials.command("put")
@click.argument("role_arn")
@click.option("--file", "from_file", type=click.File("r"), help="Read the keys from a file.")
@click.option("--profile", help="Take the keys of a profile of the shared credentials file.")
@click.pass_context
def credentials_put(ctx: click.Context, role_arn: str, from_file: Any, profile: str | None) -> None:
    """Store keys for ROLE_ARN: JSON ({AccessKeyId, SecretAccessKey, Token, Expiration} or
    `aws sts assume-role` output) or key=value lines, from stdin, --file, or --profile NAME
    (~/.aws/credentials, or AWS_SHARED_CREDENTIALS_FILE)."""
    if from_file is not None and profile:
        fail("give --file or --profile, not both", 2)
    if profile:
        from agent.credentials import read_profile
        from agent.errors import InvalidInput

        try:
            text, source = json.dumps(read_profile(profile)), f"profile {profile}"
        except InvalidInput as e:
            fail(e.message, 2)
    elif from_file is not None:
        text, source = from_file.read(), from_file.name
    else:
        text, source = sys.stdin.read(), "stdin"
    try:
        _client(ctx).call("PUT", f"/v1/credentials/{role_arn}", {"text": text, "source": source})
    except ApiError as e:
        _api_fail(e)
    click.echo(role_arn)


@credentials.command("ls")
@click.pass_context
def credentials_ls(ctx: click.Context) -> None:
    """List roles with stored keys and when they expire (never the keys)."""
    try:
        for item in _client(ctx).call("GET", "/v1/credentials"):
            click.echo(f"{item['roleArn']}\t{item.get('expiration') or '-'}")
    except ApiError as e:
        _api_fail(e)


@credentials.command("rm")
@click.argument("role_arns", nargs=-1, required=True)
@click.pass_context
def credentials_rm(ctx: click.Context, role_arns: tuple[str, ...]) -> None:
    """Remove the stored keys of roles."""
    client = _client(ctx)
    for role in role_arns:
        try:
            client.call("DELETE", f"/v1/credentials/{role}")
        except ApiError as e:
            _api_fail(e)
        click.echo(role)


# -- images ----------------------------------------------------------------------------------
@main.group()
def image() -> None:
    """Make, load and list images."""


@image.command("pack")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.argument("ref")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    help="Archive to write (default: <name>.oci.tar in the current directory).",
)
@click.option("--cmd", "cmd", help="The image's CMD, as a JSON list or a shell string.")
@click.option("--entrypoint", help="The image's ENTRYPOINT, as a JSON list.")
@click.option("--env", "-e", "env", multiple=True, metavar="KEY=VALUE")
@click.option("--workdir")
@click.option("--stop-signal")
def image_pack(
    directory: str,
    ref: str,
    output: str | None,
    cmd: str | None,
    entrypoint: str | None,
    env: tuple[str, ...],
    workdir: str | None,
    stop_signal: str | None,
) -> None:
    """Make an OCI image archive from a root filesystem DIRECTORY (no agent needed)."""
    from agent import images

    out = output or (ref.rsplit("/", 1)[-1].replace(":", "_") + ".oci.tar")
    digest = images.pack(
        directory,
        ref,
        out,
        cmd=_json_list(cmd, "--cmd"),
        entrypoint=_json_list(entrypoint, "--entrypoint"),
        env=list(env) or None,
        workdir=workdir,
        stop_signal=stop_signal,
    )
    click.echo(f"{out} {ref} {digest}")


def _json_list(value: str | None, flag: str) -> list[str] | None:
    if value is None:
        return None
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            fail(f"{flag}: not a JSON list: {value}", 2)
        if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
            fail(f"{flag}: must be a JSON list of strings", 2)
        return parsed
    return ["/bin/sh", "-c", value]


@image.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.pass_context
def image_import(ctx: click.Context, file: str) -> None:
    """Load an OCI archive into containerd and unpack it."""
    try:
        refs = _client(ctx).call(
            "POST", "/v1/images/import", {"path": os.path.abspath(file)}, timeout=None
        )
    except ApiError as e:
        _api_fail(e)
    for r in refs:
        click.echo(f"{r['name']} {r['digest']}")


@image.command("pull")
@click.argument("ref")
@click.option("--user", "-u", help="USER[:PASSWORD] for the registry (else config.json).")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@click.pass_context
def image_pull(ctx: click.Context, ref: str, user: str | None, quiet: bool) -> None:
    """Pull an image from an OCI registry into containerd and unpack it.

    On a terminal, shows each layer's progress as docker pull does."""
    body: dict[str, Any] = {"ref": ref}
    if user:
        name, sep, password = user.partition(":")
        if not sep:
            password = click.prompt(f"password for {name}", hide_input=True)
        body |= {"username": name, "password": password}
    show = not quiet and sys.stderr.isatty()
    body["progress"] = show
    try:
        resp = _client(ctx).request("POST", "/v1/images/pull", body, timeout=None)
        image = _render_pull(resp) if show else json.loads(resp.read())
    except ApiError as e:
        _api_fail(e)
    click.echo(f"{image['name']} {image['digest']} ({_size(image['transferred'])} transferred)")


def _render_pull(resp: Response) -> dict[str, Any]:
    """Redraw one line per layer on stderr while the agent reports progress."""
    drawn = 0
    while line := resp.readline():
        item = json.loads(line)
        if "error" in item:
            fail(item["error"].get("message", "pull failed"))
        if "image" in item:
            return dict(item["image"])
        layers = item["progress"]
        out = [
            f"{digest[7:19]}: {_size(done)} / {_size(total)}" + ("  done" if done >= total else "")
            for digest, (done, total) in layers.items()
        ]
        sys.stderr.write("\x1b[F" * drawn + "".join(f"\x1b[K{x}\n" for x in out))
        sys.stderr.flush()
        drawn = len(out)
    fail("the agent ended the pull without an answer")


@image.command("rm")
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def image_rm(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Remove images (refused while a task that is not stopped uses one)."""
    from urllib.parse import quote

    for ref in refs:
        try:
            _client(ctx).call("DELETE", f"/v1/images/{quote(ref, safe='/:@')}")
        except ApiError as e:
            _api_fail(e)
        click.echo(ref)


@image.command("prune")
@click.pass_context
def image_prune(ctx: click.Context) -> None:
    """Remove every image that no task (not stopped) uses."""
    try:
        for ref in _client(ctx).call("POST", "/v1/images/prune", {}, timeout=None):
            click.echo(ref)
    except ApiError as e:
        _api_fail(e)


@image.command("inspect")
@click.argument("ref")
@click.pass_context
def image_inspect(ctx: click.Context, ref: str) -> None:
    """Show an image's config (entrypoint, cmd, env, ...), digest, size and chain id."""
    from urllib.parse import quote

    try:
        info = _client(ctx).call("GET", f"/v1/images/inspect/{quote(ref, safe='/:@')}")
    except ApiError as e:
        _api_fail(e)
    click.echo(json.dumps(info, indent=2))


@image.command("ls")
@click.option("--quiet", "-q", is_flag=True)
@click.pass_context
def image_ls(ctx: click.Context, quiet: bool) -> None:
    """List images in the agent's containerd namespace."""
    try:
        imgs = _client(ctx).call("GET", "/v1/images")
    except ApiError as e:
        _api_fail(e)
    if quiet:
        for i in imgs:
            click.echo(i["ref"])
        return
    rows = [("REF", "DIGEST", "SIZE", "CREATED")]
    for i in imgs:
        rows.append(
            (i["ref"], i["digest"][:19], _size(i.get("size") or 0), (i.get("created") or "")[:19])
        )
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"


# -- agent status / stop, version, info (issue 14) -----------------------------------------------
def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d" if d else "", f"{h}h" if h else "", f"{m}m" if m else "", f"{s}s"]
    return "".join(p for p in parts if p) if (d or h or m) else f"{s}s"


def _counts(tasks: dict[str, int]) -> str:
    return ", ".join(f"{n} {k.lower()}" for k, n in sorted(tasks.items())) or "none"


@agent.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def agent_status(ctx: click.Context, as_json: bool) -> None:
    """Show the agent on --socket: pid, uptime, settings, containerd, tasks (exit 1: none)."""
    try:
        st = _client(ctx).call("GET", "/v1/agent", timeout=15)
    except ApiError as e:
        _api_fail(e)
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    ctr = st["containerd"]
    reach = (
        f"reachable, {ctr.get('version', '?')}"
        if ctr["reachable"]
        else f"NOT reachable ({ctr.get('error', '')})"
    )
    rows = [
        ("Agent", f"running, pid {st['pid']}, up {_duration(st['uptime'])}"),
        ("Version", st["nstask"]),
        ("Socket", st["socket"]),
        ("State dir", st["stateDir"]),
        ("Run dir", st["runDir"]),
        ("Namespace", st["namespace"]),
        ("Network", f"bridge {st['bridge']}, subnet {st['subnet']}"),
        ("containerd", f"{ctr['address']}: {reach}"),
        ("Tasks", _counts(st["tasks"])),
    ]
    for k, v in rows:
        click.echo(f"{k + ':':<12} {v}")


def _gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie not yet reaped by its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


@agent.command("stop")
@click.option(
    "--stop-tasks", is_flag=True, help="Stop every running task first (default: leave them)."
)
@click.option(
    "--timeout", "-t", type=float, default=30.0, show_default=True, help="Seconds to wait."
)
@click.pass_context
def agent_stop(ctx: click.Context, stop_tasks: bool, timeout: float) -> None:
    """Stop the agent on --socket (SIGTERM to its pid) and wait until it has exited.

    Its tasks keep running (the next agent re-attaches to them) unless --stop-tasks."""
    import signal
    import time

    client = _client(ctx)
    try:
        st = client.call("GET", "/v1/agent", timeout=15)
        running = client.call("GET", "/v1/tasks", timeout=15) if stop_tasks else []
    except ApiError as e:
        _api_fail(e)
    pid = int(st["pid"])
    for t in running:
        try:
            client.call("POST", f"/v1/tasks/{t['id']}/stop", {}, timeout=None)
            click.echo(f"stopped task {t['id']}")
        except ApiError as e:
            click.echo(f"nstask: task {t['id']}: {e.body.get('message', e)}", err=True)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        fail(f"the agent's pid {pid} is not on this host (another pid namespace?)")
    except PermissionError:
        fail(f"not allowed to signal the agent (pid {pid}): run as root")
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        if time.monotonic() > deadline:
            fail(f"sent SIGTERM to the agent (pid {pid}); it has not exited within {timeout:g} s")
        time.sleep(0.05)
    left = 0
    if not stop_tasks:
        left = int(st["tasks"].get("RUNNING", 0)) + int(st["tasks"].get("PENDING", 0))
    tail = f"; {left} task(s) left running (the next agent re-attaches to them)" if left else ""
    click.echo(f"agent stopped (pid {pid}, SIGTERM){tail}")


def _host_config(ctx: click.Context) -> Any:
    """The agent's settings as `nstask agent` would take them (file, environment)."""
    from pathlib import Path

    from agent.config import load_config
    from agent.errors import InvalidInput

    try:
        return load_config(socket=Path(ctx.obj["socket"]))
    except InvalidInput as e:
        fail(e.message, 2)


@main.command("version")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def version_command(ctx: click.Context, as_json: bool) -> None:
    """Show the versions of nstask, containerd (the server), runc, the CNI plugins, Python."""
    from agent import hostinfo
    from agent.api import VERSION

    v = hostinfo.versions(_host_config(ctx), VERSION)
    if as_json:
        click.echo(json.dumps(v, indent=2))
        return
    names = {"nstask": "nstask", "containerd": "containerd", "runc": "runc"}
    names |= {"cniPlugins": "CNI plugins", "python": "Python"}
    for key, label in names.items():
        value = v.get(key)
        if value is None:
            value = "not found" + (f" ({v['containerdError']})" if key == "containerd" else "")
        click.echo(f"{label + ':':<13} {value}")


@main.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--check", is_flag=True, help="Report each missing or wrong prerequisite and its fix (exit 1)."
)
@click.pass_context
def info_command(ctx: click.Context, as_json: bool, check: bool) -> None:
    """Show this host as nstask sees it (kernel, cgroups, containerd, CNI, iptables, tasks)."""
    from agent import hostinfo

    config = _host_config(ctx)
    running = _agent_facts(_client(ctx))
    if running is not None:  # the running agent's own settings, not this shell's
        config = _running_config(config, running.pop("settings"))
    facts = hostinfo.info(config)
    facts["agent"] = running
    problems = hostinfo.check(config, facts) if check else []
    if as_json:
        out = facts | ({"problems": [p.to_json() for p in problems]} if check else {})
        click.echo(json.dumps(out, indent=2))
    elif check:
        for p in problems:
            click.echo(f"MISSING  {p.what}\n         fix: {p.fix}")
        if not problems:
            click.echo("ok: every prerequisite is present")
    else:
        _print_info(facts)
    if problems:
        sys.exit(1)


def _agent_facts(client: Client) -> dict[str, Any] | None:
    """Tasks by status and images, from the agent when one answers."""
    try:
        st = client.open("GET", "/v1/agent", timeout=5)
        body = json.loads(st.read()) if st.status == 200 else None
        if body is None:
            return None
        imgs = client.open("GET", "/v1/images", timeout=10)
        images = json.loads(imgs.read()) if imgs.status == 200 else []
    except (OSError, ValueError):
        return None
    return {"pid": body["pid"], "tasks": body["tasks"], "images": len(images), "settings": body}


def _running_config(config: Any, st: dict[str, Any]) -> Any:
    from pathlib import Path

    conflist = st.get("conflistFile")
    return config.with_overrides(
        namespace=st.get("namespace"),
        bridge=st.get("bridge"),
        subnet=st.get("subnet"),
        state_dir=Path(st["stateDir"]) if st.get("stateDir") else None,
        containerd_address=st.get("containerd", {}).get("address"),
        snapshotter=st.get("snapshotter"),
        cni_path=tuple(st["cniPath"]) if st.get("cniPath") else None,
        chained_plugins=tuple(st["chainedPlugins"]) if "chainedPlugins" in st else None,
        conflist_file=Path(conflist) if conflist else None,
    )


def _print_info(f: dict[str, Any]) -> None:
    ctr = f["containerd"]
    ag = f["agent"]
    rows = [
        ("Kernel", f"{f['kernel']} ({f['os']})"),
        ("cgroup", f"v{f['cgroup']['version']}: {' '.join(f['cgroup']['controllers'])}"),
        (
            "containerd",
            f"{ctr['address']} namespace {ctr['namespace']}, "
            + (ctr["version"] or f"not answering ({ctr.get('error', '')})"),
        ),
        ("Snapshotter", f["snapshotter"]),
        ("Runtime", f"{f['runtime']} (runc {f['runc'] or 'not found'})"),
        ("CNI path", ":".join(f["cni"]["path"])),
        ("CNI plugins", " ".join(f["cni"]["plugins"]) or "none found"),
        ("iptables", f["iptables"]["version"] or "not found"),
        ("IP forward", {True: "on", False: "off", None: "unknown"}[f["ipForwarding"]]),
        ("Bridge", f"{f['bridge']} subnet {f['subnet']}"),
        ("State dir", f["stateDir"]),
        ("Agent", f"pid {ag['pid']} on {f['socket']}" if ag else f"not running ({f['socket']})"),
    ]
    if ag:
        rows += [("Tasks", _counts(ag["tasks"])), ("Images", str(ag["images"]))]
    for k, v in rows:
        click.echo(f"{k + ':':<13} {v}")


# -- shell completion (click's; scripts from `_NSTASK_COMPLETE={bash,zsh,fish}_source nstask`) ----
def _completion_client(ctx: click.Context) -> Client:
    root = ctx.find_root()
    sock = (root.params.get("socket_path") if root.params else None) or os.environ.get(
        "NSTASK_SOCKET", DEFAULT_SOCKET
    )
    return Client(str(sock))


def _complete_tasks(ctx: click.Context, _: click.Parameter, incomplete: str) -> list[Any]:
    """Task ids (the family as help) from the agent; nothing when no agent answers."""
    from click.shell_completion import CompletionItem

    try:
        resp = _completion_client(ctx).open("GET", "/v1/tasks?all=1", timeout=2)
        tasks = json.loads(resp.read()) if resp.status == 200 else []
    except (OSError, ValueError):
        return []
    return [
        CompletionItem(str(t["id"]), help=str(t.get("family", "")))
        for t in tasks
        if str(t["id"]).startswith(incomplete)
    ]


def _complete_containers(ctx: click.Context, _: click.Parameter, incomplete: str) -> list[Any]:
    """The container names of the task given before (TASK), from the agent."""
    from click.shell_completion import CompletionItem

    task = ctx.params.get("task")
    if not task:
        return []
    try:
        resp = _completion_client(ctx).open("GET", f"/v1/tasks/{task}", timeout=2)
        t = json.loads(resp.read()) if resp.status == 200 else {}
    except (OSError, ValueError):
        return []
    names = [str(c["name"]) for c in t.get("containers", [])]
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


if __name__ == "__main__":
    main()
