"""The interactive exec's stream between `nstask exec -i/-t` and the agent: messages over a
WebSocket on the agent's unix socket (`GET /v1/tasks/{id}/exec?request=<JSON>` upgraded).

Each WebSocket binary message is one message of ours: a kind byte, then its payload.

    client -> agent   STDIN   bytes typed or piped
                      EOF     the input ended (the agent closes the process's stdin)
                      RESIZE  columns, rows (two big-endian uint16): the user's terminal
    agent -> client   STDOUT  bytes (with a terminal, everything the process writes)
                      STDERR  bytes (without a terminal)
                      EXIT    JSON {"exitCode": n}: the process ended; the last message
                      ERROR   JSON {"error", "message"}: the exec failed after the upgrade

The agent side uses aiohttp's WebSocket server; this module holds the codec and, for the CLI,
a small WebSocket client (RFC 6455: handshake, masked frames out, unmasked frames in) over a
plain socket, stdlib only, so `nstask exec` imports nothing heavy. Stdlib imports only.
"""

from __future__ import annotations

import contextlib
import os
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

STDIN = 0
EOF = 1
RESIZE = 2
STDOUT = 3
STDERR = 4
EXIT = 5
ERROR = 6
KINDS = frozenset({STDIN, EOF, RESIZE, STDOUT, STDERR, EXIT, ERROR})
MAX_WINSIZE = 0xFFFF

# WebSocket opcodes (RFC 6455 5.2).
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_FRAME = 16 << 20  # the agent never sends more than a read's worth (64 KiB) at once


class StreamError(ValueError):
    """A message or frame that does not follow the protocol."""


# -- our messages -------------------------------------------------------------------------
def message(kind: int, payload: bytes = b"") -> bytes:
    if kind not in KINDS:
        raise StreamError(f"unknown message kind {kind}")
    return bytes((kind,)) + payload


def resize(columns: int, rows: int) -> bytes:
    return message(RESIZE, struct.pack(">HH", _clamp(columns), _clamp(rows)))


def _clamp(n: int) -> int:
    return max(0, min(int(n), MAX_WINSIZE))


def parse(data: bytes) -> tuple[int, bytes]:
    """(kind, payload) of one message."""
    if not data:
        raise StreamError("empty message")
    kind = data[0]
    if kind not in KINDS:
        raise StreamError(f"unknown message kind {kind}")
    payload = bytes(data[1:])
    if kind == RESIZE and len(payload) != 4:
        raise StreamError(f"a resize message has 4 bytes of payload, not {len(payload)}")
    if kind == EOF and payload:
        raise StreamError("an EOF message has no payload")
    return kind, payload


def parse_resize(payload: bytes) -> tuple[int, int]:
    """(columns, rows) of a RESIZE payload."""
    columns, rows = struct.unpack(">HH", payload)
    return int(columns), int(rows)


# -- WebSocket frames (the client's side) -------------------------------------------------
def encode_frame(payload: bytes, opcode: int = OP_BINARY, *, mask: bytes | None = None) -> bytes:
    """One final frame; masked (as a client must send) unless mask is b""."""
    if mask is None:
        mask = os.urandom(4)
    n = len(payload)
    head = bytearray((0x80 | opcode,))
    bit = 0x80 if mask else 0
    if n < 126:
        head.append(bit | n)
    elif n < 1 << 16:
        head += bytes((bit | 126,)) + struct.pack(">H", n)
    else:
        head += bytes((bit | 127,)) + struct.pack(">Q", n)
    if not mask:
        return bytes(head) + payload
    return bytes(head) + mask + _xor(payload, mask)


def _xor(data: bytes, mask: bytes) -> bytes:
    if not data:
        return b""
    n = len(data)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class FrameReader:
    """Incremental WebSocket frame parser: feed() bytes, then messages() yields
    (opcode, payload) of each complete message (fragments joined)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._opcode: int | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data

    def messages(self) -> Iterator[tuple[int, bytes]]:
        while (frame := self._frame()) is not None:
            fin, opcode, payload = frame
            if opcode >= OP_CLOSE:  # control frames are never fragmented
                yield opcode, payload
                continue
            if opcode == OP_CONT:
                if self._opcode is None:
                    raise StreamError("a continuation frame without a message")
            else:
                if self._opcode is not None:
                    raise StreamError("a new message inside a fragmented one")
                self._opcode = opcode
            self._parts.append(payload)
            if fin:
                op, self._opcode = self._opcode, None
                data, self._parts = b"".join(self._parts), []
                yield op, data

    def _frame(self) -> tuple[bool, int, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        fin, opcode = bool(buf[0] & 0x80), buf[0] & 0x0F
        masked, n = bool(buf[1] & 0x80), buf[1] & 0x7F
        at = 2
        if n == 126:
            if len(buf) < 4:
                return None
            (n,) = struct.unpack(">H", buf[2:4])
            at = 4
        elif n == 127:
            if len(buf) < 10:
                return None
            (n,) = struct.unpack(">Q", buf[2:10])
            at = 10
        if n > MAX_FRAME:
            raise StreamError(f"a frame of {n} bytes (more than {MAX_FRAME})")
        mask = b""
        if masked:
            if len(buf) < at + 4:
                return None
            mask = bytes(buf[at : at + 4])
            at += 4
        if len(buf) < at + n:
            return None
        payload = bytes(buf[at : at + n])
        del buf[: at + n]
        return fin, opcode, _xor(payload, mask) if mask else payload


def handshake_key() -> str:
    import base64

    return base64.b64encode(os.urandom(16)).decode()


def accept_for(key: str) -> str:
    """The Sec-WebSocket-Accept a server answers to `key`."""
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def upgrade_request(path: str, key: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


# -- the CLI's session ----------------------------------------------------------------------
class SessionError(Exception):
    """The session could not start or broke: message for the user, the CLI's exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def connect(socket_path: str, path: str) -> tuple[Any, bytes]:
    """Open the WebSocket: (the socket, bytes read past the handshake). An HTTP error
    answer raises cli_fast.ApiError; a socket error is OSError."""
    import _socket

    from cli_fast import ApiError, Response

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(60)
        sock.connect(socket_path)
        key = handshake_key()
        sock.sendall(upgrade_request(path, key))
        resp = Response(sock)
        if resp.status != 101:
            import json

            raw = resp.read()
            try:
                err = json.loads(raw)
            except ValueError:
                err = None
            if not isinstance(err, dict):
                err = {"message": raw.decode(errors="replace") or f"HTTP {resp.status}"}
            raise ApiError(resp.status, err)
        if resp.headers.get("sec-websocket-accept") != accept_for(key):
            raise SessionError("the agent's WebSocket handshake is not valid")
        sock.settimeout(None)
        return sock, bytes(resp._buf)
    except BaseException:
        sock.close()
        raise


def run_session(sock: Any, early: bytes, *, tty: bool, stdin: bool) -> int:
    """Relay the local terminal (or pipe) and the remote process until it exits; its exit
    code. With tty and stdin, the local terminal is in raw mode meanwhile (Ctrl-C, Ctrl-D
    and every other key go to the process) and restored on every way out; each SIGWINCH
    sends the new size."""
    import select
    import signal

    s = sock  # a _socket.socket
    in_fd = 0
    out_fd = 1
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    saved = None
    old_handlers: dict[int, Any] = {}

    def on_winch(signum: int, frame: object) -> None:
        with contextlib.suppress(OSError):
            os.write(wake_w, b"w")

    def on_term(signum: int, frame: object) -> None:
        raise SessionError(f"stopped by signal {signum}", 128 + signum)

    try:
        if tty:
            old_handlers[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, on_winch)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            old_handlers[sig] = signal.signal(sig, on_term)
        if tty and stdin:
            import termios
            import tty as tty_mod

            saved = termios.tcgetattr(in_fd)
            tty_mod.setraw(in_fd, termios.TCSANOW)
        reader = FrameReader()
        reader.feed(early)
        reading_stdin = stdin
        code: int | None = None
        while True:
            for opcode, payload in reader.messages():
                if opcode == OP_CLOSE:
                    return _ended(code, payload[2:].decode("utf-8", "replace"))
                if opcode == OP_PING:
                    s.sendall(encode_frame(payload, OP_PONG))
                    continue
                if opcode != OP_BINARY:
                    continue
                kind, body = parse(payload)
                if kind == STDOUT:
                    _write_all(out_fd, body)
                elif kind == STDERR:
                    _write_all(2, body)
                elif kind == EXIT:
                    import json

                    code = int(json.loads(body)["exitCode"])
                    return code
                elif kind == ERROR:
                    import json

                    err = json.loads(body)
                    raise SessionError(str(err.get("message", "the exec failed")))
            watch = [s, wake_r] + ([in_fd] if reading_stdin else [])
            ready, _, _ = select.select(watch, [], [])
            if wake_r in ready:
                os.read(wake_r, 512)
                size = _size(in_fd if stdin else out_fd)
                if size:
                    s.sendall(encode_frame(resize(*size)))
            if reading_stdin and in_fd in ready:
                data = os.read(in_fd, 65536)
                if data:
                    s.sendall(encode_frame(message(STDIN, data)))
                else:
                    reading_stdin = False
                    s.sendall(encode_frame(message(EOF)))
            if s in ready:
                data = s.recv(65536)
                if not data:
                    return _ended(code)
                reader.feed(data)
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)
        os.close(wake_r)
        os.close(wake_w)
        s.close()


def _ended(code: int | None, reason: str = "") -> int:
    if code is None:
        raise SessionError(
            "the agent closed the exec session before the process ended"
            + (f" ({reason})" if reason else "")
        )
    return code


def _size(fd: int) -> tuple[int, int] | None:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    return size.columns, size.lines


def terminal_size(fd: int) -> tuple[int, int]:
    """(columns, rows) of the terminal on fd, (0, 0) when it is none."""
    return _size(fd) or (0, 0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
