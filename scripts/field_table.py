"""Print the README's table of task definition fields and nstask's verdicts (agent.fields).

    python scripts/field_table.py           # the markdown table
    python scripts/field_table.py --check   # exit 1 if README.md's table differs

tests/unit/test_fields.py runs the check.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.fields import BOOKKEEPING, FIELDS, IMPLEMENTED, NOT_ECS

START = "<!-- field-table:start (scripts/field_table.py prints it) -->"
END = "<!-- field-table:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"

_KIND = {IMPLEMENTED: "implemented", BOOKKEEPING: "accepted, silent"}


def table() -> str:
    rows = ["| field | verdict | what nstask does |", "| --- | --- | --- |"]
    for path, (kind, text) in FIELDS.items():
        verdict = _KIND.get(kind, "accepted, warning")
        if path in NOT_ECS:
            verdict += " (not an ECS field)"
        cell = text.replace("|", "\\|")
        rows.append(f"| `{path}` | {verdict} | {cell} |")
    return "\n".join(rows) + "\n"


def readme_table(text: str) -> str:
    a, b = text.index(START) + len(START) + 1, text.index(END)
    return text[a:b]


def main() -> int:
    if sys.argv[1:] == ["--check"]:
        if readme_table(README.read_text()) != table():
            print("README.md's field table differs: run scripts/field_table.py", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
