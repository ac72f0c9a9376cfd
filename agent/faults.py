"""Fault injection for crash tests: `NSTASK_FAULT=<point>` makes the agent kill itself with
SIGKILL when it reaches that point, so a test can check that the next agent finishes or
rolls back whatever was half done. Unset (always, outside tests) it costs one dict lookup.

Points: netns (after the netns is created), cni.<plugin type> (after that plugin's ADD),
cni (after the whole list), images (after unpack), container (after Containers.Create),
task (after Tasks.Create), started (after Tasks.Start), exited (after a container's exit is
recorded, before the task is stopped for it), stop (after the stop signal, before teardown),
teardown (after the containerd objects are removed, before CNI DEL).
"""

from __future__ import annotations

import os
import signal

ENV = "NSTASK_FAULT"


def point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
