"""A real multi-node Ray cluster on loopback for the tests: a head and worker nodes started with
`ray start --block`, token authentication on, every address 127.0.0.1.

Ray rewrites 127.0.0.1 to the host's routable address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
and that same switch makes ``ray start --address`` refuse to add a node; :data:`RAY_CLI` runs Ray's
CLI with the check lifted and the node address pinned to 127.0.0.1 (for that CLI process only), as
``../shared/docs/cluster-facts.md`` describes. A worker node can get a private view of the file
system (``hide``: folders bind-mounted over with an empty one in its own mount namespace), so that
nothing it runs can read what the driver's machine holds there. Each node is its own process group
and is stopped by that group only (never a bare `ray stop`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from s3_server import free_ports

RAY_CLI = """
import sys
import ray._private.ray_constants as ray_constants
import ray._private.services as services
ray_constants.ENABLE_RAY_CLUSTER = True  # let `ray start --address` add a node
services.get_node_ip_address = lambda address=None: "127.0.0.1"
from ray.scripts.scripts import main
sys.argv = ["ray"] + sys.argv[1:]
main()
"""


class Node:
    def __init__(self, proc: subprocess.Popen, log: Path):
        self.proc, self.log = proc, log
        self.stopped = False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop this node's whole process group (its raylet, workers and, for the head, the GCS)."""
        self.stopped = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            if sig != signal.SIGKILL:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            time.sleep(0.2)


class Cluster:
    """``with Cluster(workdir) as c: c.add_node(...); c.env`` (the environment a driver needs)."""

    def __init__(self, workdir: Path, head_cpus: int = 0):
        self.workdir = workdir
        self.port = free_ports(1)[0]
        self.address = f"127.0.0.1:{self.port}"
        # Outside workdir: a worker node may hide the test's folders, but it needs the token.
        self.token_dir = Path(tempfile.mkdtemp(prefix="ray-token-", dir="/tmp"))
        token_dir = self.token_dir
        self.token = token_dir / "token"
        self.token.write_text(secrets.token_hex(32))
        self.token.chmod(0o600)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token),
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
            RAY_BACKEND_LOG_LEVEL="fatal",
            RAY_USAGE_STATS_ENABLED="0",
            PYTHONUNBUFFERED="1",
        )
        self.nodes: list[Node] = []
        # Its own temp dir (short: Ray's socket paths must fit 107 bytes), so that no other Ray on the
        # machine finds this cluster through /tmp/ray/ray_current_cluster.
        self.temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
        self._start(
            "head",
            [
                "--head",
                f"--port={self.port}",
                f"--num-cpus={head_cpus}",
                "--include-dashboard=false",
                f"--temp-dir={self.temp_dir}",
            ],
            {},
        )
        self.wait_for(1)

    def _start(self, name: str, args: Sequence[str], env: dict[str, str], hide: Sequence[Path] = ()) -> Node:
        log = self.workdir / f"ray-{name}.log"
        cmd = [
            sys.executable,
            "-c",
            RAY_CLI,
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--disable-usage-stats",
            *args,
        ]
        if hide:
            empty = Path(tempfile.mkdtemp(prefix="empty-", dir=self.temp_dir))
            mounts = " && ".join(f"mount --bind {empty} {h}" for h in hide)
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$@"', "sh", *cmd]
        proc = subprocess.Popen(
            cmd,
            env={**self.env, **env},
            stdout=open(log, "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
        )
        node = Node(proc, log)
        self.nodes.append(node)
        return node

    def add_node(self, name: str, cpus: int, env: dict[str, str] | None = None, hide: Sequence[Path] = ()) -> Node:
        node = self._start(name, [f"--address={self.address}", f"--num-cpus={cpus}"], env or {}, hide)
        self.wait_for(len([n for n in self.nodes if not n.stopped]))
        return node

    def alive_nodes(self) -> int:
        probe = (
            "import ray; ray.init(address=%r, log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"
        ) % self.address
        done = subprocess.run([sys.executable, "-c", probe], env=self.env, capture_output=True, text=True, timeout=60)
        lines = done.stdout.strip().splitlines()
        return int(lines[-1]) if lines and lines[-1].isdigit() else 0

    def wait_for(self, n: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if not node.stopped and node.proc.poll() is not None:
                    raise RuntimeError(f"a Ray node exited: {node.log.read_text()[-3000:]}")
            if self.alive_nodes() >= n:
                return
            time.sleep(1)
        raise RuntimeError(f"the cluster did not reach {n} nodes in {timeout} s")

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        shutil.rmtree(self.token_dir, ignore_errors=True)
