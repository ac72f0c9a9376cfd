"""Cancelling TaskNetwork.attach kills the plugin that runs (issue 10, item 4).

A list of nstask-bridge (host-local) then a slow plugin of the test's own (`sleep 30` in a
child): the attach is cancelled while the slow plugin sleeps; the cancel returns within a
second, the plugin and its child are gone, the bridge's result stays cached, and the DEL
afterwards removes the veth, the address and the cache entry.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from agent import netns
from agent.config import AgentConfig
from agent.network import TaskNetwork
from cni.builtin import host_veth_name

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)"),
    pytest.mark.skipif(
        not Path("/usr/lib/cni/host-local").exists(), reason="containernetworking-plugins missing"
    ),
]

SLOW_PLUGIN = """#!/bin/sh
# ADD sleeps 30 s in a child (as a plugin waiting on iptables would); DEL succeeds at once.
if [ "$CNI_COMMAND" = ADD ]; then
  echo $$ > {pids}/plugin
  sleep 30 &
  echo $! > {pids}/child
  wait
fi
exit 0
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_cancelled_attach_kills_the_plugin_and_del_cleans_up() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="nstask-t-cancel-"))
    bindir, pids = tmp / "bin", tmp / "pids"
    bindir.mkdir()
    pids.mkdir()
    slow = bindir / "nstask-slow"
    slow.write_text(SLOW_PLUGIN.format(pids=pids))
    slow.chmod(0o755)
    tag = uuid.uuid4().hex[:8]
    bridge = f"nstaskt{random.randint(100000, 999999)}"
    network = f"nstask-t-{tag}"
    conflist = {
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [
            {
                "type": "nstask-bridge",
                "bridge": bridge,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": f"10.213.{random.randint(200, 250)}.0/24"}]],
                    "dataDir": str(tmp / "ipam"),
                },
            },
            {"type": "nstask-slow"},
        ],
    }
    (tmp / "net.conflist").write_text(json.dumps(conflist))
    config = AgentConfig(
        run_dir=tmp / "run",
        cni_cache_dir=tmp / "cache",
        cni_path=(str(bindir), "/usr/lib/cni"),
        conflist_file=tmp / "net.conflist",
    )
    network_obj = TaskNetwork(config)
    name = f"nstask-t-{tag}"
    cid = f"nstask-cancel-{tag}"
    path = netns.create_netns(name)
    links = netns.NetlinkLinks()
    try:

        async def scenario() -> float:
            attach = asyncio.create_task(network_obj.attach(cid, path))
            deadline = time.monotonic() + 10
            while not (pids / "child").exists():
                assert time.monotonic() < deadline, "the slow plugin never started"
                assert not attach.done(), attach
                await asyncio.sleep(0.01)
            t0 = time.monotonic()
            attach.cancel()
            with pytest.raises(asyncio.CancelledError):
                await attach
            return time.monotonic() - t0

        took = asyncio.run(scenario())
        assert took < 1.0, f"the cancel took {took:.2f} s"
        for what in ("plugin", "child"):
            pid = int((pids / what).read_text())
            assert not _alive(pid), f"the slow {what} (pid {pid}) still runs after the cancel"
        # The bridge's part is recorded for the DEL, as after a crash mid-chain.
        entry = network_obj.runtime.cache.read(network, cid, "eth0")
        assert entry is not None and entry.result is not None
        assert links.link_info(None, host_veth_name(cid, "eth0")) is not None

        asyncio.run(network_obj.detach(cid, path))
        assert links.link_info(None, host_veth_name(cid, "eth0")) is None
        assert network_obj.runtime.cache.read(network, cid, "eth0") is None
        ipam = tmp / "ipam" / network
        assert [p.name for p in ipam.iterdir() if p.name[0].isdigit()] == []
    finally:
        netns.remove_netns(name)
        links.delete_link(bridge)
        shutil.rmtree(tmp, ignore_errors=True)
