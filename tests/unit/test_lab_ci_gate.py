"""scripts/lab/ci-gate.sh: CI's decision whether to run `make lab-test`, printed with its
reason. These cases decide before any VM is booted (the boot probe itself is exercised by
`make lab-test`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

GATE = Path(__file__).resolve().parents[2] / "scripts" / "lab" / "ci-gate.sh"


def _gate(**env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("NSTASK_CI_")}
    full.update(env)
    return subprocess.run(
        ["bash", str(GATE)], env=full, text=True, capture_output=True, timeout=30, check=False
    )


def test_forced_off_skips_and_says_so() -> None:
    r = _gate(NSTASK_CI_LAB="0")
    assert r.returncode == 1
    assert "lab-test SKIPPED: NSTASK_CI_LAB=0" in r.stdout


def test_forced_on_runs_and_says_so() -> None:
    r = _gate(NSTASK_CI_LAB="1")
    assert r.returncode == 0
    assert "lab-test RUNS: NSTASK_CI_LAB=1" in r.stdout


def test_bad_setting_is_an_error_naming_it() -> None:
    r = _gate(NSTASK_CI_LAB="sometimes")
    assert r.returncode == 2
    assert "NSTASK_CI_LAB=sometimes: must be auto, 1 or 0" in r.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="the gate skips non-root before the time check")
def test_too_little_ci_time_skips_without_booting() -> None:
    r = _gate(NSTASK_CI_TIME_LIMIT="1000", NSTASK_CI_ELAPSED="900")
    assert r.returncode == 1
    assert "lab-test SKIPPED: CI has 100s left of 1000s" in r.stdout
    assert "a VM boots here" not in r.stdout
