"""Run a CNI network list with libcni's semantics.

ADD runs the plugins in order, each given the previous result, and caches the final result;
DEL runs them in reverse with that cached result; CHECK in order with it; GC removes cached
attachments that are no longer wanted. Code 11 ("try again later") is retried with backoff.

Locking (cni.lock): each ADD, DEL and CHECK holds the lock of its own attachment (network,
container id, ifname), so operations on different attachments run in parallel and never two
on one attachment; GC holds the host lock exclusively. An ADD can be cancelled from another
thread (`cancel`, a threading.Event): the plugin process running is killed, no further
plugin runs, and the result cache keeps what was added so far, for the caller's DEL.

Unlike libcni, a failed ADD is rolled back here: DEL over the whole list in reverse (DEL must
tolerate missing resources), then the cache entry is dropped, so a failed task start leaves
no IP allocation, veth or iptables chain behind (the leak FACTS.md lists for host-local).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent.errors import NstaskError
from cni.cache import CacheEntry, ResultCache
from cni.config import (
    NetworkConfigList,
    PluginConfig,
    build_plugin_config,
    load_conflist,
    parse_conflist,
    version_at_least,
)
from cni.errors import (
    CODE_RUNTIME_FAILURE,
    CNIError,
    PluginCancelled,
    incompatible_version,
    invalid_environment,
    unknown_container,
)
from cni.invoke import DEFAULT_CNI_PATH, PluginExec, SubprocessExec, build_env, find_plugin, invoke
from cni.lock import DEFAULT_LOCK_PATH, CNILocks, HostLock

__all__ = ["BuiltinPlugin", "CNIRuntime"]

log = structlog.get_logger("nstask.cni")

_CONTAINER_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_BAD_IFNAME_CHARS = re.compile(r"[/:\s]")
Attachment = tuple[str, str]  # (container id, ifname)

FIRST_ADD_LOCK_DIR = "/run/nstask"

# Plugins whose first ADD on a host creates host-wide iptables chains with a check-then-insert
# (go-iptables Exists, then Insert): concurrent first ADDs both find the jump missing and both
# insert it. Seen with plugins 1.1.1 in tests/integration/test_cni_stress.py (eight first ADDs
# at once in a fresh netns): `-A PREROUTING/OUTPUT ... -j CNI-HOSTPORT-DNAT` (portmap) and
# `-A FORWARD ... -j CNI-FORWARD`, `-A CNI-FORWARD ... -j CNI-ADMIN` (firewall) twice, in six
# trials out of six. So a runtime's first ADD of each of them runs alone (an flock of its own);
# once one has succeeded the chains exist, and later ADDs run in parallel.
_FIRST_ADD_ALONE = frozenset({"portmap", "firewall"})


class BuiltinPlugin(Protocol):
    """An in-process plugin: same input as a binary (command, CNI_* env, config)."""

    def run(
        self, command: str, env: Mapping[str, str], config: Mapping[str, Any]
    ) -> dict[str, Any] | None: ...


class CNIRuntime:
    """One network list, its result cache and its locks."""

    def __init__(
        self,
        *,
        conflist: NetworkConfigList | Mapping[str, Any] | str | Path,
        cache_dir: str = "/var/lib/cni",
        cni_path: Sequence[str] = DEFAULT_CNI_PATH,
        lock_path: str = DEFAULT_LOCK_PATH,
        exec: PluginExec | None = None,
        builtins: Mapping[str, BuiltinPlugin] | None = None,
        retries: int = 3,
        retry_delay: float = 0.1,
        lock_timeout: float | None = None,
    ) -> None:
        self.netconf = _as_conflist(conflist)
        self.cache = ResultCache(cache_dir)
        self.cni_path = tuple(cni_path)
        self.locks = CNILocks(lock_path, timeout=lock_timeout)
        self._set_up: set[str] = set()  # _FIRST_ADD_ALONE plugins that have had an ADD
        self.exec: PluginExec = exec if exec is not None else SubprocessExec()
        self.builtins = dict(builtins or {})
        self.retries = retries
        self.retry_delay = retry_delay
        # Called after each plugin's successful ADD (the agent's crash tests hook in here).
        self.after_plugin: Callable[[str], None] | None = None

    @property
    def network(self) -> str:
        return self.netconf.name

    # -- the operations ---------------------------------------------------------------

    def add(
        self,
        container_id: str,
        netns_path: str,
        ifname: str = "eth0",
        *,
        args: Mapping[str, str] | None = None,
        capability_args: Mapping[str, Any] | None = None,
        cancel: threading.Event | None = None,
    ) -> dict[str, Any]:
        """Attach: every plugin in order; on success cache and return the final result.

        When `cancel` is set meanwhile, the plugin running is killed and PluginCancelled is
        raised without a rollback: the cache holds the result up to the last plugin that
        finished, and the caller owes the DEL (as after a crash mid-chain).
        """
        _check_attachment(container_id, ifname)
        if not netns_path:
            raise invalid_environment("ADD needs a network namespace path")
        cargs, caps = dict(args or {}), dict(capability_args or {})
        with self.locks.attachment(self.network, container_id, ifname):
            result = self._add_chain(container_id, netns_path, ifname, cargs, caps, cancel)
        log.debug("cni.add", network=self.network, container_id=container_id, ifname=ifname)
        return result

    def delete(
        self,
        container_id: str,
        netns_path: str | None,
        ifname: str = "eth0",
        *,
        args: Mapping[str, str] | None = None,
        capability_args: Mapping[str, Any] | None = None,
    ) -> None:
        """Detach: every plugin in reverse with the cached result, then drop the cache entry.

        Works without a cache entry (no prevResult) and with the netns gone (the path is
        passed as given, or empty), as the spec asks of DEL. The first plugin error stops
        the chain and keeps the cache entry, so the DEL can be retried.
        """
        _check_attachment(container_id, ifname)
        with self.locks.attachment(self.network, container_id, ifname):
            entry = self.cache.read(self.network, container_id, ifname)
            self._del_chain(
                container_id,
                netns_path or "",
                ifname,
                dict(args if args is not None else (entry.cni_args if entry else {})),
                dict(
                    capability_args
                    if capability_args is not None
                    else (entry.capability_args if entry else {})
                ),
                entry.result if entry else None,
            )
            self.cache.remove(self.network, container_id, ifname)
        log.debug("cni.del", network=self.network, container_id=container_id, ifname=ifname)

    def check(
        self,
        container_id: str,
        netns_path: str,
        ifname: str = "eth0",
        *,
        args: Mapping[str, str] | None = None,
        capability_args: Mapping[str, Any] | None = None,
    ) -> None:
        """Ask every plugin, in order, whether the attachment is still as it was made."""
        _check_attachment(container_id, ifname)
        if self.netconf.disable_check:
            return
        if not version_at_least(self.netconf.cni_version, "0.4.0"):
            raise incompatible_version(
                f"CHECK needs cniVersion 0.4.0 or later, network has {self.netconf.cni_version}"
            )
        with self.locks.attachment(self.network, container_id, ifname):
            entry = self.cache.read(self.network, container_id, ifname)
            if entry is None or entry.result is None:
                raise unknown_container(
                    f"no cached result for {container_id}/{ifname} on network {self.network}"
                ).located(plugin="", command="CHECK", network=self.network)
            cargs = dict(args if args is not None else entry.cni_args)
            caps = dict(capability_args if capability_args is not None else entry.capability_args)
            for plugin in self.netconf.plugins:
                conf = build_plugin_config(
                    self.netconf, plugin, prev_result=entry.result, capability_args=caps
                )
                self._call(plugin, "CHECK", conf, container_id, netns_path, ifname, cargs)

    def gc(self, valid_attachments: Iterable[Attachment]) -> list[CacheEntry]:
        """DEL and forget every cached attachment of this network not in the valid list.

        Then, for cniVersion 1.1.0 lists, send GC to each plugin with the valid list so
        plugins can drop state the cache never knew about. Returns what was removed.
        """
        valid = {(cid, ifname) for cid, ifname in valid_attachments}
        removed: list[CacheEntry] = []
        errors: list[CNIError] = []
        with self.locks.exclusive():
            for entry in self.cache.entries(self.network):
                if (entry.container_id, entry.ifname) in valid:
                    continue
                try:
                    self._del_chain(
                        entry.container_id,
                        entry.netns,
                        entry.ifname,
                        entry.cni_args,
                        entry.capability_args,
                        entry.result,
                    )
                    self.cache.remove(self.network, entry.container_id, entry.ifname)
                    removed.append(entry)
                except CNIError as err:
                    log.warning(
                        "cni.gc.del_failed", error=str(err), container_id=entry.container_id
                    )
                    errors.append(err)
            if self._speaks_1_1() and not self.netconf.disable_gc:
                self._gc_plugins(sorted(valid), errors)
        if errors:
            raise errors[0]
        return removed

    def status(self) -> None:
        """Raise the first plugin's STATUS error (code 50/51); a no-op before 1.1.0."""
        if not self._speaks_1_1():
            return
        with self.locks.shared():
            for plugin in self.netconf.plugins:
                conf = build_plugin_config(self.netconf, plugin)
                self._call(plugin, "STATUS", conf, "", "", "", {})

    def version(self) -> dict[str, dict[str, Any]]:
        """Each plugin type's VERSION answer (`supportedVersions`)."""
        out: dict[str, dict[str, Any]] = {}
        for plugin in self.netconf.plugins:
            conf = {"cniVersion": self.netconf.cni_version}
            out[plugin.type] = self._call(plugin, "VERSION", conf, "", "", "", {}) or {}
        return out

    # -- chains -----------------------------------------------------------------------

    def _add_chain(
        self,
        container_id: str,
        netns: str,
        ifname: str,
        args: dict[str, str],
        caps: dict[str, Any],
        cancel: threading.Event | None = None,
    ) -> dict[str, Any]:
        prev: dict[str, Any] | None = None
        for plugin in self.netconf.plugins:
            if cancel is not None and cancel.is_set():
                raise PluginCancelled(f"ADD cancelled before plugin {plugin.type}").located(
                    plugin=plugin.type, command="ADD", network=self.network
                )
            conf = build_plugin_config(self.netconf, plugin, prev_result=prev, capability_args=caps)
            try:
                with self._first_add(plugin.type):
                    result = self._call(
                        plugin, "ADD", conf, container_id, netns, ifname, args, cancel=cancel
                    )
                if result is None:
                    raise CNIError(CODE_RUNTIME_FAILURE, "ADD printed no result").located(
                        plugin=plugin.type, command="ADD", network=self.network
                    )
            except PluginCancelled:
                raise  # no rollback: the cache keeps what was added, for the caller's DEL
            except CNIError as err:
                self._rollback(container_id, netns, ifname, args, caps, prev, err)
                raise
            prev = result
            # Cache the result so far after every plugin, not only at the end: a runtime that
            # dies mid-chain then still has the addresses a later DEL needs (the firewall and
            # portmap plugins can only remove their rules when given the IPs in prevResult).
            entry = CacheEntry(
                network=self.network,
                container_id=container_id,
                ifname=ifname,
                config=self.netconf.bytes,
                result=prev,
                cni_args=args,
                capability_args=caps,
                netns=netns,
            )
            try:
                self.cache.write(entry)
            except CNIError as err:
                self._rollback(container_id, netns, ifname, args, caps, prev, err)
                raise
            if self.after_plugin is not None:
                self.after_plugin(plugin.type)
        assert prev is not None  # a conflist has at least one plugin
        return prev

    @contextlib.contextmanager
    def _first_add(self, plugin_type: str) -> Iterator[None]:
        """Run the first ADD of a plugin in _FIRST_ADD_ALONE alone (host-wide flock)."""
        if plugin_type not in _FIRST_ADD_ALONE or plugin_type in self._set_up:
            yield
            return
        # One path for the whole host, whatever the runtime's own lock dir: the chains are
        # the host's, so two agents' (or test agents') first ADDs race on them too.
        path = f"{FIRST_ADD_LOCK_DIR}/cni.first-{plugin_type}.lock"
        with HostLock(path, timeout=self.locks.timeout).hold():
            yield
        self._set_up.add(plugin_type)

    def _rollback(
        self,
        container_id: str,
        netns: str,
        ifname: str,
        args: dict[str, str],
        caps: dict[str, Any],
        last_result: dict[str, Any] | None,
        cause: CNIError,
    ) -> None:
        """DEL over the whole list after a failed ADD; DEL errors are noted, not raised."""
        for plugin in reversed(self.netconf.plugins):
            conf = build_plugin_config(
                self.netconf, plugin, prev_result=last_result, capability_args=caps
            )
            try:
                self._call(plugin, "DEL", conf, container_id, netns, ifname, args)
            except CNIError as err:
                log.warning("cni.rollback.del_failed", error=str(err), container_id=container_id)
                cause.add_note(f"rollback: {err}")
        self.cache.remove(self.network, container_id, ifname)

    def _del_chain(
        self,
        container_id: str,
        netns: str,
        ifname: str,
        args: Mapping[str, str],
        caps: Mapping[str, Any],
        cached: dict[str, Any] | None,
    ) -> None:
        for plugin in reversed(self.netconf.plugins):
            conf = build_plugin_config(
                self.netconf, plugin, prev_result=cached, capability_args=caps
            )
            self._call(plugin, "DEL", conf, container_id, netns, ifname, args)

    def _gc_plugins(self, valid: list[Attachment], errors: list[CNIError]) -> None:
        attachments = [{"containerID": cid, "ifname": ifname} for cid, ifname in valid]
        for plugin in self.netconf.plugins:
            conf = build_plugin_config(self.netconf, plugin)
            conf["cni.dev/valid-attachments"] = attachments
            try:
                self._call(plugin, "GC", conf, "", "", "", {})
            except CNIError as err:
                errors.append(err)

    def _speaks_1_1(self) -> bool:
        return version_at_least(self.netconf.cni_version, "1.1.0")

    # -- one plugin call --------------------------------------------------------------

    def _call(
        self,
        plugin: PluginConfig,
        command: str,
        conf: dict[str, Any],
        container_id: str,
        netns: str,
        ifname: str,
        args: Mapping[str, str],
        *,
        cancel: threading.Event | None = None,
    ) -> dict[str, Any] | None:
        """Run one plugin once, retrying code 11 with exponential backoff."""
        env = build_env(
            command,
            container_id=container_id,
            netns=netns,
            ifname=ifname,
            args=args,
            cni_path=self.cni_path,
        )
        attempt = 0
        while True:
            try:
                return self._run_plugin(plugin.type, env, conf, cancel)
            except CNIError as err:
                err.located(plugin=plugin.type, command=command, network=self.network)
                if not err.retryable or attempt >= self.retries:
                    raise
                delay = self.retry_delay * (2**attempt)
                log.info("cni.retry", plugin=plugin.type, command=command, delay=delay)
                if cancel is not None and cancel.wait(delay):
                    raise PluginCancelled(f"{command} cancelled while retrying").located(
                        plugin=plugin.type, command=command, network=self.network
                    ) from err
                if cancel is None:
                    time.sleep(delay)
                attempt += 1

    def _run_plugin(
        self,
        plugin_type: str,
        env: dict[str, str],
        conf: dict[str, Any],
        cancel: threading.Event | None = None,
    ) -> dict[str, Any] | None:
        builtin = self.builtins.get(plugin_type)
        if builtin is None:
            path = find_plugin(plugin_type, self.cni_path)
            return invoke(self.exec, path, env, conf, plugin=plugin_type, cancel=cancel)
        # An in-process plugin runs to its end (milliseconds); the chain stops after it.
        try:
            return builtin.run(env["CNI_COMMAND"], env, conf)
        except CNIError:
            raise
        except NstaskError as exc:
            raise CNIError(CODE_RUNTIME_FAILURE, exc.message) from exc


def _as_conflist(value: NetworkConfigList | Mapping[str, Any] | str | Path) -> NetworkConfigList:
    if isinstance(value, NetworkConfigList):
        return value
    if isinstance(value, Path) or (isinstance(value, str) and not value.lstrip().startswith("{")):
        return load_conflist(value)
    return parse_conflist(value)


def _check_attachment(container_id: str, ifname: str) -> None:
    """Refuse what the spec forbids before any plugin sees it (code 4)."""
    if not _CONTAINER_ID_RE.fullmatch(container_id):
        raise invalid_environment(
            f"container id {container_id!r} must match {_CONTAINER_ID_RE.pattern}"
        )
    if not ifname or len(ifname) > 15 or ifname in (".", "..") or _BAD_IFNAME_CHARS.search(ifname):
        raise invalid_environment(
            f"interface name {ifname!r} must be 1-15 characters without '/', ':' or spaces"
        )
