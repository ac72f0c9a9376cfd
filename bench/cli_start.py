"""How fast the CLI starts: `nstask ps`, `validate` and `--help` against ctr's, in one run.

    .venv/bin/python bench/cli_start.py [-n 30] [--nstask PATH] [--no-shim]

Against an idle agent of its own (temporary state and run dirs, containerd namespace
nstask-bench-*, bridge nstaskc0, subnet 10.213.252.0/24, no tasks), it runs each nstask
command N times, each run followed by its ctr baseline (`ctr -n <ns> containers ls` for `ps`
and `validate`, `ctr --help` for `--help`), so machine noise hits both, and prints medians
and ratios. `python -I -S -c pass` is timed too (the floor for any Python program). Unless
--no-shim, it ends with the logging shim's start-up against `python -I -S -c pass`
(bench/shim_start.py has the details and throughput).

Everything it creates is removed at the end: the agent (SIGTERM), its namespace, its bridge
and the temporary directories.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CTR_SOCK = "/run/containerd/containerd.sock"
BRIDGE = "nstaskc0"
SUBNET = "10.213.252.0/24"


def _time(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed ({proc.returncode}): {proc.stderr!r}")
    return took


def _wait_for_agent(nstask: str, env: dict[str, str], agent: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while subprocess.run([nstask, "ps"], env=env, capture_output=True).returncode != 0:
        if agent.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("bench: the agent did not start")
        time.sleep(0.05)


def _ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("-n", type=int, default=30, help="runs of each command (default 30)")
    ap.add_argument("--nstask", default=str(BIN / "nstask"), help="the nstask to time")
    ap.add_argument("--no-shim", action="store_true", help="skip the shim start-up figure")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (it starts an agent)")
    tag = f"{os.getpid():x}"
    base = Path(tempfile.mkdtemp(prefix="nstask-bench-"))
    ns = f"nstask-bench-{tag}"
    sock = str(base / "run" / "nstask.sock")
    env = {
        **os.environ,
        "NSTASK_SOCKET": sock,
        "NSTASK_NETNS_PREFIX": f"nstask-c{tag}-",
        "NSTASK_CNI_CACHE_DIR": str(base / "cni"),
        "NSTASK_IPAM_DATA_DIR": str(base / "ipam"),
    }
    agent = None
    try:
        with open(base / "agent.log", "wb") as log:
            agent = subprocess.Popen(
                [
                    *(args.nstask, "agent", "--state-dir", str(base / "state")),
                    *("--run-dir", str(base / "run"), "--namespace", ns),
                    *("--bridge", BRIDGE, "--subnet", SUBNET),
                    *("--network-name", f"nstask-bench-{tag}"),
                ],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        _wait_for_agent(args.nstask, env, agent)
        ctr_ls = ["ctr", "--address", CTR_SOCK, "-n", ns, "containers", "ls"]
        pairs = {
            "ps": ([args.nstask, "ps"], ctr_ls),
            "validate": ([args.nstask, "validate", str(REPO / "examples" / "hello.json")], ctr_ls),
            "--help": ([args.nstask, "--help"], ["ctr", "--help"]),
        }
        floor = [sys.executable, "-I", "-S", "-c", "pass"]
        ours: dict[str, list[float]] = {k: [] for k in pairs}
        theirs: dict[str, list[float]] = {k: [] for k in pairs}
        floor_times: list[float] = []
        for i in range(args.n + 1):  # the first round warms the page cache, not counted
            for name, (mine, baseline) in pairs.items():
                a, b = _time(mine, env), _time(baseline, env)
                if i:
                    ours[name].append(a)
                    theirs[name].append(b)
            f = _time(floor, env)
            if i:
                floor_times.append(f)
        print(f"CLI start-up, median of {args.n} alternating runs ({args.nstask}):")
        for name, (_, baseline) in pairs.items():
            m_ours, m_theirs = _ms(ours[name]), _ms(theirs[name])
            label = " ".join(baseline[3:] if baseline[1] == "--address" else baseline[1:])
            print(
                f"  nstask {name:<9} {m_ours:7.1f} ms   ctr {label:<28} {m_theirs:6.1f} ms"
                f"   ratio {m_ours / m_theirs:5.2f}x"
            )
        print(f"  python -I -S -c pass {_ms(floor_times):6.1f} ms")
    finally:
        if agent is not None:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
        subprocess.run(["ctr", "--address", CTR_SOCK, "namespaces", "rm", ns], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    if not args.no_shim:
        _shim_figure(args.n)
    return 0


def _shim_figure(n: int) -> None:
    """The logging shim's start-up (spawned as containerd spawns it) against the floor."""
    sys.path.insert(0, str(Path(__file__).parent))
    import shim_start

    with tempfile.TemporaryDirectory(prefix="nstask-bench-") as log_dir:
        shim_start._time_shim(log_dir, -1)
        shim_times, floor_times = [], []
        for index in range(n):
            shim_times.append(shim_start._time_shim(log_dir, index)[0])
            floor_times.append(shim_start._time_baseline(shim_start.BASELINE_PASS, isolated=True))
    m_shim, m_floor = _ms(shim_times), _ms(floor_times)
    print(f"shim start-up, median of {n} (spawn -> readiness):")
    print(
        f"  nstask-shim-logger {m_shim:6.1f} ms   python -I -S -c pass {m_floor:6.1f} ms"
        f"   ratio {m_shim / m_floor:5.2f}x"
    )


if __name__ == "__main__":
    sys.exit(main())
