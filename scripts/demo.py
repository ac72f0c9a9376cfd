"""`make demo`: start the agent (unless one runs), run a web task and the hello task that
fetches its page over the task network, show the output and where the start time went,
then stop everything it started.

Every step is an `nstask` command, printed before it runs, so the demo doubles as a tour.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NSTASK = str(Path(sys.executable).parent / "nstask")


def sh(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess[str]:
    print(f"\n$ nstask {' '.join(args)}", flush=True)
    proc = subprocess.run(
        [NSTASK, *args], text=True, cwd=REPO, stdout=subprocess.PIPE if capture else None
    )
    if capture and proc.stdout:
        print(proc.stdout, end="", flush=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: `nstask {' '.join(args)}` failed with exit code {proc.returncode}")
    return proc


def inspect(task_id: str) -> dict[str, Any]:
    out = subprocess.run(
        [NSTASK, "inspect", task_id], text=True, check=True, stdout=subprocess.PIPE
    ).stdout
    return dict(json.loads(out))


def agent_answers() -> bool:
    return (
        subprocess.run(
            [NSTASK, "ps", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ).returncode
        == 0
    )


def print_timings(title: str, timings: dict[str, float]) -> None:
    print(f"\n{title} (milliseconds):")
    for phase, ms in timings.items():
        print(f"  {phase:<28} {ms:>9.1f}")


def main() -> int:
    started_pid: int | None = None
    web_id: str | None = None
    try:
        if not agent_answers():
            pid = sh("agent", "--detach", capture=True).stdout.strip()
            started_pid = int(pid)
        sh("image", "ls")
        web_id = sh("run", "-d", "examples/web.json", capture=True).stdout.strip()
        deadline = time.monotonic() + 30
        web = inspect(web_id)
        while web["lastStatus"] != "RUNNING" and time.monotonic() < deadline:
            if web["lastStatus"] == "STOPPED":
                raise SystemExit(f"demo: the web task stopped: {web['stopReason']}")
            time.sleep(0.05)
            web = inspect(web_id)
        url = f"http://{web['ip']}:8080/"
        sh("ps")
        sh("stats", "--no-stream")
        hello = sh("run", "-e", f"WEB_URL={url}", "examples/hello.json", check=False, capture=True)
        hello_tasks = json.loads(
            subprocess.run(
                [NSTASK, "ps", "-a", "--json"], text=True, check=True, stdout=subprocess.PIPE
            ).stdout
        )
        hello_task = [t for t in hello_tasks if t["family"] == "hello"][-1]
        print_timings(
            f"hello task {hello_task['id'][:12]}: per-phase timings", hello_task["timings"]
        )
        print_timings(f"web task {web_id[:12]}: per-phase timings", web["timings"])
        sh("rm", hello_task["id"], capture=True)
        sh("stop", web_id, capture=True)
        sh("logs", web_id)
        sh("rm", web_id, capture=True)
        web_id = None
        out = hello.stdout or ""
        ok = hello.returncode == 0 and "hello from the web task" in out
        ok = ok and '"TaskARN": "arn:aws:ecs:' in out  # its own metadata, at 169.254.170.2
        print(
            "\ndemo: "
            + (
                "OK: the hello task read its own task metadata at 169.254.170.2 and fetched "
                "the web task's page over the task network"
                if ok
                else f"FAILED (hello exited {hello.returncode})"
            )
        )
        return 0 if ok else 1
    finally:
        if web_id is not None:
            subprocess.run([NSTASK, "rm", "--force", web_id], stdout=subprocess.DEVNULL)
        if started_pid is not None:
            print(f"\ndemo: stopping the agent it started (pid {started_pid})")
            os.kill(started_pid, signal.SIGTERM)
            for _ in range(100):
                try:
                    os.kill(started_pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
