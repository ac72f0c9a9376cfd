"""cli_fast: the CLI's own HTTP client, its fast paths, and what the hot commands import.

The fast paths (`ps`, `validate`, `run`, `--help` without click) must parse exactly as click does
(or hand the arguments to click) and print click's own help; the hot paths must not import
click, http.client, grpc or the agent's containerd client, or every command gets slower.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest

import cli
import cli_fast

CODE_DIR = os.path.dirname(os.path.abspath(cli_fast.__file__))
SITE = sysconfig.get_path("purelib")
EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "hello.json")
HEAVY = ("click", "http.client", "email", "grpc", "agent.containerd", "aiohttp", "structlog")


# -- a fake agent: a unix socket server answering with canned bytes --------------------------
Handler = Callable[[socket.socket, bytes], None]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[[Handler], str]]:
    """server(handler) -> socket path; handler(conn, request bytes) writes the answer."""
    sockets: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def start(handler: Handler) -> str:
        path = str(tmp_path / f"agent{len(sockets)}.sock")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(8)
        sockets.append(srv)

        def serve() -> None:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                with conn:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        data = conn.recv(65536)
                        if not data:
                            break
                        request += data
                    head, _, body = request.partition(b"\r\n\r\n")
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            while len(body) < int(line.split(b":")[1]):
                                body += conn.recv(65536)
                    handler(conn, head + b"\r\n\r\n" + body)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return path

    yield start
    for srv in sockets:
        srv.close()


def _answer(status: str, body: bytes, *, headers: str = "") -> Handler:
    def handle(conn: socket.socket, _: bytes) -> None:
        conn.sendall(
            f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body
        )

    return handle


def _chunked(chunks: list[bytes]) -> bytes:
    return b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"


# -- the HTTP client -------------------------------------------------------------------------
def test_json_call_sends_the_body_and_reads_a_content_length_answer(
    server: Callable[[Handler], str],
) -> None:
    seen: list[bytes] = []

    def handle(conn: socket.socket, request: bytes) -> None:
        seen.append(request)
        _answer("200 OK", b'{"id": "t1"}', headers="Content-Type: application/json\r\n")(
            conn, request
        )

    path = server(handle)
    assert cli_fast.Client(path).call("POST", "/v1/tasks", {"a": [1]}) == {"id": "t1"}
    head, _, body = seen[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/tasks HTTP/1.1\r\n")
    assert json.loads(body) == {"a": [1]}


def test_chunked_ndjson_is_read_line_by_line_as_it_arrives(
    server: Callable[[Handler], str],
) -> None:
    """logs -f, exec and pull progress print each line when it comes, not at the end."""
    first_read = threading.Event()

    def handle(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.sendall(_chunked([b'{"n": 1}\n{"n"'])[:-5])  # a line and a half, no end
        assert first_read.wait(10), "the client waited for more than the first line"
        conn.sendall(b"3\r\n: 2\r\n2\r\n}\n\r\n0\r\n\r\n")  # the rest, the line cut twice

    resp = cli_fast.Client(server(handle)).request("GET", "/v1/tasks/t/logs", timeout=10)
    assert json.loads(resp.readline()) == {"n": 1}
    first_read.set()
    assert json.loads(resp.readline()) == {"n": 2}
    assert resp.readline() == b""


def test_body_until_close_and_last_line_without_newline(server: Callable[[Handler], str]) -> None:
    def handle(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\na\nb")

    resp = cli_fast.Client(server(handle)).request("GET", "/x")
    assert (resp.readline(), resp.readline(), resp.readline()) == (b"a\n", b"b", b"")


def test_error_answer_raises_api_error_with_the_agents_message(
    server: Callable[[Handler], str],
) -> None:
    path = server(_answer("400 Bad Request", b'{"error": "x", "message": "bad: family"}'))
    with pytest.raises(cli_fast.ApiError) as info:
        cli_fast.Client(path).call("POST", "/v1/tasks", {})
    assert (info.value.status, str(info.value)) == (400, "bad: family")
    path = server(_answer("502 Bad Gateway", b"<html>proxy</html>"))
    with pytest.raises(cli_fast.ApiError, match="proxy"):
        cli_fast.Client(path).call("GET", "/v1/tasks")


def test_no_agent_and_a_silent_agent_are_clear_errors(
    tmp_path: Path, server: Callable[[Handler], str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli_fast.Client(str(tmp_path / "none.sock")).call("GET", "/v1/tasks")
    assert info.value.code == 1
    assert "agent is not running" in capsys.readouterr().err

    def never_answer(conn: socket.socket, _: bytes) -> None:
        threading.Event().wait(2)

    silent = server(never_answer)
    with pytest.raises(SystemExit) as info:
        cli_fast.Client(silent).call("GET", "/v1/tasks", timeout=0.2)
    assert info.value.code == 1
    assert "did not answer" in capsys.readouterr().err


def test_a_body_cut_short_is_an_error_not_a_short_answer(
    server: Callable[[Handler], str],
) -> None:
    def handle(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n[1,")

    with pytest.raises(cli_fast.ProtocolError):
        cli_fast.Client(server(handle)).request("GET", "/v1/tasks").read()


# -- fast parsing is click's parsing ---------------------------------------------------------
@pytest.fixture
def cache() -> dict[str, object]:
    cli_fast.write_cache(cli.main)
    loaded = cli_fast._load_cache()
    assert loaded is not None, "the fast-path cache was not written"
    return loaded


@pytest.mark.parametrize(
    "args",
    [
        ["ps"],
        ["ps", "-a"],
        ["ps", "--all", "--json", "-q"],
        ["ps", "-q", "-q"],
        ["--socket", "/tmp/s.sock", "ps", "--all"],
        ["--socket=/tmp/s.sock", "ps"],
        ["ps", "-aq"],
        ["ps", "--json=1"],
        ["ps", "extra"],
        ["ps", "--", "-a"],
        ["validate", EXAMPLE],
        ["validate", "missing.json"],
        ["validate", "--", EXAMPLE],
        ["validate"],
        ["validate", EXAMPLE, EXAMPLE],
        ["validate", "/"],
        ["validate", "-"],
        ["run", EXAMPLE],
        ["run", "--rm", EXAMPLE],
        ["run", "-d", EXAMPLE],
        ["run", "-e", "A=1", "--env", "B=2", "--env=C=3=4", EXAMPLE],
        ["run", EXAMPLE, "-e", "A=1"],
        ["run", "-e", "-x", EXAMPLE],
        ["run", "-e"],
        ["run", "-eA=1", EXAMPLE],
        ["run", "-de", "A=1", EXAMPLE],
        ["run", "--rm=1", EXAMPLE],
        ["run"],
        ["run", EXAMPLE, EXAMPLE],
        ["run", "/"],
    ],
)
def test_fast_parse_agrees_with_click_or_hands_over(
    cache: dict[str, object], args: list[str]
) -> None:
    commands = cache["commands"]
    assert isinstance(commands, dict) and set(commands) == {"ps", "validate", "run"}
    fast = cli_fast._parse(cache["group"], args, stop_at_command=True)  # type: ignore[arg-type]
    if fast is not None:
        group_values, rest = fast
        fast = cli_fast._parse(commands[rest[0]], rest[1:], stop_at_command=False)
    try:
        ctx = cli.main.make_context("nstask", list(args))
        with ctx:
            rest = [*getattr(ctx, "_protected_args", ()), *ctx.args]  # click 8.2+ keeps both
            name, sub, sub_args = cli.main.resolve_command(ctx, rest)
            assert sub is not None
            sub_ctx = sub.make_context(name or "", sub_args, parent=ctx)
        clicks = (ctx.params, sub_ctx.params)
    except click.UsageError:
        clicks = None
    if fast is None:
        return  # click decides (and the fast path took nothing)
    assert clicks is not None, f"fast path took {args} which click refuses"
    assert (group_values, fast[0]) == clicks


def test_socket_comes_from_the_environment_as_click_takes_it(
    cache: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NSTASK_SOCKET", "/tmp/env.sock")
    parsed = cli_fast._parse(cache["group"], ["ps"], stop_at_command=True)  # type: ignore[arg-type]
    assert parsed is not None and parsed[0] == {"socket_path": "/tmp/env.sock"}
    monkeypatch.setenv("NSTASK_SOCKET", "")
    parsed = cli_fast._parse(cache["group"], ["ps"], stop_at_command=True)  # type: ignore[arg-type]
    assert parsed is not None and parsed[0] == {"socket_path": cli_fast.DEFAULT_SOCKET}


def test_a_stale_cache_sends_everything_to_click(
    cache: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_fast, "_cache_key", lambda: "another version of cli.py")
    assert cli_fast._load_cache() is None
    assert cli_fast._fast(["--help"]) is False


# -- what the hot paths import (run as the launcher runs them: python -I -S) -----------------
def _modules_after(call: str, env: dict[str, str] | None = None) -> tuple[set[str], str]:
    code = (
        f"import sys; sys.path += [{CODE_DIR!r}, {SITE!r}]; before = set(sys.modules)\n"
        f"import cli_fast\n"
        f"try:\n    {call}\nexcept SystemExit:\n    pass\n"
        "sys.stdout.flush(); sys.stderr.write(' '.join(sorted(set(sys.modules) - before)))"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )
    modules = proc.stderr.rsplit("\n", 1)[-1].split()
    return set(modules), proc.stdout


def _heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)}


def test_importing_the_entry_point_imports_nearly_nothing() -> None:
    modules, _ = _modules_after("pass")
    assert not _heavy(modules)
    assert not {"json", "typing", "socket", "re", "agent"} & modules


def test_ps_imports_no_click_no_http_client(
    cache: dict[str, object], server: Callable[[Handler], str]
) -> None:
    path = server(_answer("200 OK", b"[]"))
    modules, out = _modules_after(f"cli_fast.main(['--socket', {path!r}, 'ps'])")
    assert out.startswith("TASK ID")
    assert not _heavy(modules), _heavy(modules)
    assert not {"socket", "typing", "agent", "json", "re"} & modules


def test_run_imports_no_click_and_speaks_the_attach_sequence(
    cache: dict[str, object], server: Callable[[Handler], str]
) -> None:
    """`run --rm FILE`: submit, stream the logs, wait, remove; exit with the task's code."""
    seen: list[str] = []

    def agent(conn: socket.socket, request: bytes) -> None:
        line = request.split(b"\r\n", 1)[0].decode()
        seen.append(line.rsplit(" ", 1)[0])
        if line.startswith("POST /v1/tasks "):
            body = json.loads(request.partition(b"\r\n\r\n")[2])
            assert body["environment"] == {"A": "1"} and body["definition"]["family"] == "hello"
            _answer("201 Created", b'{"id": "t1"}')(conn, request)
        elif "/logs?" in line:
            entry = {"log": "hi\n", "stream": "stdout", "time": "x"}
            _answer("200 OK", json.dumps(entry).encode() + b"\n")(conn, request)
        elif line.startswith("GET /v1/tasks/t1/wait"):
            _answer("200 OK", b'{"id": "t1", "exitCode": 3}')(conn, request)
        else:
            _answer("204 No Content", b"")(conn, request)

    path = server(agent)
    call = f"cli_fast.main(['--socket', {path!r}, 'run', '--rm', '-e', 'A=1', {EXAMPLE!r}])"
    modules, out = _modules_after(call)
    assert out == "hi\n"
    assert not _heavy(modules), _heavy(modules)
    assert not {"urllib", "typing", "json", "re"} & modules
    assert seen == [
        "POST /v1/tasks",
        "GET /v1/tasks/t1/logs?follow=1",
        "GET /v1/tasks/t1/wait",
        "DELETE /v1/tasks/t1",
    ]


JSON_DOCS = [
    '{"a": [1, 2.5, -3e10, 1E-7, true, false, null, "x\\u00e9\\ud83d\\ude00\\n\\t\\"\\\\"]}',
    "  [ ]  ",
    "\n{}\r\n",
    '"only a string"',
    "12",
    "-0",
    "123456789012345678901234567890",
    "[NaN, Infinity, -Infinity]",
    '{"a": {"b": {"c": [{}, [], ""]}}, "a": 2}',
    '{"é": "ü", "k": "\u2028"}',
]
JSON_BAD = ["", " ", "{", "[1,]", '{"a":1} x', "nul", "\ufeff{}", '{"a" 1}', "[1] [2]", "'a'"]


@pytest.mark.parametrize("doc", JSON_DOCS)
def test_loads_is_json_loads(doc: str) -> None:
    """cli_fast.loads (the json package's C scanner without the package) = json.loads,
    from str and from UTF-8 bytes."""
    want = repr(json.loads(doc))  # repr: NaN != NaN
    assert repr(cli_fast.loads(doc)) == want
    assert repr(cli_fast.loads(doc.encode())) == want


@pytest.mark.parametrize("doc", JSON_BAD)
def test_loads_fails_as_json_loads_does(doc: str) -> None:
    with pytest.raises(ValueError) as want:
        json.loads(doc)
    with pytest.raises(ValueError) as got:
        cli_fast.loads(doc)
    assert str(got.value) == str(want.value)


def test_loads_reports_a_bad_document_before_json_is_imported() -> None:
    """As the CLI runs it (python -IS, json not imported): the C scanner cannot raise its
    JSONDecodeError then; the message must still be json's."""
    code = (
        "import sys\n"
        f"sys.path[:0] = [{CODE_DIR!r}]\n"
        "import cli_fast\n"
        "assert 'json' not in sys.modules\n"
        "try:\n"
        "    cli_fast.loads('{ this is not json')\n"
        "except ValueError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    )
    want = "Expecting property name enclosed in double quotes: line 1 column 3 (char 2)"
    assert out.stdout.strip() == f"JSONDecodeError {want}"


def test_loads_takes_what_json_takes_from_bytes() -> None:
    for encoding in ("utf-8-sig", "utf-16", "utf-16-le", "utf-32"):
        raw = '{"a": ["\u00e9", 1]}'.encode(encoding)
        assert cli_fast.loads(raw) == json.loads(raw) == {"a": ["\u00e9", 1]}
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(RecursionError):
        cli_fast.loads(deep)


@pytest.mark.parametrize(
    "obj",
    [
        {"a": [1, 2.5, None, True, False, '\u00e9\U0001f600\n"\\'], "b": {}, "c": -0.0},
        [],
        "x\u00e9",
        3,
        1e100,
        {"inf": float("inf"), "nan": float("nan")},
        {"definition": json.loads(Path(EXAMPLE).read_text()), "environment": {"A": "1"}},
    ],
)
def test_dumps_is_json_dumps(obj: object) -> None:
    assert cli_fast.dumps(obj) == json.dumps(obj)


def test_dumps_refuses_what_json_refuses() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        cli_fast.dumps({"a": object()})
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        cli_fast.dumps(loop)


def test_query_strings_are_encoded_as_urlencode_does() -> None:
    from urllib.parse import parse_qsl, quote

    values = {"follow": "1", "container": "a b&c=d/é%~", "since": "1.5", "tail": "10"}
    query = cli_fast._query(values)
    assert query == "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in values.items())
    assert dict(parse_qsl(query)) == values


def test_validate_and_help_import_no_click(cache: dict[str, object]) -> None:
    modules, out = _modules_after(f"cli_fast.main(['validate', {EXAMPLE!r}])")
    assert ": ok (family hello" in out
    assert not _heavy(modules), _heavy(modules)
    modules, out = _modules_after("cli_fast.main(['--help'])", {"COLUMNS": "80"})
    assert out.startswith("Usage: nstask")
    assert not _heavy(modules) and "agent" not in modules


def test_image_pack_imports_no_grpc(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "x").write_text("x")
    out = str(tmp_path / "x.tar")
    modules, printed = _modules_after(
        f"cli_fast.main(['image', 'pack', {str(rootfs)!r}, 'nstask.local/x:1', '-o', {out!r}])"
    )
    assert printed.startswith(out)
    assert not {m for m in modules if m == "grpc" or m.startswith(("grpc.", "google.protobuf"))}
    assert "agent.containerd" not in modules


def test_fast_help_is_clicks_help_at_every_width(tmp_path: Path) -> None:
    def run(code: str, columns: str) -> str:
        env = {**os.environ, "COLUMNS": columns}
        prelude = f"import sys; sys.path += {[CODE_DIR, SITE]!r}"
        return subprocess.run(
            [sys.executable, "-I", "-S", "-c", f"{prelude}; {code}"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        ).stdout

    for columns in ("80", "200", "60", "30"):
        clicks = run("import cli; cli.main(['--help'], prog_name='nstask')", columns)
        first = run("import cli_fast; cli_fast.main(['--help'])", columns)
        again = run("import cli_fast; cli_fast.main(['--help'])", columns)  # from the cache
        assert clicks.startswith("Usage: nstask [OPTIONS]")
        assert first == again == clicks, columns


@pytest.mark.parametrize("name", ["nstask", "nstask-shim-logger"])
def test_console_scripts_start_python_without_site(name: str) -> None:
    """The launchers bootstrap.sh writes: `python -I -S`, no .pth files or editable finder."""
    launcher = Path(sys.executable).parent / name
    head = launcher.read_text().splitlines()[:2]
    assert head[0].endswith("/python -IS") or '-IS "$0" "$@"' in head[1], head
    out = subprocess.run(
        [str(launcher), "--help"] if name == "nstask" else [str(launcher)],
        capture_output=True,
        text=True,
        env={},  # as containerd starts the shim: no PATH
        timeout=60,
    )
    if name == "nstask":
        assert out.returncode == 0 and out.stdout.startswith("Usage: nstask"), out.stderr
    else:
        assert out.returncode == 2 and "nstask-shim-logger" in out.stderr, out.stderr
