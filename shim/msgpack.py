"""The msgpack encoding the fluentd driver needs, and nothing more.

The shim must start fast and import little, so it does not depend on the msgpack package: the
Forward protocol only needs nil, bool, int, str, bin, array, map and one ext type (EventTime,
type 0). Format bytes follow the msgpack specification (github.com/msgpack/msgpack/spec.md);
tests cross-check the output with the msgpack package's own Unpacker.
"""

from __future__ import annotations

__all__ = ["EventTime", "packb"]


class EventTime:
    """Fluentd's EventTime: seconds and nanoseconds, packed as ext type 0 (fixext 8).

    The 8 payload bytes are big-endian uint32 seconds then uint32 nanoseconds, so a receiver
    keeps the sub-second precision that an integer time would lose.
    """

    __slots__ = ("nanoseconds", "seconds")

    def __init__(self, seconds: int, nanoseconds: int) -> None:
        self.seconds = seconds
        self.nanoseconds = nanoseconds

    @classmethod
    def from_ns(cls, time_ns: int) -> EventTime:
        """From nanoseconds since the epoch."""
        seconds, nanoseconds = divmod(time_ns, 1_000_000_000)
        return cls(seconds, nanoseconds)

    def __repr__(self) -> str:
        return f"EventTime({self.seconds}, {self.nanoseconds})"


def _uint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    if value <= 0xFF:
        return b"\xcc" + value.to_bytes(1, "big")
    if value <= 0xFFFF:
        return b"\xcd" + value.to_bytes(2, "big")
    if value <= 0xFFFFFFFF:
        return b"\xce" + value.to_bytes(4, "big")
    if value <= 0xFFFFFFFFFFFFFFFF:
        return b"\xcf" + value.to_bytes(8, "big")
    raise OverflowError(f"integer too large for msgpack: {value}")


def _int(value: int) -> bytes:
    if value >= 0:
        return _uint(value)
    if value >= -32:
        return (value & 0xFF).to_bytes(1, "big")
    if value >= -(2**7):
        return b"\xd0" + value.to_bytes(1, "big", signed=True)
    if value >= -(2**15):
        return b"\xd1" + value.to_bytes(2, "big", signed=True)
    if value >= -(2**31):
        return b"\xd2" + value.to_bytes(4, "big", signed=True)
    if value >= -(2**63):
        return b"\xd3" + value.to_bytes(8, "big", signed=True)
    raise OverflowError(f"integer too small for msgpack: {value}")


def _str_header(size: int) -> bytes:
    if size < 32:
        return bytes((0xA0 | size,))
    if size <= 0xFF:
        return b"\xd9" + size.to_bytes(1, "big")
    if size <= 0xFFFF:
        return b"\xda" + size.to_bytes(2, "big")
    return b"\xdb" + size.to_bytes(4, "big")


def _bin_header(size: int) -> bytes:
    if size <= 0xFF:
        return b"\xc4" + size.to_bytes(1, "big")
    if size <= 0xFFFF:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


def _container_header(size: int, fix: int, code16: bytes, code32: bytes) -> bytes:
    if size < 16:
        return bytes((fix | size,))
    if size <= 0xFFFF:
        return code16 + size.to_bytes(2, "big")
    return code32 + size.to_bytes(4, "big")


def _pack(value: object, out: list[bytes]) -> None:
    """Append the encoding of ``value`` to ``out`` (parts joined once, by :func:`packb`)."""
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogateescape")
        out.append(_str_header(len(data)))
        out.append(data)
    elif value is None:
        out.append(b"\xc0")
    elif value is True:
        out.append(b"\xc3")
    elif value is False:
        out.append(b"\xc2")
    elif isinstance(value, int):
        out.append(_int(value))
    elif isinstance(value, EventTime):
        out.append(
            b"\xd7\x00" + value.seconds.to_bytes(4, "big") + value.nanoseconds.to_bytes(4, "big")
        )
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        out.append(_bin_header(len(data)))
        out.append(data)
    elif isinstance(value, dict):
        out.append(_container_header(len(value), 0x80, b"\xde", b"\xdf"))
        for key, item in value.items():
            _pack(key, out)
            _pack(item, out)
    elif isinstance(value, list | tuple):
        out.append(_container_header(len(value), 0x90, b"\xdc", b"\xdd"))
        for item in value:
            _pack(item, out)
    else:
        raise TypeError(f"cannot msgpack {type(value).__name__}")


def packb(value: object) -> bytes:
    """Encode ``value`` (None, bool, int, str, bytes, EventTime, list/tuple, dict)."""
    out: list[bytes] = []
    _pack(value, out)
    return b"".join(out)
