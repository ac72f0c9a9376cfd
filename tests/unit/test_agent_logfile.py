"""The agent's own log file rotated by size (agent.logfile)."""

from __future__ import annotations

from pathlib import Path

from agent.logfile import RotatingLog


def test_rotates_past_the_size_and_keeps_so_many_files(tmp_path: Path) -> None:
    path = tmp_path / "agent.log"
    log = RotatingLog(str(path), max_bytes=100, max_files=2, std_fds=())
    for n in range(20):
        log.write(f"line {n:02d} " + "x" * 30 + "\n")  # 39 bytes: two lines a file
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["agent.log", "agent.log.1", "agent.log.2"]
    assert path.read_text().splitlines()[-1].startswith("line 19")
    assert (tmp_path / "agent.log.1").read_text().startswith("line 16")
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in tmp_path.iterdir())


def test_appends_to_an_existing_file_and_zero_never_rotates(tmp_path: Path) -> None:
    path = tmp_path / "agent.log"
    path.write_text("before\n")
    log = RotatingLog(str(path), max_bytes=0, max_files=2, std_fds=())
    for _ in range(100):
        log.write("y" * 50 + "\n")
    assert [p.name for p in tmp_path.iterdir()] == ["agent.log"]
    assert path.read_text().startswith("before\n") and path.stat().st_size == 7 + 5100
