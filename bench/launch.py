"""Launch latency: `nstask run --rm` against `ctr run --rm --cni`, alternating, in one run.

Both run a one-container task of the same busybox image running `true`, on a network of
bridge + host-local + portmap + firewall. Prints the median of each, the ratio, and where
nstask's time goes by phase (from the agent's own timings).

    .venv/bin/python bench/launch.py [-n 20]

It starts an agent of its own (temporary state, namespace nstask-bench-*, bridge nstaskb0,
subnet 10.213.250.0/24). For ctr, which reads its network from /etc/cni/net.d and plugins from
/opt/cni/bin, it writes one conflist there (and links /opt/cni/bin to /usr/lib/cni if that
directory does not exist) and removes both at the end. It refuses to run if /etc/cni/net.d
already holds other configurations (ctr would pick those instead).
"""

from __future__ import annotations

import argparse
import json
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
IMAGE = "nstask.local/busybox:latest"
CTR_SOCK = "/run/containerd/containerd.sock"
CNI_CONF_DIR = Path("/etc/cni/net.d")
CNI_BIN_DIR = Path("/opt/cni/bin")


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload, no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("-n", type=int, default=20, help="lifecycles of each (default 20)")
    ap.add_argument(
        "--warm-pool-size",
        type=int,
        default=2,
        help="the agent's warm pool (default 2, as the agent's default; 0: off)",
    )
    ap.add_argument(
        "--unconfined",
        action="store_true",
        help="run nstask's container without seccomp, as ctr run does (default: profile)",
    )
    ap.add_argument(
        "--pause", type=float, default=0.5, help="seconds of quiet before each run (0.5)"
    )
    args = ap.parse_args()
    tag = f"{os.getpid():x}"
    base = Path(tempfile.mkdtemp(prefix="nstask-bench-"))
    ns = f"nstask-bench-{tag}"
    sock = str(base / "nstask.sock")
    env = {
        **os.environ,
        "NSTASK_SOCKET": sock,
        "NSTASK_NETNS_PREFIX": f"nstask-b{tag}-",
        "NSTASK_CNI_CACHE_DIR": str(base / "cni"),
        "NSTASK_IPAM_DATA_DIR": str(base / "ipam"),
        "NSTASK_WARM_POOL_SIZE": str(args.warm_pool_size),
    }
    created: list[Path] = []
    agent = None
    try:
        if CNI_CONF_DIR.is_dir() and any(CNI_CONF_DIR.iterdir()):
            print(
                f"bench: {CNI_CONF_DIR} already holds configurations; ctr --cni would use "
                "them, so the comparison would not be fair. Move them aside first."
            )
            return 2
        _ctr_network(created, base)
        agent = start_agent(
            base,
            ns,
            env,
            bridge="nstaskb0",
            subnet="10.213.250.0/24",
            network=f"nstask-bench-{tag}",
        )
        td = base / "true.json"
        td.write_text(
            json.dumps(
                {
                    "family": "bench",
                    "containerDefinitions": [
                        {
                            "name": "true",
                            "image": IMAGE,
                            "essential": True,
                            "command": ["true"],
                            # ctr run applies no seccomp profile; nstask does by default.
                            **(
                                {"dockerSecurityOptions": ["seccomp=unconfined"]}
                                if args.unconfined
                                else {}
                            ),
                        }
                    ],
                }
            )
        )
        nstask_cmd = [str(BIN / "nstask"), "run", "--rm", str(td)]
        ours: list[float] = []
        theirs: list[float] = []
        # One warm-up of each (first bridge creation, page cache), not counted.
        # A pause before each run, for both alike, so each starts on a quiet host (the
        # agent's background work after a run, such as refilling its warm pool, is not
        # charged to the next ctr run, nor ctr's shim exits to the next nstask run).
        for i in range(args.n + 1):
            time.sleep(args.pause)
            a = _time(nstask_cmd, env)
            time.sleep(args.pause)
            b = _time(
                [
                    "ctr",
                    "--address",
                    CTR_SOCK,
                    "-n",
                    ns,
                    "run",
                    "--rm",
                    "--cni",
                    IMAGE,
                    f"nstask-bench-{tag}-{i}",
                    "true",
                ],
                env,
            )
            if i:
                ours.append(a)
                theirs.append(b)
        phases = _phases(env, td)
        m_ours, m_theirs = statistics.median(ours), statistics.median(theirs)
        print(
            f"lifecycles: {args.n} each, alternating; warm pool size {args.warm_pool_size}; "
            f"seccomp {'off' if args.unconfined else 'default profile'} (ctr: none)"
        )
        print(
            f"nstask run --rm      median {m_ours * 1000:7.1f} ms  "
            f"(min {min(ours) * 1000:.1f}, max {max(ours) * 1000:.1f})"
        )
        print(
            f"ctr run --rm --cni   median {m_theirs * 1000:7.1f} ms  "
            f"(min {min(theirs) * 1000:.1f}, max {max(theirs) * 1000:.1f})"
        )
        print(f"ratio nstask/ctr: {m_ours / m_theirs:.2f}x")
        print("nstask phases (median ms over 5 extra runs, from `nstask inspect`):")
        for name, ms in phases.items():
            print(f"  {name:<28} {ms:8.1f}")
        return 0
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
        for p in reversed(created):
            if p.is_symlink() or p.is_file():
                p.unlink()
        run(["ip", "link", "del", "nstaskb0"])
        run(["ip", "link", "del", "nstask-bench0"])
        for img in run(["ctr", "-n", ns, "images", "ls", "-q"]).stdout.split():
            run(["ctr", "-n", ns, "images", "rm", "--sync", img])
        run(["ctr", "namespaces", "rm", ns])
        shutil.rmtree(base, ignore_errors=True)


def _ctr_network(created: list[Path], base: Path) -> None:
    """The same chain for ctr: bridge + host-local + portmap + firewall."""
    CNI_CONF_DIR.mkdir(parents=True, exist_ok=True)
    conf = CNI_CONF_DIR / "10-nstask-bench.conflist"
    conf.write_text(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "nstask-bench",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "nstask-bench0",
                        "isGateway": True,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": "10.213.251.0/24"}]],
                            "routes": [{"dst": "0.0.0.0/0"}],
                            "dataDir": str(base / "ctr-ipam"),
                        },
                    },
                    {"type": "portmap", "capabilities": {"portMappings": True}},
                    {"type": "firewall"},
                ],
            }
        )
    )
    created.append(conf)
    if not CNI_BIN_DIR.exists():
        CNI_BIN_DIR.parent.mkdir(parents=True, exist_ok=True)
        CNI_BIN_DIR.symlink_to("/usr/lib/cni")
        created.append(CNI_BIN_DIR)


def start_agent(
    base: Path,
    ns: str,
    env: dict[str, str],
    *,
    bridge: str,
    subnet: str,
    network: str,
) -> subprocess.Popen[bytes]:
    """The test image imported into `ns`, then an agent of the benchmark's own (state and run
    dirs under `base`, its log in base/agent.log), answering when this returns."""
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_test_image.py"),
            *("--ref", IMAGE, "--namespace", ns, "--address", CTR_SOCK),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    argv = [str(BIN / "nstask"), "agent", "--state-dir", str(base / "state")]
    argv += ["--run-dir", str(base), "--namespace", ns, "--bridge", bridge]
    argv += ["--subnet", subnet, "--network-name", network]
    with open(base / "agent.log", "wb") as log:
        agent = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
    _wait_for_agent(env)
    return agent


def _wait_for_agent(env: dict[str, str]) -> None:
    deadline = time.monotonic() + 20
    while run([str(BIN / "nstask"), "ps"], env=env).returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit("bench: the agent did not start")
        time.sleep(0.05)


def _time(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = run(cmd, env=env)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
    return took


def _phases(env: dict[str, str], td: Path) -> dict[str, float]:
    samples: dict[str, list[float]] = {}
    for _ in range(5):
        run([str(BIN / "nstask"), "run", str(td)], env=env, check=True)
        tasks = json.loads(run([str(BIN / "nstask"), "ps", "-a", "--json"], env=env).stdout)
        for t in tasks:
            for k, v in t["timings"].items():
                samples.setdefault(k, []).append(v)
            run([str(BIN / "nstask"), "rm", t["id"]], env=env, check=True)
    return {k: statistics.median(v) for k, v in samples.items()}


if __name__ == "__main__":
    sys.exit(main())
