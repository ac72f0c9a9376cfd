"""nstask's entry point: the agent's API client and the fast paths of the hottest commands.

`nstask ps`, `nstask validate FILE`, `nstask run FILE` and `nstask --help` are run without
importing click (~30 ms of start-up, more than a whole `ctr containers ls`); every other
command, and any argument these fast paths do not take exactly as click would, goes to the
click commands in cli.py. The options stay defined once, by the click decorators in cli.py:
what the fast paths parse with, and the help they print, are generated from click's own
objects the first time click runs (a JSON cache in this module's __pycache__, keyed on the
stat of cli.py and this file; `scripts/bootstrap.sh` warms it), and both paths call the same
functions (`ps`, `validate`, `run` below). Without a current cache, everything goes to click.

The client speaks HTTP/1.1 to the agent's unix socket over `_socket` (http.client costs
~20 ms of imports through the email package): one request per connection, Content-Length,
chunked or until-close bodies, line-by-line reading for the NDJSON streams (logs -f, exec,
image pull progress), and a timeout per request.

Imports: os and sys at start; agent modules only for the command at hand. JSON goes through
the json package's own C scanner and encoder (`_json`, `loads`/`dumps` below): importing the
package costs ~8 ms of CPU at every start, nearly all of it `re` for json.decoder's patterns,
as much as the rest of a `nstask ps`.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs ~3 ms of start-up; mypy treats this name as True
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Any, NoReturn

    import click

DEFAULT_SOCKET = "/run/nstask/nstask.sock"
START_HINT = "start it with `nstask agent --detach` (or `make demo`)"
PROG = "nstask"
FAST_COMMANDS = ("ps", "validate", "run")
CACHE_VERSION = 2
_READ = 65536


# -- JSON ------------------------------------------------------------------------------------
class _ScanContext:
    """What `_json.make_scanner` reads off a json.JSONDecoder: json.loads' defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


_scanner: Any = None
_WS = " \t\n\r"


def loads(data: str | bytes) -> Any:
    """json.loads(data), same result and same errors: the document is scanned by `_json`;
    whatever that path does not take as it is (a BOM, UTF-16/32, an error to report, no
    `_json`) is handed to json.loads itself."""
    global _scanner
    try:
        if _scanner is None:
            import _json

            _scanner = _json.make_scanner(_ScanContext)  # type: ignore[arg-type]
        text = data if isinstance(data, str) else data.decode("utf-8")
        if text[:1] == "\ufeff" or "\x00" in text[:4]:
            raise ValueError("not plain UTF-8")
        start = len(text) - len(text.lstrip(_WS))
        obj, end = _scanner(text, start)
        if text[end:].strip(_WS):
            raise ValueError("extra data")
        return obj
    except RecursionError:
        raise
    except (ImportError, ValueError, StopIteration, AttributeError, SystemError):
        # SystemError: on some malformed documents the scanner looks JSONDecodeError up in
        # sys.modules only, and before `json` is imported it fails with this instead.
        import json

        return json.loads(data)


def _unserializable(obj: object) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def dumps(obj: Any) -> str:
    """json.dumps(obj) (its default separators, ensure_ascii), by `_json`'s encoder: a new
    one per call, as json.dumps makes, so a failed call leaves no circular-reference marks."""
    try:
        import _json

        encode = _json.make_encoder(
            {},
            _unserializable,
            _json.encode_basestring_ascii,
            None,
            ": ",
            ", ",
            False,
            False,
            True,
        )
    except (ImportError, TypeError, AttributeError):  # no _json, or another signature
        import json

        return json.dumps(obj)
    return "".join(encode(obj, 0))


# -- the API client --------------------------------------------------------------------------
class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message", f"HTTP {status}"))
        self.status = status
        self.body = body


class ProtocolError(OSError):
    """The agent's answer is not the HTTP this client speaks."""


class Response:
    """One HTTP/1.1 response read from a socket: status, headers, then the body by read()
    or readline() (both honour Content-Length, chunked encoding, or read until close)."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = bytearray()
        self._rest = b""  # read past the last line readline() returned
        self._eof = False
        line = self._line_raw()
        version, _, rest = line.partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or not code.isdigit():
            raise ProtocolError(f"not an HTTP response: {bytes(line[:80])!r}")
        self.status = int(code)
        self.headers: dict[str, str] = {}
        while header := self._line_raw().rstrip(b"\r\n"):
            name, _, value = header.decode("latin-1").partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        length = self.headers.get("content-length")
        self._left: int | None = int(length) if length and not self._chunked else None
        if self._chunked:
            self._left = 0  # bytes left in the current chunk; the next size line follows
        self._done = self._left == 0 and not self._chunked

    # Raw socket reading, below the body's framing.
    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._sock.recv(_READ)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def _line_raw(self) -> bytes:
        while (end := self._buf.find(b"\n")) < 0:
            if not self._fill():
                end = len(self._buf) - 1
                break
        line = bytes(self._buf[: end + 1])
        del self._buf[: end + 1]
        return line

    def _take(self, limit: int) -> bytes:
        if not self._buf:
            self._fill()
        data = bytes(self._buf[:limit])
        del self._buf[:limit]
        return data

    # The body, chunk by chunk.
    def _chunks(self) -> Iterator[bytes]:
        while not self._done:
            if self._chunked and self._left == 0:
                size_line = self._line_raw()
                if not size_line:
                    raise ProtocolError("the response ended inside its chunked body")
                try:
                    self._left = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {size_line[:20]!r}") from None
                if self._left == 0:
                    while self._line_raw().rstrip(b"\r\n"):  # trailers, then the last CRLF
                        pass
                    self._done = True
                    return
            limit = _READ if self._left is None else self._left
            data = self._take(limit)
            if not data:
                if self._left is None:  # until close
                    self._done = True
                    return
                raise ProtocolError("the response ended before its body did")
            if self._left is not None:
                self._left -= len(data)
                if self._left == 0:
                    if self._chunked:
                        self._line_raw()  # the CRLF after the chunk
                    else:
                        self._done = True
            yield data

    def read(self) -> bytes:
        out = bytearray(self._pending())
        try:
            for data in self._chunks():
                out += data
        finally:
            self.close()
        return bytes(out)

    def readline(self) -> bytes:
        """The next line of the body with its newline; b"" at the end."""
        pending = self._pending()
        while (end := pending.find(b"\n")) < 0:
            try:
                data = next(self._chunks(), b"")
            except BaseException:
                self.close()
                raise
            if not data:
                self.close()
                return bytes(pending)
            pending += data
        self._rest = bytes(pending[end + 1 :])
        return bytes(pending[: end + 1])

    def _pending(self) -> bytearray:
        rest, self._rest = self._rest, b""
        return bytearray(rest)

    def close(self) -> None:
        self._sock.close()


class Client:
    """The agent's local API: HTTP+JSON on a unix socket, one connection per request."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    def open(
        self, method: str, path: str, data: bytes | None = None, *, timeout: float | None = 60
    ) -> Response:
        """Send one request and read the response's head; OSError when the agent is not
        there (or TimeoutError, a subclass, when it does not answer in time)."""
        import _socket

        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(self.socket_path)
            head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            if data is not None:
                head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            sock.sendall(head.encode() + b"\r\n" + (data or b""))
            return Response(sock)
        except BaseException:
            sock.close()
            raise

    def request(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = 60
    ) -> Response:
        """As open(), with the body as JSON and every failure a message (exit 1 or 2);
        a 4xx/5xx answer raises ApiError."""
        try:
            data = dumps(body).encode() if body is not None else None
        except RecursionError:
            fail("the request is nested too deeply to send", 2)
        if data is not None:
            from agent.errors import MAX_REQUEST_BYTES, RequestTooLarge

            if len(data) > MAX_REQUEST_BYTES:
                fail(RequestTooLarge("the request").message, 2)
        try:
            resp = self.open(method, path, data, timeout=timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            fail(
                f"the nstask agent is not running (nothing answers on {self.socket_path}); "
                f"{START_HINT}"
            )
        except PermissionError:
            fail(
                f"permission denied on {self.socket_path}: the agent's socket is root-only; "
                "run nstask as root"
            )
        except TimeoutError:
            fail(f"the agent did not answer on {self.socket_path} within {timeout:g} s")
        if resp.status >= 400:
            raw = resp.read()
            try:
                err = loads(raw)
            except ValueError:
                err = None
            if not isinstance(err, dict):
                err = {"message": raw.decode(errors="replace") or f"HTTP {resp.status}"}
            raise ApiError(resp.status, err)
        return resp

    def call(self, method: str, path: str, body: Any = None, *, timeout: float | None = 60) -> Any:
        resp = self.request(method, path, body, timeout=timeout)
        try:
            raw = resp.read()
        except TimeoutError:
            fail(f"the agent did not answer on {self.socket_path} within {timeout:g} s")
        return loads(raw) if raw else None


def fail(message: str, code: int = 1) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.write(f"nstask: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def api_fail(e: ApiError) -> NoReturn:
    fail(e.body.get("message", str(e)), 2 if e.status in (400, 413) else 1)


def _print(lines: list[str]) -> None:
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


# -- the commands with a fast path (cli.py's click commands call these too) -------------------
def ps(client: Client, all_tasks: bool, as_json: bool, quiet: bool) -> None:
    """`nstask ps`: list tasks."""
    try:
        tasks = client.call("GET", "/v1/tasks" + ("?all=1" if all_tasks else ""))
    except ApiError as e:
        api_fail(e)
    if as_json:
        import json

        _print([json.dumps(tasks, indent=2)])
        return
    if quiet:
        _print([str(t["id"]) for t in tasks])
        return
    _print(ps_table(tasks))


def ps_table(tasks: list[dict[str, Any]]) -> list[str]:
    import time

    rows = [("TASK ID", "FAMILY", "STATUS", "IP", "PORTS", "CONTAINERS", "EXIT", "AGE")]
    for t in tasks:
        rows.append(
            (
                str(t["id"])[:12],
                str(t["family"]),
                str(t["lastStatus"]) + _task_health(t),
                str(t["ip"] or "-"),
                ",".join(
                    f"{p['hostPort']}->{p['containerPort']}/{p['protocol']}"
                    for p in t.get("ports", [])
                )
                or "-",
                ",".join(_container_cell(c) for c in t["containers"]),
                "" if t["exitCode"] is None else str(t["exitCode"]),
                _age(time.time() - t["createdAt"]),
            )
        )
    cells = [tuple(_cell(v) for v in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]


def _cell(value: object) -> str:
    """A table cell that cannot break the table: newlines, terminal escapes and other
    non-printable characters (a family from an old store, issue 9) are shown escaped."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _task_health(t: dict[str, Any]) -> str:
    """ECS's task health: UNHEALTHY if an essential container is, HEALTHY if all essential
    containers with checks are, else nothing to say."""
    checked = [c for c in t["containers"] if c["essential"] and c.get("health")]
    if not checked or t["lastStatus"] != "RUNNING":
        return ""
    if any(c["health"] == "UNHEALTHY" for c in checked):
        return " (unhealthy)"
    if all(c["health"] == "HEALTHY" for c in checked):
        return " (healthy)"
    return " (health: starting)"


def _container_cell(c: dict[str, Any]) -> str:
    """name, with its exit code once it has stopped in a task that still runs."""
    if c["lastStatus"] == "STOPPED" and c["exitCode"] is not None:
        return f"{c['name']}({c['exitCode']})"
    return str(c["name"])


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    return f"{int(seconds // 3600)}h"


def validate(file: str) -> None:
    """`nstask validate FILE`: check a task definition without the agent."""
    from agent.errors import TaskDefinitionError
    from agent.taskdef import parse_task_definition_text

    text = read_file(file)
    try:
        td = parse_task_definition_text(text, source=file)
    except TaskDefinitionError as e:
        fail(e.message.replace("\n", "\nnstask: "), 2)
    except RecursionError:
        fail(f"{file}: is nested too deeply to be a task definition", 2)
    for w in td.warnings:
        sys.stderr.write(f"warning: {file}: {w}\n")
    _print(
        [
            f"{file}: ok (family {td.family}, {len(td.containers)} container(s), "
            f"network mode {td.network_mode})"
        ]
    )


def read_definition(path: str) -> Any:
    """Read the file; JSON errors are the agent's to report (one validator), unless the file
    is not even readable."""
    text = read_file(path)
    try:
        return loads(text)
    except RecursionError:
        fail(f"{path}: is nested too deeply to be a task definition", 2)
    except (ValueError, UnicodeDecodeError) as e:
        fail(f"{path}: is not valid JSON: {e}", 2)


def run(client: Client, file: str, *, remove: bool, detach: bool, env: Iterable[str]) -> None:
    """`nstask run FILE`: submit, then (unless --detach) stream the output until the task
    stops and exit with its essential container's exit code."""
    if remove and detach:
        fail("--rm and --detach cannot be used together", 2)
    overrides: dict[str, str] = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--env {item!r}: expected KEY=VALUE", 2)
        overrides[key] = value
    definition = read_definition(file)
    try:
        task = client.call(
            "POST",
            "/v1/tasks",
            {"definition": definition, "source": file, "environment": overrides},
        )
    except ApiError as e:
        api_fail(e)
    if detach:
        _print([str(task["id"])])
        return
    sys.exit(attach(client, task["id"], remove))


def attach(client: Client, task_id: str, remove: bool) -> int:
    """Stream the task's output until it stops; Ctrl-C stops the task."""
    try:
        try:
            print_logs(client, task_id, None, follow=True, tail=None, timestamps=False)
        except KeyboardInterrupt:
            sys.stderr.write(f"nstask: stopping task {task_id}\n")
            sys.stderr.flush()
            client.call("POST", f"/v1/tasks/{task_id}/stop", {}, timeout=None)
        task = client.call("GET", f"/v1/tasks/{task_id}/wait", timeout=None)
        code = task.get("exitCode")
        if code is None:
            sys.stderr.write(f"nstask: task {task_id} did not run: {task.get('stopReason')}\n")
            sys.stderr.flush()
            code = 125
        if remove:
            client.call("DELETE", f"/v1/tasks/{task_id}")
        return int(code)
    except ApiError as e:
        api_fail(e)


def print_logs(
    client: Client,
    task_id: str,
    container: str | None,
    *,
    follow: bool,
    tail: int | None,
    timestamps: bool,
    since: float | None = None,
) -> None:
    """Print a task's log lines (NDJSON from the agent) to stdout/stderr as they came."""
    query = {"follow": "1" if follow else "0"}
    if since is not None:
        query["since"] = repr(since)
    if container:
        query["container"] = container
    if tail is not None:
        query["tail"] = str(tail)
    resp = client.request("GET", f"/v1/tasks/{task_id}/logs?{_query(query)}", timeout=None)
    out, err = sys.stdout.buffer, sys.stderr.buffer
    while line := resp.readline():
        entry = loads(line)
        text = entry["log"]
        if timestamps:
            text = f"{entry['time']} {text}"
        stream = err if entry["stream"] == "stderr" else out
        stream.write(text.encode("utf-8", "surrogateescape"))
        stream.flush()


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _query(values: dict[str, str]) -> str:
    """A URL query string (what urllib.parse.urlencode makes of str values, without its
    12 ms of imports): every byte but the unreserved ones percent-encoded."""
    return "&".join(f"{_pct(k)}={_pct(v)}" for k, v in values.items())


def _pct(text: str) -> str:
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in text.encode())


def read_file(path: str) -> bytes:
    """A task definition file, refused unread when it is over the API's limit."""
    from agent.errors import MAX_REQUEST_BYTES, RequestTooLarge

    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_REQUEST_BYTES:
                fail(RequestTooLarge(path).message, 2)
            text = f.read(MAX_REQUEST_BYTES + 1)
    except OSError as e:
        fail(f"{path}: cannot read task definition: {e.strerror}", 2)
    if len(text) > MAX_REQUEST_BYTES:  # a pipe or a file that grew
        fail(RequestTooLarge(path).message, 2)
    return text


# -- dispatch ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """The `nstask` console script."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        fast = _fast(args)
    except BrokenPipeError:  # `nstask ps | head -1`: quiet, as click is (exit 1)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:  # as click says it
        sys.stderr.write("\nAborted!\n")
        sys.exit(1)
    if not fast:
        import cli

        write_cache(cli.main)
        cli.main.main(args=args, prog_name=PROG)


def _cache_path() -> str:
    return os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "__pycache__", "nstask-cli.json"
    )


def _cache_key() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    parts = [str(CACHE_VERSION)]
    for name in ("cli.py", "cli_fast.py"):
        st = os.stat(os.path.join(here, name))
        parts.append(f"{st.st_mtime_ns}:{st.st_size}")
    return " ".join(parts)


def _help_width() -> int:
    """The width click formats help at (click.formatting: min(terminal columns, 80) - 2,
    at least 50), with the terminal columns found as shutil.get_terminal_size finds them."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
        columns = columns or 80
    return max(min(columns, 80) - 2, 50)


def _load_cache() -> dict[str, Any] | None:
    try:
        with open(_cache_path(), "rb") as f:
            cache = loads(f.read())
        key = _cache_key()
    except (OSError, ValueError):
        return None
    if not isinstance(cache, dict) or cache.get("key") != key:
        return None
    shapes = (("help", dict), ("group", list), ("commands", dict))
    return cache if all(isinstance(cache.get(k), t) for k, t in shapes) else None


def _fast(args: list[str]) -> bool:
    """Run `args` here if a fast path takes them exactly; False to hand them to click."""
    if (
        args
        and args[0] not in ("--help", "-h", *FAST_COMMANDS, "--socket")
        and not (args[0].startswith("--socket="))
    ):
        return False
    cache = _load_cache()
    if cache is None:
        return False
    if args in (["--help"], ["-h"]):
        text = cache["help"].get(str(_help_width()))
        if text is None:
            return False
        sys.stdout.write(text)
        sys.stdout.flush()
        return True
    group = _parse(cache["group"], args, stop_at_command=True)
    if group is None:
        return False
    values, rest = group
    if not rest or rest[0] not in cache["commands"]:
        return False
    command = _parse(cache["commands"][rest[0]], rest[1:], stop_at_command=False)
    if command is None:
        return False
    params, _ = command
    if rest[0] == "ps":
        ps(Client(values["socket_path"]), **params)
    elif rest[0] == "run":
        run(Client(values["socket_path"]), **params)
    else:
        validate(**params)
    return True


def _parse(
    spec: list[dict[str, Any]], args: list[str], *, stop_at_command: bool
) -> tuple[dict[str, Any], list[str]] | None:
    """Parse args as click would for the parameters in spec, or None for anything not plain
    (an unknown option, clustered short flags, `--`, a missing or extra argument, a path
    click would refuse): click then parses it and gives its own answer or error."""
    options = {opt: p for p in spec if p["kind"] != "argument" for opt in p["opts"]}
    positional = [p for p in spec if p["kind"] == "argument"]
    values: dict[str, Any] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if token.startswith("-") and token != "-":
            name, eq, attached = token.partition("=")
            p = options.get(name)
            if p is None:
                return None
            if p["kind"] == "flag":
                if eq:
                    return None
                values[p["name"]] = True
            else:
                if not eq:
                    i += 1
                    if i == len(args):
                        return None
                    attached = args[i]
                if p.get("multiple"):
                    values[p["name"]] = (*values.get(p["name"], ()), attached)
                else:
                    values[p["name"]] = attached
        elif stop_at_command:
            break
        else:
            if not positional:
                return None
            p = positional.pop(0)
            if not _plain_path(p, token):
                return None
            values[p["name"]] = token
        i += 1
    if positional:
        return None
    for p in spec:
        if p["name"] not in values:
            env = os.environ.get(p["envvar"]) if p.get("envvar") else None
            default = tuple(p["default"]) if p.get("multiple") else p["default"]
            values[p["name"]] = env or default
    return values, args[i:]


def _plain_path(p: dict[str, Any], value: str) -> bool:
    """True when click's Path type (exists=False) would take the value as it is."""
    if not p.get("path") or not os.path.exists(value):
        return True
    return (p["dir_okay"] or not os.path.isdir(value)) and os.access(value, os.R_OK)


def write_cache(group: click.Group) -> None:
    """Write what the fast paths need, generated from the click objects, when the cache is
    missing or stale or lacks help at this width. Best effort: a read-only install just
    stays on the slow path."""
    import json

    cache = _load_cache()
    width = str(_help_width())
    if cache is not None and width in cache["help"]:
        return
    if cache is None:
        cache = {"key": _cache_key(), "help": {}, "group": _spec(group), "commands": {}}
        for name in FAST_COMMANDS:
            command = group.commands.get(name)
            spec = _spec(command) if command is not None else None
            if spec is not None:
                cache["commands"][name] = spec
        if cache["group"] is None:
            return
    import click

    with click.Context(group, info_name=PROG, **group.context_settings) as ctx:
        cache["help"][width] = group.get_help(ctx) + "\n"
    path = _cache_path()
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(cache, f)
        os.replace(tmp, path)
    except OSError:
        import contextlib

        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _spec(command: click.Command) -> list[dict[str, Any]] | None:
    """The command's parameters for _parse, or None when one of them is more than _parse
    mirrors exactly (then that command always goes to click)."""
    import click

    # click >= 8.3: a default or flag value not given is this sentinel (no such module before)
    UNSET = getattr(sys.modules.get("click._utils"), "UNSET", None)

    spec: list[dict[str, Any]] = []
    for p in command.params:
        if p.callback is not None or not p.expose_value or p.nargs != 1:
            return None
        default = None if p.default is UNSET else p.default
        if p.multiple:
            # A value option given any number of times (`run -e A=1 -e B=2`): a tuple.
            if not isinstance(p, click.Option) or p.is_flag or p.envvar or default:
                return None
            default = ()
        item: dict[str, Any] = {"name": p.name, "default": default}
        if isinstance(p, click.Argument):
            if not p.required or p.envvar or default is not None:
                return None
            item["kind"] = "argument"
        elif isinstance(p, click.Option):
            if p.secondary_opts or p.count or p.prompt:
                return None
            item["opts"] = list(p.opts)
            if p.is_flag:
                if not p.is_bool_flag or p.flag_value not in (True, UNSET) or p.envvar:
                    return None
                if default not in (False, None):
                    return None
                item |= {"kind": "flag", "default": False}
            else:
                if p.envvar is not None and not isinstance(p.envvar, str):
                    return None
                if default is not None and not isinstance(default, str) and not p.multiple:
                    return None
                item |= {"kind": "value", "envvar": p.envvar, "multiple": p.multiple}
        else:
            return None
        if isinstance(p.type, click.Path):
            t = p.type
            if t.exists or not t.file_okay or t.writable or t.executable or not t.readable:
                return None
            if t.resolve_path or t.allow_dash or t.type is not None:
                return None
            item |= {"path": True, "dir_okay": t.dir_okay}
        elif type(p.type) is not (
            click.types.BoolParamType if item["kind"] == "flag" else click.types.StringParamType
        ):
            return None
        spec.append(item)
    return spec
