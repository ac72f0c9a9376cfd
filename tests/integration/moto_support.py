"""moto's server on loopback: a real HTTP server speaking the AWS APIs (Secrets Manager,
SSM, STS, IAM), started as a subprocess on a free port for a test module and stopped by its
pid. With `no_auth_actions` set, moto enforces IAM after that many calls (its
INITIAL_NO_AUTH_ACTION_COUNT), so a user without a policy gets a real AccessDenied."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

# Keys moto takes as any account's (it does not check them unless IAM is enforced).
TEST_KEYS = {"AWS_ACCESS_KEY_ID": "AKIANSTASKTEST000000", "AWS_SECRET_ACCESS_KEY": "nstask-test"}
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    def __init__(self, *, no_auth_actions: int | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        if no_auth_actions is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(no_auth_actions)
        moto_server = str(Path(sys.executable).parent / "moto_server")
        self.proc = subprocess.Popen(
            [moto_server, "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/moto-api/data.json", timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)

    def client(self, service: str, **keys: str) -> Any:
        import botocore.session

        return botocore.session.Session().create_client(
            service,
            region_name=REGION,
            endpoint_url=self.url,
            aws_access_key_id=keys.get("AWS_ACCESS_KEY_ID", TEST_KEYS["AWS_ACCESS_KEY_ID"]),
            aws_secret_access_key=keys.get(
                "AWS_SECRET_ACCESS_KEY", TEST_KEYS["AWS_SECRET_ACCESS_KEY"]
            ),
        )

    def agent_env(self, base: Path, **keys: str) -> dict[str, str]:
        """What an agent needs to use this server: keys of its own (no shared files of the
        host), AWS in the order, every endpoint here."""
        return {
            **TEST_KEYS,
            **keys,
            "AWS_SHARED_CREDENTIALS_FILE": str(base / "no-aws-credentials"),
            "AWS_CONFIG_FILE": str(base / "no-aws-config"),
            "NSTASK_SECRET_SOURCES": "local,aws",
            "NSTASK_REGION": REGION,
            "NSTASK_STS_ENDPOINT": self.url,
            "NSTASK_SECRETSMANAGER_ENDPOINT": self.url,
            "NSTASK_SSM_ENDPOINT": self.url,
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
