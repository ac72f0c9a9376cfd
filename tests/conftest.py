"""Every test runs the working tree's code, never an installed copy of an older one.

`scripts/bootstrap.sh --test` (what `make test` runs) installs nstask editable and writes
launchers that load it from this tree; a plain `scripts/bootstrap.sh` (`make demo`) installs a
copy for users instead. Tests against that copy would pass or fail for code that is not the
code under test, so the session refuses to start.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session: pytest.Session) -> None:
    import cli_fast

    problems = []
    where = Path(cli_fast.__file__).resolve().parent
    if where != REPO:
        problems.append(f"python imports nstask from {where}")
    bin_dir = Path(sys.executable).parent
    for name in ("nstask", "nstask-shim-logger"):
        try:
            text = (bin_dir / name).read_text()
        except OSError:
            problems.append(f"{bin_dir / name} is missing")
            continue
        if repr(str(REPO)) not in text:
            problems.append(f"{bin_dir / name} does not run this working tree's code")
    if problems:
        pytest.exit(
            f"not testing {REPO}: {'; '.join(problems)}. "
            "Run `bash scripts/bootstrap.sh --test` (`make test` does).",
            returncode=2,
        )
