"""A small Fluentd Forward receiver for tests, benchmarks and trying the fluentd driver by hand.

Listens on TCP (loopback) or a unix socket, decodes msgpack with its own decoder (separate from
shim.msgpack's encoder, so tests do not only check the encoder against itself), accepts the
Message, Forward and PackedForward modes, answers ``{"ack": chunk}`` when a message asks for
one, and keeps every event plus the raw bytes received (for a second decoder to check). Not
imported by the shim.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "ForwardReceiver", "Incomplete", "unpack"]


class Incomplete(Exception):
    """The buffer ends inside a value: wait for more bytes."""


@dataclass(frozen=True)
class Event:
    """One log event: tag, time (seconds, nanoseconds; ns is 0 for an integer time), record."""

    tag: str
    seconds: int
    nanoseconds: int
    record: dict[str, Any]
    option: dict[str, Any] | None = None

    @property
    def time_ns(self) -> int:
        return self.seconds * 1_000_000_000 + self.nanoseconds


def _need(data: bytes, pos: int, size: int) -> None:
    if pos + size > len(data):
        raise Incomplete


def _unpack_sized(data: bytes, pos: int, size: int, kind: str) -> tuple[Any, int]:
    _need(data, pos, size)
    raw = data[pos : pos + size]
    return (raw.decode("utf-8") if kind == "str" else raw), pos + size


def _unpack_many(data: bytes, pos: int, count: int, kind: str) -> tuple[Any, int]:
    if kind == "array":
        items = []
        for _ in range(count):
            item, pos = unpack(data, pos)
            items.append(item)
        return items, pos
    mapping = {}
    for _ in range(count):
        key, pos = unpack(data, pos)
        value, pos = unpack(data, pos)
        mapping[key] = value
    return mapping, pos


_FIXED = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_SIGNED = {0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
_LENGTH = {  # code: (length bytes, kind)
    0xD9: (1, "str"),
    0xDA: (2, "str"),
    0xDB: (4, "str"),
    0xC4: (1, "bin"),
    0xC5: (2, "bin"),
    0xC6: (4, "bin"),
    0xDC: (2, "array"),
    0xDD: (4, "array"),
    0xDE: (2, "map"),
    0xDF: (4, "map"),
}
_FIXEXT = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}


def unpack(data: bytes, pos: int = 0) -> tuple[Any, int]:
    """Decode one msgpack value at ``pos``; (value, next pos). Raises Incomplete.

    Ext type 0 of 8 bytes (EventTime) decodes to a ``("EventTime", seconds, nanoseconds)`` tuple.
    """
    _need(data, pos, 1)
    code = data[pos]
    pos += 1
    if code <= 0x7F:
        return code, pos
    if code >= 0xE0:
        return code - 0x100, pos
    if 0xA0 <= code <= 0xBF:
        return _unpack_sized(data, pos, code & 0x1F, "str")
    if 0x90 <= code <= 0x9F:
        return _unpack_many(data, pos, code & 0x0F, "array")
    if 0x80 <= code <= 0x8F:
        return _unpack_many(data, pos, code & 0x0F, "map")
    simple = {0xC0: None, 0xC2: False, 0xC3: True}
    if code in simple:
        return simple[code], pos
    if code in _FIXED or code in _SIGNED:
        size = _FIXED.get(code) or _SIGNED[code]
        _need(data, pos, size)
        value = int.from_bytes(data[pos : pos + size], "big", signed=code in _SIGNED)
        return value, pos + size
    if code in _LENGTH:
        width, kind = _LENGTH[code]
        _need(data, pos, width)
        count = int.from_bytes(data[pos : pos + width], "big")
        pos += width
        if kind in ("str", "bin"):
            return _unpack_sized(data, pos, count, kind)
        return _unpack_many(data, pos, count, kind)
    if code in _FIXEXT:
        size = _FIXEXT[code]
        _need(data, pos, 1 + size)
        ext_type, payload = data[pos], data[pos + 1 : pos + 1 + size]
        if ext_type == 0 and size == 8:
            seconds = int.from_bytes(payload[:4], "big")
            return ("EventTime", seconds, int.from_bytes(payload[4:], "big")), pos + 1 + size
        return ("Ext", ext_type, payload), pos + 1 + size
    if code in (0xCA, 0xCB):
        import struct

        size = 4 if code == 0xCA else 8
        _need(data, pos, size)
        return struct.unpack(">f" if size == 4 else ">d", data[pos : pos + size])[0], pos + size
    raise ValueError(f"msgpack code 0x{code:02x} not supported by the test receiver")


def _time(value: Any) -> tuple[int, int]:
    if isinstance(value, tuple) and value[0] == "EventTime":
        return value[1], value[2]
    if isinstance(value, int):
        return value, 0
    raise ValueError(f"event time must be an integer or EventTime, got {value!r}")


def events_of(message: Any) -> list[Event]:
    """The events in one Forward-protocol message (Message, Forward or PackedForward mode)."""
    if not isinstance(message, list) or len(message) not in (2, 3, 4):
        raise ValueError(f"not a Forward protocol message: {message!r}")
    tag, second = message[0], message[1]
    if isinstance(second, list):  # Forward mode: [tag, [[time, record], ...], option?]
        option = message[2] if len(message) > 2 else None
        return [Event(tag, *_time(t), r, option) for t, r in second]
    if isinstance(second, bytes):  # PackedForward: concatenated [time, record] entries
        option = message[2] if len(message) > 2 else None
        out, pos = [], 0
        while pos < len(second):
            (t, r), pos = unpack(second, pos)
            out.append(Event(tag, *_time(t), r, option))
        return out
    option = message[3] if len(message) > 3 else None
    return [Event(tag, *_time(second), message[2], option)]


@dataclass
class ForwardReceiver:
    """A Forward-protocol server on ``("tcp", "127.0.0.1", 0)`` or ``("unix", path)``.

    ``ack=False`` makes it ignore ack requests (to test that the sender notices).
    Use as a context manager; ``events`` and ``raw`` grow as data arrives.
    """

    network: str = "tcp"
    path: str = ""
    ack: bool = True
    port: int = 0
    events: list[Event] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)
    connections: int = 0
    acks_sent: int = 0
    _sock: socket.socket | None = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _stopping: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def address(self) -> str:
        """The fluentd-address option value that reaches this receiver."""
        if self.network == "unix":
            return f"unix://{self.path}"
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> ForwardReceiver:
        if self.network == "unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(self.path)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            self.port = sock.getsockname()[1]
        sock.listen(16)
        sock.settimeout(0.1)
        self._sock = sock
        self._stopping = False
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Close the listener and every connection (the port stays ours to reuse)."""
        self._stopping = True
        for thread in self._threads:
            thread.join(5)
        self._threads.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.network == "unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def __enter__(self) -> ForwardReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stopping:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        buffer = b""
        with conn:
            while not self._stopping:
                try:
                    chunk = conn.recv(1 << 20)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                with self._lock:
                    self.raw += chunk
                buffer += chunk
                pos = 0
                while True:
                    try:
                        message, end = unpack(buffer, pos)
                    except Incomplete:
                        break
                    pos = end
                    self._handle(conn, message)
                buffer = buffer[pos:]

    def _handle(self, conn: socket.socket, message: Any) -> None:
        events = events_of(message)
        with self._lock:
            self.events.extend(events)
        option = events[0].option if events else None
        if self.ack and isinstance(option, dict) and "chunk" in option:
            chunk = option["chunk"]
            conn.sendall(b"\x81\xa3ack" + _str(chunk))
            self.acks_sent += 1


def _str(text: str) -> bytes:
    data = text.encode()
    if len(data) < 32:
        return bytes((0xA0 | len(data),)) + data
    return b"\xd9" + bytes((len(data),)) + data
