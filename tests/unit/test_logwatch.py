"""agent.logwatch: a follower's wait ends on a change in the log directory or on its wakeup,
not at its timeout (long timeouts here: only a wait that misses the change would reach them)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import logwatch

LONG = 30.0


def _waits(watch: logwatch.Watch) -> float:
    t0 = time.monotonic()
    watch.wait(LONG)
    return time.monotonic() - t0


def _ended_by(watch: logwatch.Watch, action: Callable[[], object]) -> bool:
    """Whether `action`, done 50 ms into a long wait, ends it."""
    timer = threading.Timer(0.05, action)
    timer.start()
    try:
        return _waits(watch) < LONG / 2
    finally:
        timer.join()


def _settle(watch: logwatch.Watch) -> None:
    """Wait until a wait of 0.1 s passes with no event."""
    for _ in range(50):
        t0 = time.monotonic()
        watch.wait(0.1)
        if time.monotonic() - t0 >= 0.1:
            return
    raise AssertionError("events kept coming")


@pytest.fixture
def wakeup() -> Iterator[logwatch.Wakeup]:
    w = logwatch.Wakeup()
    yield w
    w.close()


def test_a_write_ends_the_wait(tmp_path: Path, wakeup: logwatch.Wakeup) -> None:
    log = tmp_path / "c-json.log"
    log.write_bytes(b"")
    watch = logwatch.Watch(str(tmp_path), wakeup)
    try:

        def append() -> None:
            with log.open("ab") as f:
                f.write(b"x\n")

        assert _ended_by(watch, append)
    finally:
        watch.close()


def test_a_change_before_the_wait_is_not_missed(tmp_path: Path, wakeup: logwatch.Wakeup) -> None:
    watch = logwatch.Watch(str(tmp_path), wakeup)
    try:
        (tmp_path / "c-json.log").write_bytes(b"early\n")  # created after the watch began
        assert _waits(watch) < LONG / 2
        # Drained: with nothing new, the next wait lasts its timeout.
        t0 = time.monotonic()
        watch.wait(0.2)
        assert time.monotonic() - t0 >= 0.2
    finally:
        watch.close()


def test_rotation_ends_the_wait(tmp_path: Path, wakeup: logwatch.Wakeup) -> None:
    log = tmp_path / "c-json.log"
    log.write_bytes(b"a\n")
    watch = logwatch.Watch(str(tmp_path), wakeup)
    try:
        assert _ended_by(watch, lambda: log.rename(tmp_path / "c-json.log.1"))
    finally:
        watch.close()


def test_wakeup_ends_every_wait_at_once_and_stays_set(
    tmp_path: Path, wakeup: logwatch.Wakeup
) -> None:
    watches = [logwatch.Watch(str(tmp_path), wakeup) for _ in range(3)]
    try:
        took: list[float] = []
        threads = [threading.Thread(target=lambda w=w: took.append(_waits(w))) for w in watches]
        for t in threads:
            t.start()
        time.sleep(0.05)
        wakeup.set()
        for t in threads:
            t.join(timeout=LONG)
        assert len(took) == 3 and max(took) < LONG / 2
        assert wakeup.is_set() and wakeup.wait(LONG) is True
        assert _waits(watches[0]) < 1.0  # a wait after the set returns at once
    finally:
        for w in watches:
            w.close()


def test_a_directory_made_later_is_watched_once_it_exists(
    tmp_path: Path, wakeup: logwatch.Wakeup
) -> None:
    """A follower that starts before its container: its log directory does not exist yet."""
    later = tmp_path / "task1"
    watch = logwatch.Watch(str(later), wakeup)
    try:
        assert _ended_by(watch, later.mkdir)  # the directory's creation
        assert _ended_by(watch, lambda: (later / "0-c.log").write_bytes(b"x\n"))  # then in it
        _settle(watch)  # the write's later events (modify, close)
        (tmp_path / "task2").mkdir()  # another task's: the parent is no longer watched
        t0 = time.monotonic()
        watch.wait(0.3)
        assert time.monotonic() - t0 >= 0.3
    finally:
        watch.close()


def test_neither_directory_nor_parent_is_an_oserror(
    tmp_path: Path, wakeup: logwatch.Wakeup
) -> None:
    with pytest.raises(OSError, match="absent"):
        logwatch.Watch(str(tmp_path / "absent" / "task1"), wakeup)
