"""nstask installed as a host tool (issue 14): `make install` into a staging root and `make
uninstall` leaving nothing, the systemd unit checked by systemd-analyze, and the wheel built and
installed with pip into a fresh venv."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from support import REPO

EXAMPLE = REPO / "examples" / "hello.json"


def _make(target: str, root: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    if str(root) not in ("", "."):
        extra = {"DESTDIR": str(root), **extra}
    out = subprocess.run(
        [
            "make",
            "-C",
            str(REPO),
            target,
            *(f"{k}={v}" for k, v in extra.items()),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_make_install_into_a_root_then_uninstall_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    out = _make("install", root)
    assert "staged: nothing enabled or started" in out.stdout
    venv = root / "opt/nstask/venv"
    link = root / "usr/local/bin/nstask"
    assert os.readlink(link) == "/opt/nstask/venv/bin/nstask"  # its place once installed
    for f in (
        "usr/local/share/bash-completion/completions/nstask",
        "usr/local/share/zsh/site-functions/_nstask",
        "usr/local/share/fish/vendor_completions.d/nstask.fish",
        "etc/nstask/agent.toml.example",
        "etc/systemd/system/nstask-agent.service",
    ):
        assert (root / f).is_file() and (root / f).stat().st_size > 0, f
    assert (
        "_NSTASK_COMPLETE=bash_complete"
        in (root / "usr/local/share/bash-completion/completions/nstask").read_text()
    )
    assert not (root / "etc/nstask/agent.toml").exists()  # the agent runs on defaults

    # A regular install: the code is the venv's copy, not this tree (no editable hook).
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import cli, agent; print(cli.__file__, agent.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert str(REPO) not in where and str(venv) in where, where
    assert not list(venv.glob("lib/python*/site-packages/__editable__*"))
    nstask = str(venv / "bin/nstask")
    assert "Usage: nstask" in subprocess.check_output([nstask, "--help"], text=True)
    ok = subprocess.run([nstask, "validate", str(EXAMPLE)], capture_output=True, text=True)
    assert ok.returncode == 0 and "ok" in ok.stdout, ok.stderr
    v = json.loads(subprocess.check_output([nstask, "version", "--json"], text=True))
    assert v["nstask"] == "0.1.0"
    assert (venv / "bin/nstask-shim-logger").is_file()  # where the agent looks for the shim

    # The unit is the repo's one file, pointed at the install; systemd-analyze finds no fault
    # (checked at the staged path: the host's own unit dirs give containerd.service).
    unit = (root / "etc/systemd/system/nstask-agent.service").read_text()
    assert unit == (REPO / "packaging/nstask-agent.service").read_text()
    for line in (
        "ExecStart=/opt/nstask/venv/bin/nstask agent",
        "After=containerd.service network.target",
        "Requires=containerd.service",
        "KillMode=process",
        "Restart=on-failure",
    ):
        assert line in unit.splitlines(), line
    check = tmp_path / "verify" / "nstask-agent.service"
    check.parent.mkdir()
    check.write_text(unit.replace("/opt/nstask/venv/", f"{venv}/"))
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(check)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr

    # Task data survives an uninstall unless PURGE=1; everything else install made is gone.
    state = root / "var/lib/nstask"
    state.mkdir(parents=True)
    (state / "state.db").write_text("")
    (root / "etc/nstask/agent.toml").write_text('bridge = "nstask9"\n')
    out = _make("uninstall", root)
    assert "task data" in out.stdout and "kept" in out.stdout
    assert _tree(root) == [
        "etc",
        "etc/nstask",
        "etc/nstask/agent.toml",
        "var",
        "var/lib",
        "var/lib/nstask",
        "var/lib/nstask/state.db",
    ]
    _make("uninstall", root, PURGE="1")
    assert _tree(root) == ["etc", "var", "var/lib"]


def test_the_vagrant_lab_installs_the_repos_unit_file() -> None:
    vagrantfile = (REPO / "vagrant/Vagrantfile").read_text()
    assert "[Service]" not in vagrantfile  # no inline copy of the unit
    assert "make install" in vagrantfile


def test_wheel_and_sdist_install_into_a_fresh_venv(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "__pycache__", "build", "dist", "*.egg-info"
        ),
    )
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = dist.glob("nstask-0.1.0-*.whl")
    (sdist,) = dist.glob("nstask-0.1.0.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"cli.py", "cli_fast.py", "agent/config_file.py", "shim/main.py"} <= set(names)
    assert any(n.startswith("agent/protos/") and n.endswith(".proto") for n in names)
    with tarfile.open(sdist) as t:
        members = {m.name.split("/", 1)[1] for m in t.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "cli.py"} <= members

    venv = tmp_path / "venv"
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    nstask = str(venv / "bin/nstask")
    env = {**os.environ, "NSTASK_CONFIG": "none"}
    assert "Usage: nstask" in subprocess.check_output([nstask, "--help"], text=True, env=env)
    ok = subprocess.run(
        [nstask, "validate", str(EXAMPLE)], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert ok.returncode == 0 and "ok (family hello" in ok.stdout, ok.stderr
    assert (venv / "bin/nstask-shim-logger").exists()


def test_make_install_into_a_prefix_says_how_to_start_the_agent(tmp_path: Path) -> None:
    """No DESTDIR: the paths themselves are elsewhere; the unit points at this install, and
    without systemd (SYSTEMD=0 here, whatever the host runs) install says how to start."""
    t = tmp_path
    places = {
        "PREFIX": f"{t}/usr/local",
        "INSTALL_DIR": f"{t}/opt/nstask",
        "SYSCONFDIR": f"{t}/etc",
        "STATE_DIR": f"{t}/var/lib/nstask",
        "SYSTEMD": "0",
    }
    out = _make("install", Path(""), **places)
    assert "start the agent yourself" in out.stdout and "nstask agent --detach" in out.stdout
    nstask = t / "usr/local/bin/nstask"
    assert os.readlink(nstask) == f"{t}/opt/nstask/venv/bin/nstask"
    assert "Usage: nstask" in subprocess.check_output([str(nstask), "--help"], text=True)
    unit = t / "etc/systemd/system/nstask-agent.service"
    assert f"ExecStart={t}/opt/nstask/venv/bin/nstask agent" in unit.read_text().splitlines()
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    _make("uninstall", Path(""), **places)
    assert _tree(t) == []
