"""`user` as a name, resolved from the image's /etc/passwd and /etc/group at container
create, as Docker does (issue 12); an unknown user stops the task with a clear reason and
leaves nothing behind."""

from __future__ import annotations

import shutil
from pathlib import Path

from support import TEST_IMAGE, Agent, busybox_task, leaks, write_taskdef

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
    "nginx:x:101:101:nginx:/var/cache/nginx:/bin/false\n"
)
GROUP = "root:x:0:\napp:x:1000:\nnginx:x:101:\naudio:x:29:app,nginx\nvideo:x:44:app\nstaff:x:50:\n"
SCRIPT = 'echo "ids=$(id -u):$(id -g) groups=$(id -G) home=$HOME"'


def _users_image(agent: Agent, tmp_path: Path) -> str:
    rootfs = tmp_path / "rootfs"
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev"):
        (rootfs / d).mkdir(parents=True)
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "id"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text(PASSWD)
    (rootfs / "etc" / "group").write_text(GROUP)
    ref = "nstask.local/users-test:1"
    archive = tmp_path / "users.tar"
    agent.cli("image", "pack", str(rootfs), ref, "-o", str(archive), check=True)
    agent.cli("image", "import", str(archive), check=True)
    return ref


def _run(agent: Agent, tmp_path: Path, image: str, user: str, **extra: object) -> str:
    td = busybox_task("users", ["sh", "-c", SCRIPT], user=user, **extra)
    td["containerDefinitions"][0]["image"] = image  # type: ignore[index]
    proc = agent.cli("run", "--rm", write_taskdef(tmp_path, td), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_user_names_and_groups_resolve_from_the_image(agent: Agent, tmp_path: Path) -> None:
    image = _users_image(agent, tmp_path)
    assert _run(agent, tmp_path, image, "app") == "ids=1000:1000 groups=1000 29 44 home=/home/app"
    assert _run(agent, tmp_path, image, "nginx") == (
        "ids=101:101 groups=101 29 home=/var/cache/nginx"
    )
    assert _run(agent, tmp_path, image, "app:staff") == "ids=1000:50 groups=50 home=/home/app"
    assert _run(agent, tmp_path, image, "1000:audio") == "ids=1000:29 groups=29 home=/home/app"
    assert _run(agent, tmp_path, image, "nginx:44") == (
        "ids=101:44 groups=44 home=/var/cache/nginx"
    )
    assert _run(agent, tmp_path, image, "4242:4343") == "ids=4242:4343 groups=4343 home=/"
    # HOME of the definition's environment wins over the passwd entry's.
    env = [{"name": "HOME", "value": "/srv"}]
    assert _run(agent, tmp_path, image, "app", environment=env).endswith("home=/srv")
    # The shared busybox test image has nobody (65534) and nogroup.
    assert _run(agent, tmp_path, TEST_IMAGE, "nobody:nogroup").startswith(
        "ids=65534:65534 groups=65534 home=/nonexistent"
    )
    assert not leaks(agent)


def test_an_unknown_user_stops_the_task_naming_user_and_image(agent: Agent, tmp_path: Path) -> None:
    for user in ("ghost", "nobody:ghosts"):
        td = busybox_task("ghost", ["id"], user=user)
        run = agent.cli("run", "-d", write_taskdef(tmp_path, td), timeout=60)
        assert run.returncode == 0, run.stderr  # accepted: names are resolved at create
        task_id = run.stdout.strip()
        task = agent.wait_status(task_id, "STOPPED")
        reason = task["stopReason"] or ""
        assert "ghost" in reason and TEST_IMAGE in reason, task
        assert "unknown" in reason, reason
        agent.cli("rm", task_id, check=True)
    assert not leaks(agent)
