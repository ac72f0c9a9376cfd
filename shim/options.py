"""Parsing of log option values the way Docker parses them, without importing ``re``.

- sizes: ``max-size`` uses Docker's decimal units (go-units FromHumanSize: ``10k`` = 10,000);
  ``max-buffer-size`` and ``fluentd-buffer-limit`` use binary ones (RAMInBytes: ``1m`` =
  1,048,576). Both accept ``<number>[ ][kmgtp][i][b]``, case-insensitive.
- booleans: Go's strconv.ParseBool (1 t T TRUE true True / 0 f F FALSE false False).
- durations: Go's time.ParseDuration subset: ``1.5s``, ``250ms``, ``1m30s``.
"""

from __future__ import annotations

__all__ = [
    "OptionError",
    "parse_bool",
    "parse_duration",
    "parse_size",
]

_DECIMAL = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4, "p": 1000**5}
_BINARY = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


class OptionError(ValueError):
    """A log option's value cannot be used; the message names the option."""


def parse_size(name: str, text: str, *, binary: bool) -> int:
    """Bytes for a Docker size string; ``binary`` picks 1024-based units (RAMInBytes)."""
    lowered = text.strip().lower()
    rest = lowered
    if rest.endswith("b"):
        rest = rest[:-1]
    if rest.endswith("i"):
        rest = rest[:-1]
    unit = ""
    if rest and rest[-1] in "kmgtp":
        unit = rest[-1]
        rest = rest[:-1]
    number = rest.rstrip(" ")
    if not number or not number.replace(".", "", 1).isdigit() or number[0] == ".":
        raise OptionError(f"{name}: invalid size {text!r} (examples: 10m, 512k, 1g)")
    table = _BINARY if binary else _DECIMAL
    return int(float(number) * table[unit])


def parse_bool(name: str, text: str) -> bool:
    """Go's strconv.ParseBool, which Docker uses for every boolean log option."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise OptionError(f"{name}: expected true or false, got {text!r}")


def parse_duration(name: str, text: str) -> float:
    """Seconds for a Go duration string such as ``1s``, ``500ms`` or ``1m30s``."""
    rest = text.strip()
    if rest == "0":
        return 0.0
    total = 0.0
    if not rest:
        raise OptionError(f"{name}: invalid duration {text!r} (examples: 1s, 500ms)")
    while rest:
        end = 0
        while end < len(rest) and (rest[end].isdigit() or rest[end] == "."):
            end += 1
        number, rest = rest[:end], rest[end:]
        unit_end = 0
        while unit_end < len(rest) and not (rest[unit_end].isdigit() or rest[unit_end] == "."):
            unit_end += 1
        unit, rest = rest[:unit_end], rest[unit_end:]
        try:
            total += float(number) * _DURATION_UNITS[unit]
        except (ValueError, KeyError):
            raise OptionError(f"{name}: invalid duration {text!r} (examples: 1s, 500ms)") from None
    return total
