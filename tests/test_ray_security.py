"""The embedded Ray accepts no one else, and cluster addresses fail fast with one line.

`biomine run` without an address starts a private local Ray with token authentication on and a
token made for that run in a private file. Here a process holding such a Ray is asked to run work
by three clients on loopback: one with the run's token (accepted: the control that makes the other
two meaningful), one with no token, one with a wrong token (both refused).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import DEMO_XML
from s3_server import free_ports

from pipeline.cli import main
from pipeline.errors import BioMineError

REPO = Path(__file__).resolve().parents[1]

HOLDER = textwrap.dedent("""
    import os, sys
    from pipeline.run.cluster import init_ray
    import ray
    init_ray(num_cpus=1)
    print(ray.get_runtime_context().gcs_address, os.environ["RAY_AUTH_TOKEN_PATH"], flush=True)
    sys.stdin.read()  # hold the cluster until the test closes our stdin
    ray.shutdown()
""")

CLIENT = textwrap.dedent("""
    import sys, ray
    ray.init(address=sys.argv[1], log_to_driver=False)
    print("RESULT", ray.get(ray.remote(lambda: 41 + 1).remote()), flush=True)
""")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # Clients on loopback too: Ray would otherwise rewrite 127.0.0.1 to the host's routable address.
    env.update(PYTHONUNBUFFERED="1", RAY_BACKEND_LOG_LEVEL="fatal", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **extra)
    return env


def _client(address: str, env: dict[str, str], timeout: float = 60) -> str:
    try:
        done = subprocess.run(
            [sys.executable, "-c", CLIENT, address], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
        )
        return done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:  # kept retrying: it never got in
        return f"timed out: {exc.stdout or ''}{exc.stderr or ''}"


@pytest.mark.slow
def test_embedded_ray_refuses_clients_without_the_runs_token(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )
    try:
        line = holder.stdout.readline().split()
        assert len(line) == 2, holder.stderr.read()[-3000:]
        gcs, token_path = line
        assert gcs.startswith("127.0.0.1:"), gcs  # the embedded Ray's node address is loopback
        listing = subprocess.run(["ss", "-tnp"], capture_output=True, text=True).stdout
        peers = [
            line.split()[4]
            for line in listing.splitlines()
            if line.startswith("ESTAB") and f"pid={holder.pid}," in line
        ]
        assert peers and all(p.startswith(("127.0.0.1:", "[::1]:", "[::ffff:127.0.0.1]:")) for p in peers), peers
        # The token lives in a private file outside $HOME.
        mode = os.stat(token_path).st_mode
        assert not str(token_path).startswith(str(Path.home())) and stat.S_IMODE(mode) == 0o600
        assert stat.S_IMODE(os.stat(Path(token_path).parent).st_mode) == 0o700

        accepted = _client(gcs, _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_path))
        assert "RESULT 42" in accepted, accepted[-3000:]
        no_token = _client(gcs, _env(RAY_AUTH_MODE="disabled"), timeout=40)
        assert "RESULT" not in no_token
        wrong = tmp_path / "wrong-token"
        wrong.write_text("0" * 64)
        wrong_token = _client(gcs, _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(wrong)), timeout=40)
        assert "RESULT" not in wrong_token
        assert "uthenticat" in no_token + wrong_token or "timed out" in no_token + wrong_token
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(holder.pid, 9)
            holder.wait()


def test_unreachable_addresses_are_one_line_errors_within_seconds(tmp_path, capsys):
    import ray

    from pipeline.run.cluster import init_ray

    if ray.is_initialized():  # another module's local Ray: init_ray would keep it
        ray.shutdown()
    port = free_ports(1)[0]
    start = time.monotonic()
    with pytest.raises(BioMineError, match=rf"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        init_ray(f"127.0.0.1:{port}")
    with pytest.raises(
        BioMineError,
        match=r"ray://127.0.0.1:\d+ needs Ray Client: pip install 'ray\[client\]'|"
        r"cannot reach the Ray cluster",
    ):
        init_ray(f"ray://127.0.0.1:{port}")
    with pytest.raises(BioMineError, match="use HOST:PORT"):
        init_ray("not-an-address")
    assert time.monotonic() - start < 30

    model = tmp_path / "m"
    from biogpt.tiny import make_tiny_checkpoint

    make_tiny_checkpoint(model, ["Aspirin and warfarin."], seed=0)
    job = tmp_path / "job.toml"
    job.write_text(
        f'[job]\nname = "x"\noutput = "{tmp_path / "out"}"\n[source]\nkind = "files"\n'
        f'paths = ["{DEMO_XML}"]\n[tasks.summarize]\nmodel = "{model}"\n'
        "max_new_tokens = 4\n"
    )
    assert main(["run", str(job), "--address", f"127.0.0.1:{port}", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"biomine: error: 1 problem in {job}: (1) cannot reach the Ray cluster at 127.0.0.1:{port}"
    ), err
    assert not (tmp_path / "out" / "documents").exists()
