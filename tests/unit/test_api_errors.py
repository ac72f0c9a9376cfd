"""The API's error middleware and body parsing, on an in-process server on a unix socket:
a client that goes away is a normal event; too deep or too large input is bad input."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from aiohttp import web
from structlog.testing import capture_logs

from agent import api
from agent.errors import MAX_REQUEST_BYTES


async def _echo(request: web.Request) -> web.Response:
    return web.json_response(await api._body(request))


async def _stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    await resp.prepare(request)
    for _ in range(2000):
        await resp.write(b"x" * 65536)
        await asyncio.sleep(0)
    return resp


def _serve_and(path: Path, client: Any) -> list[MutableMapping[str, Any]]:
    """Serve the two handlers behind the API's middleware, run `client` in a thread, return
    what the API logged."""

    async def main() -> None:
        app = web.Application(middlewares=[api._errors], client_max_size=MAX_REQUEST_BYTES)
        app.router.add_post("/echo", _echo)
        app.router.add_get("/stream", _stream)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.UnixSite(runner, str(path)).start()
        try:
            await asyncio.to_thread(client)
            await asyncio.sleep(0.3)  # let the handler see the disconnect
        finally:
            await runner.cleanup()

    with capture_logs() as logs:
        asyncio.run(main())
    return logs


def _connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    return s


def _post(path: Path, body: bytes) -> tuple[int, dict[str, Any]]:
    s = _connect(path)
    s.sendall(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


def test_a_client_gone_mid_body_or_mid_answer_is_logged_once_as_normal(tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"

    def client() -> None:
        s = _connect(sock)
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 400000\r\n\r\n{" + b" " * 99)
        s.close()
        s = _connect(sock)
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(65536)
        s.close()

    logs = _serve_and(sock, client)
    events = [e["event"] for e in logs]
    assert events.count("client_disconnected") == 2, logs
    assert "api_internal_error" not in events
    assert all(e["log_level"] == "info" for e in logs)


def test_deep_or_large_bodies_are_bad_input(tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    answers: list[tuple[int, dict[str, Any]]] = []

    def client() -> None:
        answers.append(_post(sock, b"[" * 100_000 + b"]" * 100_000))
        answers.append(_post(sock, b'{"a": ' + b"[" * 100 + b"]" * 100 + b"}"))
        answers.append(_post(sock, b'{"a": "' + b"x" * (MAX_REQUEST_BYTES + 1) + b'"}'))
        answers.append(_post(sock, b'{"a": ' + b"[" * 60 + b"]" * 60 + b"}"))

    _serve_and(sock, client)
    (s1, b1), (s2, b2), (s3, b3), (s4, b4) = answers
    assert s1 == 400 and "nested too deeply" in b1["message"]
    assert s2 == 400 and "nested too deeply" in b2["message"]
    assert s3 == 413 and b3["error"] == "request_too_large"
    assert str(MAX_REQUEST_BYTES) in b3["message"]
    assert s4 == 200 and b4["a"]


def test_depth_is_measured_without_recursion() -> None:
    deep: list[Any] = []
    node = deep
    for _ in range(200_000):
        node.append([])
        node = node[0]
    assert api._depth(deep) > api.MAX_JSON_DEPTH
    assert api._depth({"a": [1, {"b": []}]}) == 4
    assert api._depth("x") == 0
