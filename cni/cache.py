"""The result cache, laid out as libcni lays it out.

`<cache_dir>/results/<network>-<containerID>-<ifname>`, mode 0600, one JSON object holding
what DEL, CHECK and GC need later: the config the attachment was made with, the final ADD
result, the CNI_ARGS and capability args. A DEL after an agent restart, or with the netns
already gone, depends on this file, so it is written atomically and a file that cannot be
read is an error, never "no entry".
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cni.errors import decoding_failure, io_failure

__all__ = ["CACHE_KIND", "CacheEntry", "ResultCache"]

CACHE_KIND = "cniCacheV1"


@dataclass(frozen=True)
class CacheEntry:
    """One cached attachment (a container's interface on one network)."""

    network: str
    container_id: str
    ifname: str
    config: bytes
    result: dict[str, Any] | None
    cni_args: dict[str, str] = field(default_factory=dict)
    capability_args: dict[str, Any] = field(default_factory=dict)
    netns: str = ""
    path: str = ""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": CACHE_KIND,
            "containerId": self.container_id,
            "ifName": self.ifname,
            "networkName": self.network,
            # libcni keeps the config bytes; Go encodes []byte as base64.
            "config": base64.b64encode(self.config).decode(),
            "cniArgs": [[k, v] for k, v in self.cni_args.items()],
            "capabilityArgs": dict(self.capability_args),
            "netns": self.netns,
        }
        if self.result is not None:
            body["result"] = self.result
        return body


class ResultCache:
    """Read, write, remove and list cached results under `cache_dir`."""

    def __init__(self, cache_dir: str) -> None:
        self.cache_dir = cache_dir
        self.results_dir = os.path.join(cache_dir, "results")

    def path_for(self, network: str, container_id: str, ifname: str) -> str:
        return os.path.join(self.results_dir, f"{network}-{container_id}-{ifname}")

    def write(self, entry: CacheEntry) -> str:
        """Write atomically (temp file in the same directory, fsync, rename)."""
        path = self.path_for(entry.network, entry.container_id, entry.ifname)
        data = json.dumps(entry.to_json()).encode()
        try:
            os.makedirs(self.results_dir, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".nstask-", dir=self.results_dir)
            try:
                os.fchmod(fd, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise io_failure(f"cannot write CNI cache {path}: {exc.strerror}") from exc
        return path

    def read(self, network: str, container_id: str, ifname: str) -> CacheEntry | None:
        """The entry, or None when there is no file. A bad file raises (code 5 or 6)."""
        return self._load(self.path_for(network, container_id, ifname), missing_ok=True)

    def remove(self, network: str, container_id: str, ifname: str) -> bool:
        path = self.path_for(network, container_id, ifname)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise io_failure(f"cannot remove CNI cache {path}: {exc.strerror}") from exc
        return True

    def entries(self, network: str | None = None) -> list[CacheEntry]:
        """Every cached attachment (of `network` when given), for GC and leak checks."""
        try:
            names = sorted(os.listdir(self.results_dir))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise io_failure(f"cannot list {self.results_dir}: {exc.strerror}") from exc
        out = []
        for name in names:
            if name.startswith("."):
                continue  # a temp file of an interrupted write
            if network is not None and not name.startswith(f"{network}-"):
                continue
            entry = self._load(os.path.join(self.results_dir, name), missing_ok=True)
            if entry is not None and (network is None or entry.network == network):
                out.append(entry)
        return out

    def _load(self, path: str, *, missing_ok: bool) -> CacheEntry | None:
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            if missing_ok:
                return None
            raise
        except OSError as exc:
            raise io_failure(f"cannot read CNI cache {path}: {exc.strerror}") from exc
        try:
            return _decode(json.loads(raw), path)
        except (ValueError, TypeError, KeyError) as exc:
            raise decoding_failure(f"CNI cache {path} is unreadable", str(exc)) from exc


def _decode(body: Mapping[str, Any], path: str) -> CacheEntry:
    if body.get("kind") != CACHE_KIND:
        raise ValueError(f"kind is {body.get('kind')!r}, want {CACHE_KIND!r}")
    result = body.get("result")
    if result is not None and not isinstance(result, dict):
        raise TypeError("result is not an object")
    return CacheEntry(
        network=str(body["networkName"]),
        container_id=str(body["containerId"]),
        ifname=str(body["ifName"]),
        config=base64.b64decode(body.get("config", ""), validate=True),
        result=result,
        cni_args={str(k): str(v) for k, v in body.get("cniArgs") or []},
        capability_args=dict(body.get("capabilityArgs") or {}),
        netns=str(body.get("netns", "")),
        path=path,
    )
