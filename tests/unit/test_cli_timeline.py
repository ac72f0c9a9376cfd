"""`nstask inspect --timeline`: phases placed by their start, parallel ones overlapping."""

from __future__ import annotations

import cli


def _task(timings: dict[str, float], timeline: dict[str, float]) -> dict[str, object]:
    return {"id": "0123456789abcdef", "family": "web", "timings": timings, "timeline": timeline}


def test_phases_are_drawn_in_start_order_on_one_scale() -> None:
    t = _task(
        {
            "accept": 10,
            "images": 40,
            "container.a.start": 50,
            "container.b.start": 50,
            "stop.teardown": 5,
        },
        {"accept": -10, "images": 0, "container.a.start": 40, "container.b.start": 40},
    )
    lines = cli._timeline(t, width=100)
    assert lines[0].startswith("task 0123456789ab (web)")
    assert lines[1].split()[:3] == ["PHASE", "START", "TOOK"] and lines[1].endswith("90 ms|")
    assert "|-10 " in lines[1]
    bars = {ln.split()[0]: ln.split("|")[1] for ln in lines[2:6]}
    assert list(bars) == ["accept", "images", "container.a.start", "container.b.start"]
    # 100 columns for 100 ms (from -10 to 90): accept is columns 0-9, images 10-49
    assert bars["accept"] == "#" * 10 + " " * 90
    assert bars["images"] == " " * 10 + "#" * 40 + " " * 50
    # the two containers ran at the same time: identical bars
    assert bars["container.a.start"] == bars["container.b.start"] == " " * 50 + "#" * 50
    assert lines[6] == "not on the timeline: stop.teardown 5.0 ms"


def test_a_task_from_an_older_agent_says_it_has_no_timeline() -> None:
    lines = cli._timeline(_task({"accept": 1.0}, {}), width=40)
    assert "no timeline recorded" in lines[1]


def test_a_very_short_phase_still_gets_one_column() -> None:
    lines = cli._timeline(_task({"a": 1000.0, "b": 0.01}, {"a": 0, "b": 999}), width=50)
    assert lines[3].split("|")[1] == " " * 49 + "#"
