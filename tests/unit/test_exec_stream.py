"""The interactive exec's framing (agent.exec_stream): our messages, the CLI's WebSocket
frames, and the handshake, also against aiohttp's WebSocket server (what the agent runs)."""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web

from agent import exec_stream as xs


def test_messages_round_trip_and_bad_ones_are_refused() -> None:
    assert xs.parse(xs.message(xs.STDIN, b"\x03\x04ls\r")) == (xs.STDIN, b"\x03\x04ls\r")
    assert xs.parse(xs.message(xs.EOF)) == (xs.EOF, b"")
    kind, payload = xs.parse(xs.resize(120, 40))
    assert kind == xs.RESIZE and xs.parse_resize(payload) == (120, 40)
    assert xs.parse_resize(xs.parse(xs.resize(-5, 10**6))[1]) == (0, 0xFFFF)  # clamped
    for bad in (b"", b"\x63", xs.message(xs.EOF) + b"x", bytes((xs.RESIZE,)) + b"\x00\x01"):
        with pytest.raises(xs.StreamError):
            xs.parse(bad)
    with pytest.raises(xs.StreamError):
        xs.message(99)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_frames_decode_whatever_their_length_and_feeding(size: int) -> None:
    payload = bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]
    masked = xs.encode_frame(payload)
    assert masked[1] & 0x80  # a client's frames are masked
    plain = xs.encode_frame(payload, mask=b"")
    reader = xs.FrameReader()
    for i in range(0, len(masked), 997):  # in pieces, as a socket gives them
        reader.feed(masked[i : i + 997])
    reader.feed(plain)
    assert list(reader.messages()) == [(xs.OP_BINARY, payload), (xs.OP_BINARY, payload)]
    assert list(reader.messages()) == []


def test_a_partial_frame_waits_for_the_rest() -> None:
    frame = xs.encode_frame(b"hello", mask=b"")
    reader = xs.FrameReader()
    reader.feed(frame[:3])
    assert list(reader.messages()) == []
    reader.feed(frame[3:])
    assert list(reader.messages()) == [(xs.OP_BINARY, b"hello")]


def test_fragments_are_joined_and_control_frames_pass_between() -> None:
    first = bytes((0x02, 3)) + b"abc"  # binary, not final
    ping = bytes((0x89, 1)) + b"p"
    last = bytes((0x80, 2)) + b"de"  # continuation, final
    reader = xs.FrameReader()
    reader.feed(first + ping + last)
    assert list(reader.messages()) == [(xs.OP_PING, b"p"), (xs.OP_BINARY, b"abcde")]
    with pytest.raises(xs.StreamError, match="continuation"):
        bad = xs.FrameReader()
        bad.feed(last)
        list(bad.messages())


def test_an_oversized_frame_is_refused_before_it_is_buffered() -> None:
    reader = xs.FrameReader()
    reader.feed(bytes((0x82, 127)) + struct.pack(">Q", xs.MAX_FRAME + 1))
    with pytest.raises(xs.StreamError, match="bytes"):
        list(reader.messages())


def test_the_handshake_accept_value_is_rfc_6455s() -> None:
    # The example of RFC 6455 section 1.3.
    assert xs.accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.fixture
def echo_server(tmp_path: Path) -> Iterator[str]:
    """aiohttp's WebSocket server on a unix socket: answers each binary message with STDOUT
    of its payload, and EOF with EXIT 7."""
    path = str(tmp_path / "ws.sock")
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner_box: list[web.AppRunner] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type != WSMsgType.BINARY:
                continue
            kind, payload = xs.parse(msg.data)
            if kind == xs.EOF:
                await ws.send_bytes(xs.message(xs.EXIT, b'{"exitCode": 7}'))
                break
            await ws.send_bytes(xs.message(xs.STDOUT, payload))
        await ws.close()
        return ws

    async def start() -> None:
        app = web.Application()
        app.router.add_get("/ws", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, path).start()
        runner_box.append(runner)
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()))
    thread.start()
    ready.wait(10)
    try:
        yield path
    finally:
        asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_the_client_speaks_to_aiohttps_websocket_server(echo_server: str) -> None:
    sock, early = xs.connect(echo_server, "/ws")
    try:
        big = b"x" * 200_000
        sock.sendall(xs.encode_frame(xs.message(xs.STDIN, b"hi")))
        sock.sendall(xs.encode_frame(xs.message(xs.STDIN, big)))
        sock.sendall(xs.encode_frame(xs.message(xs.EOF)))
        reader = xs.FrameReader()
        reader.feed(early)
        got: list[tuple[int, bytes]] = []
        while not any(k == xs.EXIT for k, _ in got):
            data = sock.recv(65536)
            assert data, f"the server closed early: {got!r}"
            reader.feed(data)
            got += [xs.parse(p) for op, p in reader.messages() if op == xs.OP_BINARY]
        assert got == [(xs.STDOUT, b"hi"), (xs.STDOUT, big), (xs.EXIT, b'{"exitCode": 7}')]
    finally:
        sock.close()


def test_an_http_error_before_the_upgrade_is_the_agents_message(tmp_path: Path) -> None:
    from cli_fast import ApiError

    path = str(tmp_path / "ws.sock")
    loop = asyncio.new_event_loop()

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"error": "invalid", "message": "no container 'x'"}, status=400)

    async def serve() -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/ws", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, path).start()
        return runner

    runner = loop.run_until_complete(serve())
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        with pytest.raises(ApiError) as e:
            xs.connect(path, "/ws")
        assert e.value.status == 400 and e.value.body["message"] == "no container 'x'"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
