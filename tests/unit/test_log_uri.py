"""The container's log URI keeps driver options (and secrets) out of the shim's argv."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlparse

from agent.containers import log_options_file, log_uri, write_log_options
from agent.taskdef import parse_task_definition
from shim.main import parse_args


def _cdef(log_configuration: dict[str, object]) -> object:
    td = parse_task_definition(
        {
            "family": "f",
            "containerDefinitions": [
                {"name": "router", "image": "i", "firelensConfiguration": {"type": "fluentbit"}},
                {
                    "name": "app",
                    "image": "i",
                    "logConfiguration": log_configuration,
                    "secrets": [],
                },
            ],
        }
    )
    return td.containers[1]


def test_firelens_options_and_secret_options_go_to_a_0600_file(tmp_path: Path) -> None:
    cdef = _cdef(
        {
            "logDriver": "awsfirelens",
            "options": {"Name": "datadog"},
            "secretOptions": [{"name": "apikey", "valueFrom": "dd/key"}],
        }
    )
    opts_file = log_options_file(tmp_path, 1)
    uri, options = log_uri(
        Path("/usr/bin/shim"),
        task_id="t1",
        family="f",
        task_dir=tmp_path,
        cdef=cdef,  # type: ignore[arg-type]
        log_path="/var/log/x.log",
        options_file=opts_file,
        secret_options={"apikey": "s3cr3t"},
    )
    assert uri is not None and "s3cr3t" not in uri and "datadog" not in uri
    query = {k: v[0] for k, v in parse_qs(urlparse(uri).query).items()}
    assert query["options-file"] == str(opts_file)
    write_log_options(opts_file, options)
    assert opts_file.stat().st_mode & 0o777 == 0o600
    assert opts_file.parent.stat().st_mode & 0o777 == 0o700
    args = [x for kv in query.items() for x in kv]
    config = parse_args(args, {"CONTAINER_ID": "c"})
    assert config.labels == {"Name": "datadog", "apikey": "s3cr3t"}
    assert config.options["tag"] == "app-firelens-t1"


def test_json_file_without_options_names_no_file(tmp_path: Path) -> None:
    cdef = _cdef({"logDriver": "json-file"})
    uri, options = log_uri(
        Path("/usr/bin/shim"),
        task_id="t1",
        family="f",
        task_dir=tmp_path,
        cdef=cdef,  # type: ignore[arg-type]
        log_path="/var/log/x.log",
        options_file=log_options_file(tmp_path, 1),
    )
    assert uri is not None and "options-file" not in uri and options == {}
