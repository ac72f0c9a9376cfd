"""Network namespaces and links, through pyroute2: the only module that imports it.

Everything here is synchronous; the agent calls it through `asyncio.to_thread`. Every
pyroute2 `NetlinkError` and every `OSError` is turned into `agent.errors.NetworkError`
here, naming the object and the operation. Steps are idempotent "ensure" steps: an
object that already exists (EEXIST) is success, then we confirm it is visible.

Why no fork: pyroute2 enters a netns by forking a helper process. Forking a threaded
process (asyncio + gRPC threads) is fragile, so we do the one namespace-sensitive syscall
in a short-lived thread of our own instead: `setns`/`unshare` affect only the calling
thread, and a netlink socket stays bound to the netns it was created in.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import errno
import ipaddress
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkError

from agent.errors import NetworkError
from cni.builtin import LinkInfo, Route, VethPair, host_veth_name

__all__ = [
    "NETNS_DIR",
    "LinkInfo",
    "NetlinkLinks",
    "Route",
    "VethPair",
    "create_netns",
    "host_veth_name",
    "interface_counters",
    "list_netns",
    "netns_exists",
    "netns_path",
    "remove_netns",
]

NETNS_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000
_MNT_DETACH = 2
_IFF_UP = 0x1
_NETLINK_ROUTE = 0
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


# -- errors -----------------------------------------------------------------------------


@contextlib.contextmanager
def _wrapped(operation: str, obj: str) -> Iterator[None]:
    """Turn pyroute2 / OS errors into NetworkError("<operation> <obj>: <reason>")."""
    try:
        yield
    except NetworkError:
        raise
    except NetlinkError as exc:
        code = getattr(exc, "code", 0)
        reason = os.strerror(code) if code else str(exc)
        raise NetworkError(
            f"{operation} {obj}: {reason}", operation=operation, object=obj, errno=code
        ) from exc
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise NetworkError(
            f"{operation} {obj}: {reason}", operation=operation, object=obj, errno=exc.errno
        ) from exc


def _errno_of(exc: BaseException) -> int | None:
    if isinstance(exc, NetlinkError):
        return int(exc.code)
    if isinstance(exc, OSError):
        return exc.errno
    return None


@contextlib.contextmanager
def _tolerate(*codes: int) -> Iterator[None]:
    """Swallow the named errnos (EEXIST for "ensure", ENODEV for "delete if present")."""
    try:
        yield
    except (NetlinkError, OSError) as exc:
        if _errno_of(exc) not in codes:
            raise


# -- namespaces -------------------------------------------------------------------------


def netns_path(name: str) -> str:
    """`/run/netns/<name>`, as `ip netns` names it."""
    if not name or "/" in name or name in (".", "..") or len(name) > 255:
        raise NetworkError(f"netns name {name!r} is not a plain file name", object=name)
    return os.path.join(NETNS_DIR, name)


def netns_exists(name: str) -> bool:
    """True when the path is a mounted network namespace (not a stale empty file)."""
    return _is_netns(netns_path(name))


def _is_netns(path: str) -> bool:
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise NetworkError(f"stat netns {path}: {exc.strerror}", object=path) from exc


def list_netns(prefix: str = "") -> list[str]:
    """Names under /run/netns starting with `prefix`, sorted."""
    with _wrapped("list netns in", NETNS_DIR):
        return sorted(n for n in pr_netns.listnetns(NETNS_DIR) if n.startswith(prefix))


def create_netns(name: str) -> str:
    """Create (or find) the named netns with `lo` up; returns its path.

    Idempotent: an existing netns is success. A stale mount point left by a crash between
    file creation and bind mount is removed and the netns is made anew.
    """
    path = netns_path(name)
    if not _is_netns(path):
        with _wrapped("remove stale netns file", path), _tolerate(errno.ENOENT):
            os.unlink(path)
        with _wrapped("create netns", path):
            _in_fresh_thread(lambda: _unshare_and_mount(path))
    try:
        with _wrapped("set lo up in netns", path), _ipr(path) as ipr:
            ipr.link("set", index=_lookup(ipr, "lo", path), state="up")
    except NetworkError:
        remove_netns(name)
        raise
    return path


def _unshare_and_mount(path: str) -> None:
    """In a throw-away thread: new netns for this thread, bind-mounted at `path`."""
    if _libc.unshare(_CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")
    try:
        # pyroute2's attach() does what `ip netns add` does: make /run/netns a shared
        # mount, create the file and bind-mount /proc/<tid>/ns/net onto it.
        pr_netns.attach(path, threading.get_native_id())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def remove_netns(name: str) -> None:
    """Unmount and unlink; no error when it is already gone."""
    path = netns_path(name)
    with _wrapped("remove netns", path):
        if _libc.umount2(path.encode(), _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOENT):  # not mounted / gone: fine
                raise OSError(err, os.strerror(err))
        with _tolerate(errno.ENOENT):
            os.unlink(path)


def _in_fresh_thread(fn: Callable[[], T]) -> T:
    """Run `fn` in a new thread and return its result (namespace changes die with it)."""
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=runner, name="nstask-netns")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def _netlink_socket_in(path: str) -> socket.socket:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")
    finally:
        os.close(fd)
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_ROUTE)


class _HostNetlink:
    """Every host-netns request of the process, made on one thread over one IPRoute kept
    open: setting an IPRoute up costs more CPU than the requests an ADD makes with it
    (measured: 0.3 ms each, six per ADD when each step opened its own). One thread, because
    pyroute2 keeps an IPRoute's event loop per thread and a thread's end would drop it
    unclosed; it is closed at exit, on that thread. It binds no multicast groups, so it
    receives only answers. (A socket in a task's netns is never kept: it would hold that
    namespace alive after its removal.)"""

    def __init__(self) -> None:
        self._reset()
        # A forked child has no such thread: it starts its own on its first request.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._start = threading.Lock()
        self._requests: queue.SimpleQueue[Any] | None = None
        self._ipr: Any = None

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        requests = self._requests
        if requests is None:
            with self._start:
                if self._requests is None:
                    self._requests = queue.SimpleQueue()
                    threading.Thread(
                        target=self._serve,
                        args=(self._requests,),
                        name="nstask-netlink",
                        daemon=True,
                    ).start()
                    atexit.register(self._close, self._requests)
                requests = self._requests
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        requests.put((done, method, args, kwargs))
        return done.result()

    def _serve(self, requests: queue.SimpleQueue[Any]) -> None:
        while True:
            done, method, args, kwargs = requests.get()
            try:
                done.set_result(self._run(method, args, kwargs))
            except BaseException as exc:
                done.set_exception(exc)

    def _close(self, requests: queue.SimpleQueue[Any]) -> None:
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        requests.put((done, "close", (), {}))
        with contextlib.suppress(Exception):
            done.result(timeout=5)

    def _run(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if method == "close":
            ipr, self._ipr = self._ipr, None
            if ipr is not None:
                ipr.close()
            return None
        if self._ipr is None:
            self._ipr = IPRoute()
        try:
            result = getattr(self._ipr, method)(*args, **kwargs)
            # A dump may come back as a generator: read it here, on the socket's thread.
            return result if isinstance(result, list | tuple | int | None) else list(result)
        except NetlinkError:
            raise  # the kernel's answer: the socket is in step
        except BaseException:
            # Anything else may have left a request unanswered on it: start afresh.
            ipr, self._ipr = self._ipr, None
            with contextlib.suppress(Exception):
                ipr.close()
            raise


class _HostIPRoute:
    """The IPRoute methods this module uses, made on `_HostNetlink`'s thread."""

    def __init__(self, host: _HostNetlink) -> None:
        self._host = host

    def link(self, *args: Any, **kwargs: Any) -> Any:
        return self._host.call("link", *args, **kwargs)

    def addr(self, *args: Any, **kwargs: Any) -> Any:
        return self._host.call("addr", *args, **kwargs)

    def route(self, *args: Any, **kwargs: Any) -> Any:
        return self._host.call("route", *args, **kwargs)

    def link_lookup(self, *args: Any, **kwargs: Any) -> Any:
        return self._host.call("link_lookup", *args, **kwargs)


_HOST = _HostIPRoute(_HostNetlink())


@contextlib.contextmanager
def _ipr(path: str | None) -> Iterator[Any]:
    """An IPRoute in the host netns (None: the process's kept one) or in the netns at `path`
    (a new one, closed on exit)."""
    if path is None:
        yield _HOST
        return
    if not _is_netns(path):
        raise NetworkError(f"open netns {path}: not a network namespace", object=path)
    sock = _in_fresh_thread(lambda: _netlink_socket_in(path))
    ipr = IPRoute(fileno=sock.detach())
    try:
        yield ipr
    finally:
        ipr.close()


def _lookup(ipr: Any, name: str, where: str | None) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        place = f" in {where}" if where else ""
        raise NetworkError(f"find link {name}{place}: no such device", object=name)
    return int(found[0])


def _mac_pinned(name: str) -> bool:
    """Whether the host link's MAC was set (NET_ADDR_SET), not chosen by the kernel."""
    try:
        with open(f"/sys/class/net/{name}/addr_assign_type") as f:
            return f.read().strip() == "3"
    except OSError:
        return False


def _add_addresses(ipr: Any, index: int, cidrs: Sequence[str]) -> None:
    for cidr in cidrs:
        ip, prefixlen = _split_cidr(cidr)
        with _tolerate(errno.EEXIST):
            ipr.addr("add", index=index, address=ip, prefixlen=prefixlen)


def _find(ipr: Any, name: str) -> Any | None:
    with _tolerate(errno.ENODEV):
        for msg in ipr.link("get", ifname=name):
            return msg
    return None


def _info(msg: Any) -> LinkInfo:
    master = msg.get("master")
    return LinkInfo(
        name=str(msg.get("ifname")),
        index=int(msg["index"]),
        mac=str(msg.get("address") or ""),
        mtu=int(msg.get("mtu") or 0),
        kind=str(msg.get(("linkinfo", "kind")) or ""),
        master=int(master) if master else None,
        up=bool(msg["flags"] & _IFF_UP),
    )


def _split_cidr(cidr: str) -> tuple[str, int]:
    iface = ipaddress.ip_interface(cidr)
    return str(iface.ip), iface.network.prefixlen


# -- interface counters (stats) ---------------------------------------------------------

# /proc/net/dev columns after "<ifname>:", in order; the names are Docker's stats JSON keys.
_DEV_RX = ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped")
_DEV_TX = ("tx_bytes", "tx_packets", "tx_errors", "tx_dropped")


def parse_net_dev(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/dev as {ifname: {rx_bytes, rx_packets, rx_errors, rx_dropped, tx_...}}."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        cols = rest.split()
        if not sep or len(cols) < 16:
            continue
        nums = [int(c) for c in cols]
        # receive: bytes packets errs drop fifo frame compressed multicast; transmit: 8 more
        out[name.strip()] = dict(zip(_DEV_RX + _DEV_TX, nums[0:4] + nums[8:12], strict=True))
    return out


def _read_net_dev_in(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")
    finally:
        os.close(fd)
    # thread-self: /proc/net (= /proc/self/net) shows the netns of the main thread, not ours.
    with open("/proc/thread-self/net/dev") as f:
        return f.read()


def interface_counters(netns_path: str) -> dict[str, dict[str, int]]:
    """The traffic counters of every interface in the netns at `netns_path` (lo included),
    or {} when the netns is gone (a task stopping). Read from /proc/net/dev in a thread that
    joined the netns: about 6x cheaper than a netlink dump through pyroute2 (measured
    here: 0.21 ms against 1.28 ms per call, most of it pyroute2's IPRoute set-up)."""
    if not _is_netns(netns_path):
        return {}
    try:
        text = _in_fresh_thread(lambda: _read_net_dev_in(netns_path))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise NetworkError(
            f"read interface counters in {netns_path}: {exc.strerror}", object=netns_path
        ) from exc
    return parse_net_dev(text)


# -- links ------------------------------------------------------------------------------


class NetlinkLinks:
    """`cni.builtin.Links` over rtnetlink. Names and steps follow ip-link(8)."""

    def ensure_bridge(
        self, name: str, *, addresses: Sequence[str] = (), mtu: int | None = None
    ) -> LinkInfo:
        """`ip link add <name> type bridge`, up, mtu, gateway addresses: all idempotent."""
        with _wrapped("ensure bridge", name), _ipr(None) as ipr:
            msg = _find(ipr, name)
            if msg is None:
                extra = {"mtu": mtu} if mtu else {}
                with _tolerate(errno.EEXIST):
                    ipr.link("add", ifname=name, kind="bridge", **extra)
                msg = _find(ipr, name)
                if msg is None:
                    raise NetworkError(f"ensure bridge {name}: not visible after add", object=name)
            info = _info(msg)
            if info.kind != "bridge":
                raise NetworkError(
                    f"ensure bridge {name}: a {info.kind or 'non-bridge'} link has that name",
                    object=name,
                )
            if mtu and info.mtu != mtu:
                ipr.link("set", index=info.index, mtu=mtu)
            if not _mac_pinned(name):
                # Left to the kernel, a bridge takes the lowest MAC of its ports, so a task
                # joining or leaving can change the gateway's MAC under the others: their
                # ARP entries go stale and their traffic to the gateway (the metadata
                # endpoint) hangs for seconds. Setting it, even to itself, pins it.
                ipr.link("set", index=info.index, address=info.mac)
            if not info.up:
                ipr.link("set", index=info.index, state="up")
            _add_addresses(ipr, info.index, addresses)
            return dataclasses.replace(info, mtu=mtu or info.mtu, up=True)

    def create_veth(
        self,
        host_name: str,
        peer_name: str,
        *,
        netns_path: str,
        peer_final_name: str = "eth0",
        master_index: int | None = None,
        mtu: int | None = None,
        addresses: Sequence[str] = (),
        routes: Sequence[Route] = (),
    ) -> VethPair:
        """A veth pair: host side `host_name` (a port of bridge `master_index`), peer
        `peer_final_name` in the netns with `addresses` and `routes` (the route's ifname is
        the peer's).

        The peer is created directly inside the netns under `peer_name` (so it never
        clashes with a host link), then renamed, then both ends go up. When `host_name`
        already exists and its peer is our `peer_final_name` in that netns, this is a
        repeat of an earlier call and succeeds. On a failure half-way the pair is removed.
        Nine requests for one address and two routes, three of them link reads: the add
        carries both ends' MTU and the bridge port, the rename brings the peer up. (In
        pyroute2 an acknowledged request costs about 1 M instructions, a link read 2 M,
        measured with callgrind; before, an ADD took twice the instructions.)
        """
        obj = f"veth {host_name}/{peer_final_name} in {netns_path}"
        extra: dict[str, Any] = {"mtu": mtu} if mtu else {}
        port: dict[str, Any] = {"master": master_index} if master_index else {}
        peer: Any = None
        with _wrapped("create", obj), _ipr(None) as host, _ipr(netns_path) as ns:
            existing = _find(host, host_name)
            if existing is not None:
                peer = _find(ns, peer_final_name)
                if (
                    peer is None
                    or _info(existing).kind != "veth"
                    or peer.get("link") != existing["index"]
                ):
                    raise NetworkError(
                        f"create {obj}: {host_name} exists and is not this container's veth",
                        object=host_name,
                    )
            else:
                fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    host.link(
                        "add",
                        ifname=host_name,
                        kind="veth",
                        peer={"ifname": peer_name, "net_ns_fd": fd, **extra},
                        **port,
                        **extra,
                    )
                finally:
                    os.close(fd)
            try:
                if existing is None:
                    peer = ns.link("get", ifname=peer_name)[0]
                    ns.link("set", index=peer["index"], ifname=peer_final_name, state="up")
                else:
                    ns.link("set", index=peer["index"], state="up", **extra)
                _add_addresses(ns, peer["index"], addresses)
                for route in routes:
                    gateway = {"gateway": route.gateway} if route.gateway else {}
                    with _tolerate(errno.EEXIST):
                        ns.route("add", dst=route.dst, oif=peer["index"], **gateway)
                host_msg = _find(host, host_name)
                if host_msg is None:
                    raise NetworkError(f"create {obj}: {host_name} vanished", object=host_name)
                # On a repeat, also what the add would have set.
                again = {**port, **extra} if existing is not None else {}
                host.link("set", index=host_msg["index"], state="up", **again)
            except BaseException:
                with _tolerate(errno.ENODEV):
                    host.link("del", ifname=host_name)
                raise
            return VethPair(
                int(host_msg["index"]),
                str(host_msg.get("address") or ""),
                str(peer.get("address") or ""),
            )

    def delete_link(self, name: str, *, netns_path: str | None = None) -> bool:
        """`ip link del <name>`; True when something was deleted, False when absent."""
        if netns_path is not None and not _is_netns(netns_path):
            return False
        with _wrapped("delete link", name), _ipr(netns_path) as ipr:
            try:
                ipr.link("del", ifname=name)
            except NetlinkError as exc:
                if exc.code == errno.ENODEV:
                    return False
                raise
            return True

    def link_info(self, netns_path: str | None, name: str) -> LinkInfo | None:
        """`ip link show <name>` as a LinkInfo, or None (also when the netns is gone)."""
        if netns_path is not None and not _is_netns(netns_path):
            return None
        with _wrapped("show link", name), _ipr(netns_path) as ipr:
            msg = _find(ipr, name)
            return None if msg is None else _info(msg)

    def list_links(
        self, prefix: str = "", master: str | None = None, *, netns_path: str | None = None
    ) -> list[LinkInfo]:
        """Links whose name starts with `prefix` (and enslaved to `master`), by name."""
        with _wrapped("list links", prefix or "*"), _ipr(netns_path) as ipr:
            master_index = None
            if master is not None:
                found = _find(ipr, master)
                if found is None:
                    return []
                master_index = int(found["index"])
            links = [_info(msg) for msg in ipr.link("dump")]
        return sorted(
            (
                link
                for link in links
                if link.name.startswith(prefix)
                and (master_index is None or link.master == master_index)
            ),
            key=lambda link: link.name,
        )
