"""shim.main in-process: argv parsing, line splitting, and what the shim imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shim.jsonfile import JsonFileWriter
from shim.main import MAX_LINE, LineSplitter, UsageError, parse_args


def test_pairs_in_any_order_and_unknown_keys_remembered() -> None:
    args = ["mode", "non-blocking", "path", "/var/log/c.log", "x-new", "1", "driver", "json-file"]
    config = parse_args([*args, "max-size", "10m", "tag", "t"], {"CONTAINER_ID": "abc"})
    assert (config.driver, config.path, config.mode) == (
        "json-file",
        "/var/log/c.log",
        "non-blocking",
    )
    assert config.options == {"max-size": "10m"}
    assert config.unknown == {"x-new": "1", "tag": "t"}  # tag means nothing to json-file here
    assert config.container_name == "abc"  # no container= pair: the containerd id stands in


def test_names_labels_and_fluentd_options_are_sorted_out() -> None:
    config = parse_args(
        [
            *("driver", "fluentd", "path", "/l/c.log", "container", "web", "task", "t1"),
            *("family", "shop", "label.env", "prod", "fluentd-address", "unix:///s", "tag", "x"),
        ],
        {"CONTAINER_ID": "f" * 64},
    )
    assert (config.container_id, config.container_name) == ("f" * 64, "web")
    assert (config.task, config.family, config.labels) == ("t1", "shop", {"env": "prod"})
    assert config.options == {"fluentd-address": "unix:///s", "tag": "x"}
    assert config.max_buffer_size == 1024 * 1024


def test_driver_defaults_to_json_file() -> None:
    assert parse_args(["path", "/x.log"]).driver == "json-file"


@pytest.mark.parametrize(
    "args",
    [
        ["path"],
        [],
        ["driver", "json-file"],
        ["path", ""],
        ["path", "x.log"],
        ["driver", "gelf"],
        ["path", "/x.log", "mode", "sometimes"],
        ["path", "/x.log", "max-buffer-size", "lots"],
    ],
)
def test_unusable_arguments_are_refused(args: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_args(args)


def _split(tmp_path: Path, chunks: list[bytes], *, finish: bool = True) -> list[dict[str, object]]:
    path = tmp_path / "c.log"
    writer = JsonFileWriter(str(path))
    splitter = LineSplitter("stdout", writer)
    for number, chunk in enumerate(chunks):
        splitter.feed(chunk, number)
    if finish:
        splitter.finish(len(chunks))
    writer.close()
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_line_cut_across_reads_is_one_record(tmp_path: Path) -> None:
    records = _split(tmp_path, [b"hel", b"lo\nwor", b"ld\n"])
    assert [r["log"] for r in records] == ["hello\n", "world\n"]
    assert "partial_id" not in records[0]


def test_exactly_max_line_is_not_split(tmp_path: Path) -> None:
    records = _split(tmp_path, [b"a" * MAX_LINE + b"\n"])
    assert len(records) == 1 and "partial_id" not in records[0]


def test_one_byte_over_max_line_is_split(tmp_path: Path) -> None:
    records = _split(tmp_path, [b"a" * (MAX_LINE + 1) + b"\n"])
    assert [len(str(r["log"])) for r in records] == [MAX_LINE, 2]
    assert [r["partial_last"] for r in records] == [False, True]


def test_endless_line_is_written_before_its_newline(tmp_path: Path) -> None:
    """A container printing a progress bar forever must not grow our buffer without bound."""
    records = _split(tmp_path, [b"b" * 10_000] * 5, finish=False)
    assert [len(str(r["log"])) for r in records] == [MAX_LINE, MAX_LINE, MAX_LINE]
    assert records[0]["partial_id"] == records[2]["partial_id"]


def test_split_never_cuts_a_character(tmp_path: Path) -> None:
    line = ("x" + "é" * 20_000 + "\n").encode()  # the 2-byte chars straddle every cut
    records = _split(tmp_path, [line])
    logs = [str(r["log"]) for r in records]
    assert "".join(logs) == line.decode()
    assert "\ufffd" not in "".join(logs)


def test_new_line_after_split_line_is_not_partial(tmp_path: Path) -> None:
    records = _split(tmp_path, [b"c" * (MAX_LINE + 5) + b"\nnext\n"])
    assert records[-1]["log"] == "next\n" and "partial_id" not in records[-1]


def test_shim_start_imports_stay_small() -> None:
    """Every module the shim imports delays every container start."""
    code = (
        "import sys; before = set(sys.modules); import shim.main; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    heavy_modules = ("json", "typing", "structlog", "click", "agent", "asyncio", "selectors")
    for heavy in (*heavy_modules, "socket", "threading", "gzip", "shim.fluentd", "shim.ring"):
        assert heavy not in out


def test_shim_started_as_its_launcher_starts_it_loads_no_enum_or_contextlib() -> None:
    """The launcher runs `python -I -S` (no site): every module is then the shim's own cost,
    and signal's and re's enums, contextlib and typing are each a few ms of container start."""
    code_dir = str(Path(shim_main_file()).parent.parent)
    code = (
        f"import sys; sys.path.append({code_dir!r}); before = set(sys.modules); "
        "import shim.main, shim.jsonfile; print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    for heavy in ("signal", "enum", "contextlib", "typing", "re", "json", "functools", "site"):
        assert heavy not in out, out


def shim_main_file() -> str:
    import shim.main

    return str(shim.main.__file__)


def _options_file(tmp_path: Path, data: bytes, mode: int = 0o600) -> str:
    path = tmp_path / "c0.options"
    path.write_bytes(data)
    path.chmod(mode)
    return str(path)


def test_options_file_supplies_the_driver_options_kept_out_of_argv(tmp_path: Path) -> None:
    f = _options_file(tmp_path, b"label.apikey\0s3cr3t\0fluentd-address\0unix:///s\0tag\0t\0")
    config = parse_args(["driver", "fluentd", "path", "/x.log", "options-file", f])
    assert config.labels == {"apikey": "s3cr3t"}
    assert config.options == {"fluentd-address": "unix:///s", "tag": "t"}


def test_options_file_readable_by_others_or_malformed_is_refused(tmp_path: Path) -> None:
    f = _options_file(tmp_path, b"tag\0t\0", mode=0o644)
    with pytest.raises(UsageError, match="lets others read it"):
        parse_args(["path", "/x.log", "options-file", f])
    f = _options_file(tmp_path, b"tag\0t")
    with pytest.raises(UsageError, match="NUL-separated"):
        parse_args(["path", "/x.log", "options-file", f])
    with pytest.raises(UsageError, match="options-file"):
        parse_args(["path", "/x.log", "options-file", str(tmp_path / "missing")])
