"""The fluentd driver: Fluentd Forward protocol v1, Message mode, over TCP or a unix socket.

Each record is sent as ``[tag, EventTime, record]`` (``[tag, time, record, {"chunk": id}]``
with fluentd-request-ack), the record being what Docker's fluentd driver and the ECS shim
logger send: ``container_id``, ``container_name``, ``source`` (stdout/stderr), ``log`` (the
line without its newline) and, for a line split at 16 KiB, ``partial_message`` ("true"),
``partial_id``, ``partial_ordinal`` ("1", "2", ...) and ``partial_last`` ("true"/"false"), all
strings as Docker sends them. Extra record fields: ``ecs_task_id`` (the ``task`` option),
``ecs_task_definition`` (``family``) and one per ``label.<name>=<value>`` option.

Options (Docker's names and defaults unless said):

- ``fluentd-address``: ``host``, ``host:port``, ``[v6]:port``, ``tcp://host:port`` or
  ``unix:///path``; default ``127.0.0.1:24224``.
- ``tag``: template with ``{{.Name}}`` (container name), ``{{.ID}}`` (first 12 characters of
  the container id), ``{{.FullID}}``, ``{{.TaskID}}``, ``{{.TaskFamily}}``; default ``{{.ID}}``.
- ``fluentd-async`` (or the old ``fluentd-async-connect``): false (default) = connect before
  signalling readiness and fail the start when the receiver is unreachable, as Docker does;
  true = start anyway and connect when the first line is sent.
- ``fluentd-buffer-limit``: bytes of encoded messages held for one delivery (default 1m,
  binary units); a fuller buffer is delivered before more lines are read.
- ``fluentd-retry-wait`` (1s) and ``fluentd-max-retries`` (unlimited): back-off between
  attempts grows 1.5x per failure up to 60 s; after max-retries failures in a row the pending
  messages are dropped and counted.
- ``fluentd-request-ack``: wait for ``{"ack": chunk}`` for every message; unacknowledged
  messages are sent again after reconnecting (at-least-once: a receiver may see duplicates).
- ``fluentd-sub-second-precision``: true by default here (EventTime); false sends integer
  seconds, Docker's default.

Without acks, data the kernel accepted before the receiver died is lost, as with Docker; a peer
that closed the connection is noticed before the next send and reconnected.
"""

from __future__ import annotations

import os
import select
import socket

from shim.msgpack import EventTime, packb
from shim.options import OptionError, parse_bool, parse_duration, parse_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from shim.lifecycle import Lifecycle
    from shim.stats import Stats

__all__ = ["OPTION_KEYS", "FluentdSink", "parse_address", "render_tag", "sink_from_options"]

DEFAULT_PORT = 24224
DEFAULT_HOST = "127.0.0.1"
DEFAULT_BUFFER_LIMIT = 1024 * 1024
DEFAULT_RETRY_WAIT = 1.0
MAX_RETRY_WAIT = 60.0
CONNECT_TIMEOUT = 3.0
IO_TIMEOUT = 5.0
ACK_WINDOW = 256  # messages in flight before their acks are read
OPTION_KEYS = (
    "fluentd-address",
    "tag",
    "fluentd-async",
    "fluentd-async-connect",
    "fluentd-buffer-limit",
    "fluentd-retry-wait",
    "fluentd-max-retries",
    "fluentd-request-ack",
    "fluentd-sub-second-precision",
)
_TAG_FIELDS = ("Name", "ID", "FullID", "TaskID", "TaskFamily")


class Address:
    """Where the receiver listens: ``("tcp", host, port)`` or ``("unix", path, 0)``."""

    __slots__ = ("host", "network", "port")

    def __init__(self, network: str, host: str, port: int) -> None:
        self.network = network
        self.host = host
        self.port = port

    def __repr__(self) -> str:
        if self.network == "unix":
            return f"unix://{self.host}"
        return f"tcp://{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Docker's fluentd-address forms; host defaults to 127.0.0.1 and port to 24224."""
    if not text:
        return Address("tcp", DEFAULT_HOST, DEFAULT_PORT)
    rest = text
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if scheme == "unix":
            if not rest.startswith("/"):
                raise OptionError(f"fluentd-address: unix socket path must be absolute: {text!r}")
            return Address("unix", rest, 0)
        if scheme != "tcp":
            raise OptionError(f"fluentd-address: unsupported scheme {scheme!r} (tcp or unix)")
        rest = rest.rstrip("/")
    host, port = rest, DEFAULT_PORT
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise OptionError(f"fluentd-address: invalid address {text!r}")
        host, after = rest[1:close], rest[close + 1 :]
        if after:
            port = _port(after[1:] if after.startswith(":") else "", text)
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
        port = _port(port_text, text)
    if not host:
        raise OptionError(f"fluentd-address: missing host in {text!r}")
    return Address("tcp", host, port)


def _port(text: str, address: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise OptionError(f"fluentd-address: invalid port in {address!r}")
    return int(text)


def render_tag(template: str, values: dict[str, str]) -> str:
    """Expand ``{{.Field}}`` markers (see module doc); anything else in braces is an error."""
    out: list[str] = []
    rest = template
    while True:
        start = rest.find("{{")
        if start < 0:
            out.append(rest)
            break
        end = rest.find("}}", start)
        if end < 0:
            raise OptionError(f"tag: unclosed '{{{{' in {template!r}")
        field = rest[start + 2 : end].strip()
        if not field.startswith(".") or field[1:] not in _TAG_FIELDS:
            known = ", ".join("{{." + name + "}}" for name in _TAG_FIELDS)
            raise OptionError(f"tag: unknown field {field!r} in {template!r} (known: {known})")
        out.append(rest[:start])
        out.append(values[field[1:]])
        rest = rest[end + 2 :]
    return "".join(out)


class FluentdSink:
    """Encodes records as Forward messages and delivers them, retrying with back-off.

    ``add``/``flush``/``close`` like JsonFileWriter. ``flush`` returns only when the batch is
    delivered, dropped after max-retries failures, or dropped at the shutdown deadline: in
    blocking mode that wait is the back-pressure that reaches the container.
    """

    def __init__(
        self,
        address: Address,
        *,
        tag: str,
        base_record: dict[str, str],
        stats: Stats,
        lifecycle: Lifecycle,
        buffer_limit: int = DEFAULT_BUFFER_LIMIT,
        retry_wait: float = DEFAULT_RETRY_WAIT,
        max_retries: int = -1,
        request_ack: bool = False,
        sub_second: bool = True,
    ) -> None:
        self.address = address
        self.tag = tag
        self.base_record = base_record
        self.stats = stats
        self.lifecycle = lifecycle
        self.buffer_limit = buffer_limit
        self.retry_wait = retry_wait
        self.max_retries = max_retries
        self.request_ack = request_ack
        self.sub_second = sub_second
        self._sock: socket.socket | None = None
        self._pending: list[tuple[bytes, bytes | None, int]] = []  # (message, chunk, log bytes)
        self._pending_bytes = 0
        self.sent_messages = 0

    # -- connection ---------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection (raises OSError); called at start unless fluentd-async."""
        self._close_socket()
        if self.address.network == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(CONNECT_TIMEOUT)
                sock.connect(self.address.host)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection(
                (self.address.host, self.address.port), timeout=CONNECT_TIMEOUT
            )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(IO_TIMEOUT)
        self._sock = sock
        self.stats.sink_state = "ok"

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _peer_closed(self) -> bool:
        """True when the receiver closed or reset the connection since our last send."""
        sock = self._sock
        if sock is None:
            return True
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        if not poller.poll(0):
            return False
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    # -- records ------------------------------------------------------------------------

    def add(
        self,
        stream: str,
        log: str,
        time_ns: int,
        partial_id: str | None = None,
        partial_ordinal: int = 0,
        partial_last: bool = False,
    ) -> None:
        """Encode one record; a buffer past fluentd-buffer-limit is delivered at once."""
        record = dict(self.base_record)
        record["source"] = stream
        record["log"] = log[:-1] if log.endswith("\n") else log
        if partial_id is not None:
            record["partial_message"] = "true"
            record["partial_id"] = partial_id
            record["partial_ordinal"] = str(partial_ordinal)
            record["partial_last"] = "true" if partial_last else "false"
        when: EventTime | int = (
            EventTime.from_ns(time_ns) if self.sub_second else time_ns // 1_000_000_000
        )
        if self.request_ack:
            chunk = os.urandom(12).hex()
            message = packb([self.tag, when, record, {"chunk": chunk}])
            self._pending.append((message, chunk.encode(), len(log)))
        else:
            message = packb([self.tag, when, record])
            self._pending.append((message, None, len(log)))
        self._pending_bytes += len(message)
        if self._pending_bytes >= self.buffer_limit:
            self.flush()

    @property
    def pending(self) -> int:
        """Messages not yet delivered."""
        return len(self._pending)

    def flush(self) -> None:
        """Deliver every pending message (see class doc); never raises."""
        failures = 0
        while self._pending:
            try:
                if self._sock is None or self._peer_closed():
                    self.stats.sink_state = "connecting"
                    self.connect()
                self._deliver()
                failures = 0
            except OSError as exc:
                self._close_socket()
                failures += 1
                self.stats.sink_error(f"fluentd {self.address}: {exc}", state="down")
                if 0 <= self.max_retries < failures or self.lifecycle.expired():
                    self._drop_pending()
                    return
                self.lifecycle.sleep(min(self.retry_wait * 1.5 ** (failures - 1), MAX_RETRY_WAIT))
                if self.lifecycle.expired():
                    self._drop_pending()
                    return

    def _deliver(self) -> None:
        """Send the pending messages; with acks, in windows whose acks are awaited."""
        sock = self._sock
        assert sock is not None
        while self._pending:
            window = self._pending[:ACK_WINDOW] if self.request_ack else self._pending
            sock.sendall(b"".join(message for message, _, _ in window))
            if self.request_ack:
                for _, chunk, _ in window:
                    answer = _read_ack(sock)
                    if answer != chunk:
                        raise OSError(f"ack mismatch: expected {chunk!r}, got {answer!r}")
            self._delivered(len(window))

    def _delivered(self, count: int) -> None:
        done = self._pending[:count]
        del self._pending[:count]
        self._pending_bytes -= sum(len(message) for message, _, _ in done)
        self.stats.written_lines += count
        self.stats.written_bytes += sum(size for _, _, size in done)
        self.stats.sink_state = "ok"
        self.sent_messages += count

    def _drop_pending(self) -> None:
        self.stats.sink_dropped_lines += len(self._pending)
        self.stats.sink_dropped_bytes += sum(size for _, _, size in self._pending)
        self._pending.clear()
        self._pending_bytes = 0

    def close(self) -> None:
        """Deliver what is left (within the shutdown deadline) and close the connection."""
        try:
            self.flush()
        finally:
            self._close_socket()
            self.stats.sink_state = "closed"


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("connection closed while waiting for an ack")
        data += chunk
    return data


def _read_str(sock: socket.socket) -> bytes:
    """One msgpack str or bin value's bytes."""
    code = _recv_exact(sock, 1)[0]
    if 0xA0 <= code <= 0xBF:
        size = code & 0x1F
    elif code in (0xD9, 0xC4):
        size = _recv_exact(sock, 1)[0]
    elif code in (0xDA, 0xC5):
        size = int.from_bytes(_recv_exact(sock, 2), "big")
    elif code in (0xDB, 0xC6):
        size = int.from_bytes(_recv_exact(sock, 4), "big")
    else:
        raise OSError(f"unexpected msgpack type 0x{code:02x} in an ack")
    return _recv_exact(sock, size)


def _read_ack(sock: socket.socket) -> bytes | None:
    """Read one response map and return its ``ack`` value (None when it has none)."""
    code = _recv_exact(sock, 1)[0]
    if 0x80 <= code <= 0x8F:
        entries = code & 0x0F
    elif code == 0xDE:
        entries = int.from_bytes(_recv_exact(sock, 2), "big")
    else:
        raise OSError(f"unexpected msgpack type 0x{code:02x} for an ack response")
    ack = None
    for _ in range(entries):
        key = _read_str(sock)
        value = _read_str(sock)
        if key == b"ack":
            ack = value
    return ack


def sink_from_options(
    options: dict[str, str],
    *,
    container_id: str,
    container_name: str,
    task: str,
    family: str,
    labels: dict[str, str],
    stats: Stats,
    lifecycle: Lifecycle,
) -> tuple[FluentdSink, bool]:
    """Build the sink from the URI options; also whether to connect lazily (fluentd-async)."""
    if options.get("fluentd-async") and options.get("fluentd-async-connect"):
        raise OptionError("use fluentd-async or fluentd-async-connect, not both")
    address = parse_address(options.get("fluentd-address", ""))
    values = {
        "Name": container_name,
        "ID": container_id[:12],
        "FullID": container_id,
        "TaskID": task,
        "TaskFamily": family,
    }
    tag = render_tag(options.get("tag", "{{.ID}}"), values)
    base = {"container_id": container_id, "container_name": container_name}
    if task:
        base["ecs_task_id"] = task
    if family:
        base["ecs_task_definition"] = family
    base.update(labels)
    lazy = parse_bool(
        "fluentd-async",
        options.get("fluentd-async") or options.get("fluentd-async-connect") or "false",
    )
    max_retries = -1
    if "fluentd-max-retries" in options:
        text = options["fluentd-max-retries"]
        if not text.isdigit():
            raise OptionError(f"fluentd-max-retries: expected a number, got {text!r}")
        max_retries = int(text)
    sink = FluentdSink(
        address,
        tag=tag,
        base_record=base,
        stats=stats,
        lifecycle=lifecycle,
        buffer_limit=parse_size(
            "fluentd-buffer-limit", options.get("fluentd-buffer-limit", "1m"), binary=True
        ),
        retry_wait=parse_duration("fluentd-retry-wait", options.get("fluentd-retry-wait", "1s")),
        max_retries=max_retries,
        request_ack=parse_bool("fluentd-request-ack", options.get("fluentd-request-ack", "false")),
        sub_second=parse_bool(
            "fluentd-sub-second-precision", options.get("fluentd-sub-second-precision", "true")
        ),
    )
    return sink, lazy
