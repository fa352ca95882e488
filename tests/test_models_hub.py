"""Models by name: Hugging Face Hub ids (a loopback fake Hub) and released fairseq checkpoints
(`biomine models pull`, from a loopback file server that cuts the first download in the middle)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from conftest import DEMO_XML, REPO, shared_path
from fake_hub import FakeHub

from biogpt import hub
from biogpt.errors import CheckpointError
from biogpt.model import BioGptForCausalLM
from biogpt.tiny import make_tiny_checkpoint
from biogpt.tokenizer import BioGptTokenizer
from pipeline.cli import main

TEXTS = ["Aspirin and warfarin interact in the liver.", "Ketoconazole raises midazolam exposure."]


def published(folder: Path, *, seed: int = 0, layout: str = "bin") -> Path:
    """A tiny BioGPT in microsoft/biogpt's published layout: config.json, vocab.json, merges.txt and
    pytorch_model.bin (``layout="both"`` adds model.safetensors, as some Hub revisions hold both)."""
    from safetensors.torch import load_file

    make_tiny_checkpoint(folder, TEXTS, seed=seed)
    if layout != "safetensors":
        torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    if layout == "bin":
        (folder / "model.safetensors").unlink()
    return folder


def logits(model, tok) -> torch.Tensor:
    ids = torch.tensor([tok.encode(TEXTS[0])])
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield server


def test_reference_grammar(tmp_path):
    (tmp_path / "models" / "re-ddi").mkdir(parents=True)
    assert hub.parse("models/re-ddi", base_dir=tmp_path).kind == "path"  # an existing directory wins
    assert hub.parse("microsoft/biogpt") == hub.Reference("hub", "microsoft/biogpt")
    assert hub.parse("microsoft/BioGPT-Large@v1.0") == hub.Reference("hub", "microsoft/BioGPT-Large", "v1.0")
    assert hub.parse("hf://microsoft/biogpt@refs/pr/3") == hub.Reference("hub", "microsoft/biogpt", "refs/pr/3")
    assert hub.parse("microsoft/biogpt", revision="abc") == hub.Reference("hub", "microsoft/biogpt", "abc")
    assert hub.parse("biogpt:re-ddi") == hub.Reference("release", "re-ddi")
    for path in ("./models/x", "/abs/models", "a/b/c", "s3://bucket/models/re-ddi"):
        assert hub.parse(path).kind == "path", path
    with pytest.raises(CheckpointError, match="biogpt:NAME"):
        hub.parse("biogpt:RE DDI")
    with pytest.raises(CheckpointError, match="neither a model directory nor a valid Hub id"):
        hub.resolve("models/re--ddi")  # a missing folder whose name the Hub cannot hold: no traceback
    assert hub.model_name("hf://microsoft/biogpt@" + "a" * 40) == "microsoft/biogpt"
    assert (
        hub.model_name(tmp_path / "hf" / "models--microsoft--biogpt" / "snapshots" / ("b" * 40)) == "microsoft/biogpt"
    )
    assert hub.model_name("/models/re-ddi/") == "re-ddi"


def test_from_pretrained_takes_hub_ids_revisions_and_works_offline(tmp_path, fake_hub, monkeypatch):
    main_dir = published(tmp_path / "main", seed=0)
    v2_dir = published(tmp_path / "v2", seed=5)
    commit = fake_hub.add("tiny-org/biogpt-tiny", main_dir)
    v2 = fake_hub.add("tiny-org/biogpt-tiny", v2_dir, branch="v2")
    tok = BioGptTokenizer.from_pretrained(main_dir)
    expected = logits(BioGptForCausalLM.from_pretrained(main_dir), tok)

    model = BioGptForCausalLM.from_pretrained("tiny-org/biogpt-tiny")
    assert torch.equal(logits(model, BioGptTokenizer.from_pretrained("tiny-org/biogpt-tiny")), expected)
    resolved = hub.resolve("tiny-org/biogpt-tiny")
    assert resolved.revision == commit and resolved.path.name == commit
    assert resolved.path.is_relative_to(tmp_path / "hf" / "hub")  # HF_HOME decides where
    downloads = [p for m, p in fake_hub.requests if m == "GET" and p.endswith("/pytorch_model.bin")]
    assert len(downloads) == 1  # fetched once, then read from the cache

    on_v2 = logits(BioGptForCausalLM.from_pretrained("tiny-org/biogpt-tiny", revision="v2"), tok)
    assert torch.equal(on_v2, logits(BioGptForCausalLM.from_pretrained(v2_dir), tok))
    assert not torch.equal(on_v2, expected)
    assert hub.resolve("tiny-org/biogpt-tiny@v2").revision == v2
    assert hub.resolve(f"hf://tiny-org/biogpt-tiny@{commit}").path == resolved.path

    # a revision with safetensors and .bin: only one weight format is fetched
    fake_hub.add("tiny-org/both", published(tmp_path / "both", layout="both"))
    hub.resolve("tiny-org/both")
    fetched = {p.rsplit("/", 1)[1] for m, p in fake_hub.requests if m == "GET" and "/tiny-org/both/resolve/" in p}
    assert "model.safetensors" in fetched and "pytorch_model.bin" not in fetched

    with pytest.raises(CheckpointError, match="no such model repository"):
        hub.resolve("tiny-org/absent")
    with pytest.raises(CheckpointError, match="revision 'nope' is not a branch, tag or commit"):
        hub.resolve("tiny-org/biogpt-tiny@nope")

    # a private repository needs HF_TOKEN
    fake_hub.add("tiny-org/private", main_dir, token="hf_secret")
    with pytest.raises(CheckpointError, match="HF_TOKEN"):
        hub.resolve("tiny-org/private")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert hub.resolve("tiny-org/private").revision

    # offline: the cache answers, nothing is asked of the Hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(fake_hub.requests)
    assert torch.equal(logits(BioGptForCausalLM.from_pretrained("tiny-org/biogpt-tiny"), tok), expected)
    assert hub.resolve("tiny-org/biogpt-tiny").revision == commit
    assert len(fake_hub.requests) == before
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set"):
        hub.resolve("tiny-org/never-fetched")


def test_a_job_names_a_hub_model_and_its_manifest_records_the_revision(tmp_path, fake_hub):
    commit = fake_hub.add("tiny-org/biogpt-tiny", published(tmp_path / "lm"))
    out = tmp_path / "out"
    job = tmp_path / "hub.toml"
    job.write_text(
        f'[job]\nname = "hub"\noutput = "{out}"\n[source]\nkind = "files"\npaths = ["{DEMO_XML}"]\n'
        '[tasks.summarize]\nmodel = "tiny-org/biogpt-tiny"\nmax_new_tokens = 4\n[resources]\nactors = 1\n'
    )
    from pipeline.run.jobspec import load_job

    assert load_job(job).tasks["summarize"].model == "hf://tiny-org/biogpt-tiny"  # explicit past the parser
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(job), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # The summary table closes the run (every row as wide as its header: documents, the task).
    table = [
        line.split() for line in done.stderr.splitlines() if line.startswith(("stage ", "documents ", "summarize "))
    ]
    assert [row[0] for row in table] == ["stage", "documents", "summarize"], done.stderr[-2000:]
    # Nine columns; the header's "files done" and "table rows" and the task's "summarize -> summaries" are more words.
    assert [len(row) for row in table] == [11, 9, 11], table
    # The run record is a row of the OUT/runs Delta table now (OUT/_manifest.json is gone).
    from pipeline.store.output import JobOutput

    run = JobOutput(out).last_run()
    assert run is not None and run["event"] == "finished"
    manifest = run["record"]
    model = manifest["models"]["summarize"]
    import polars as pl

    runs = pl.read_delta(str(out / "runs")).filter(pl.col("run_id") == run["run_id"])
    assert sorted(runs["event"].to_list()) == ["finished", "started"]  # as any Delta reader sees it
    recorded = json.loads(runs.filter(pl.col("event") == "finished")["record"][0])
    assert recorded["models"]["summarize"]["revision"] == commit
    assert model["hub"] == "tiny-org/biogpt-tiny" and model["revision"] == commit
    assert model["path"] == f"hf://tiny-org/biogpt-tiny@{commit}" and len(model["sha256"]) == 64
    from pipeline.outputs.query import query

    ids = query(out, "SELECT DISTINCT model_id FROM summaries")["model_id"].tolist()
    assert ids == ["tiny-org/biogpt-tiny"]
    # a name that does not resolve is one line from `run --check`, naming the key
    job.write_text(job.read_text().replace("tiny-org/biogpt-tiny", "tiny-org/absent"))
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(job), "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(
        f"biomine: error: 1 problem in {job}: (1) [tasks.summarize] tiny-org/absent: no such model repository"
    ), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# --- released checkpoints ---------------------------------------------------------------------------


class FileServer:
    """Serves a folder on 127.0.0.1 with Range support; the first GET of ``cut`` sends only half of
    the body, then closes the connection (a broken download)."""

    def __init__(self, root: Path, cut: str | None = None, busy: str | None = None):
        self.root, self.cut, self.busy, self.requests = root, cut, busy, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?", 1)[0].lstrip("/")
                server.requests.append((path, self.headers.get("Range")))
                file = server.root / path
                if not file.is_file():
                    self.send_error(404)
                    return
                if path == server.busy:  # a blob store under load: 503 once
                    server.busy = None
                    self.send_error(503)
                    return
                data = file.read_bytes()
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if path == server.cut:
                    server.cut = None
                    body = body[: len(body) // 2]
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def release_mirror(tmp_path: Path) -> Path:
    """A mirror in the layout `--mirror` reads: RE-DDI-BioGPT.tgz (a tiny prompt checkpoint with the
    real base vocabulary, in the released archive layout RE-DDI-BioGPT/checkpoint_avg.pt) and
    base/dict.txt, base/bpecodes (the real files)."""
    from test_fairseq_convert import prompt_checkpoint

    vocab = shared_path("data", "biogpt-vocab", "base")
    mirror = tmp_path / "mirror"
    (mirror / "base").mkdir(parents=True)
    for name in ("dict.txt", "bpecodes"):
        (mirror / "base" / name).write_bytes((vocab / name).read_bytes())
    words = sum(1 for _ in open(vocab / "dict.txt", encoding="utf-8"))
    folder = tmp_path / "release" / "RE-DDI-BioGPT"
    prompt_checkpoint(folder / "checkpoint_avg.pt", n_prompt=9, vocab_rows=4 + words + 9)
    with tarfile.open(mirror / "RE-DDI-BioGPT.tgz", "w:gz") as tar:
        tar.add(folder, arcname="RE-DDI-BioGPT")
    return mirror


@pytest.mark.slow
def test_models_pull_resumes_a_cut_download_verifies_converts_and_a_job_uses_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BIOMINE_MODEL_CACHE", str(tmp_path / "models"))
    mirror = release_mirror(tmp_path)
    archive = (mirror / "RE-DDI-BioGPT.tgz").read_bytes()
    server = FileServer(mirror, cut="RE-DDI-BioGPT.tgz")
    try:
        # a plain-http mirror is refused unless asked for, before any request
        assert main(["models", "pull", "re-ddi", "--mirror", server.url, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is plain http" in err[0] and not server.requests
        assert err[0].endswith(
            "use an https:// mirror, or allow plain http for a mirror on a network you trust (--mirror, --allow-http)"
        )
        assert main(["models", "pull", "re-ddi", "--mirror", server.url, "--no-progress", "--allow-http"]) == 0
        out = capsys.readouterr().out
        assert 'model = "biogpt:re-ddi"' in out
        # the cut download resumed where it broke: a Range request from the half that had arrived
        gets = [r for r in server.requests if r[0] == "RE-DDI-BioGPT.tgz"]
        assert gets == [("RE-DDI-BioGPT.tgz", None), ("RE-DDI-BioGPT.tgz", f"bytes={len(archive) // 2}-")]
        dest = hub.released_dir("re-ddi")
        record = json.loads((dest / ".biomine-release.json").read_text())
        assert record["archive_sha256"] == hashlib.sha256(archive).hexdigest()
        assert record["archive_bytes"] == len(archive) and record["task"] == "re-ddi"
        assert json.loads((dest / "biomine_task.json").read_text())["task"] == "re-ddi"
        assert not (tmp_path / "models" / "downloads" / "RE-DDI-BioGPT.tgz").exists()  # archive removed
        # no digest is published: the first pull pinned the one it got (trust on first use)
        pins = json.loads((tmp_path / "models" / "release-pins.json").read_text())
        assert pins == {"RE-DDI-BioGPT": hashlib.sha256(archive).hexdigest()}
        assert record["archive_sha256_pinned_by"] == "first pull (trust on first use)"

        # a second pull finds it; `models list` shows it
        n = len(server.requests)
        assert main(["models", "pull", "re-ddi", "--mirror", server.url, "--allow-http"]) == 0
        assert len(server.requests) == n
        assert main(["models", "list"]) == 0
        assert "biogpt:re-ddi" in capsys.readouterr().out

        # the name loads in Python and passes a job's checks
        from pipeline.tasks.options import RelationOptions
        from pipeline.tasks.re import RelationTask

        assert BioGptForCausalLM.from_pretrained("biogpt:re-ddi").config.vocab_size == record["vocab_size"]
        RelationTask.check_model(RelationOptions(model=str(hub.resolve("biogpt:re-ddi").path), task="ddi"))
        job = tmp_path / "job.toml"
        job.write_text(
            f'[job]\nname = "rel"\noutput = "{tmp_path / "out"}"\n[source]\nkind = "files"\n'
            f'paths = ["{DEMO_XML}"]\n[tasks.re]\ntask = "ddi"\nmodel = "biogpt:re-ddi"\n'
        )
        assert main(["run", str(job), "--check"]) == 0
        job.write_text(job.read_text().replace("biogpt:re-ddi", "biogpt:re-dti").replace('"ddi"', '"kd-dti"'))
        assert main(["run", str(job), "--check"]) == 2
        err = capsys.readouterr().err
        assert "biogpt:re-dti: not pulled on this machine" in err and "biomine models pull re-dti" in err

        # a vocabulary file that is not the released one is refused, and nothing is kept of it
        (mirror / "base" / "dict.txt").write_text("the 1\n")
        (tmp_path / "models" / "downloads" / "base" / "dict.txt").unlink()  # (a verified copy is reused)
        assert main(["models", "pull", "re-ddi", "--mirror", server.url, "--force", "--allow-http"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("biomine: error: ") and "is not the released base dict.txt" in err
        assert len(err.strip().splitlines()) == 1
        assert (dest / "config.json").is_file()  # the pulled model is untouched
    finally:
        server.close()


def test_a_pull_refuses_a_hostile_archive_and_one_that_differs_from_its_pin(tmp_path, monkeypatch, capsys):
    """What a hostile mirror can send: a checkpoint that runs code when unpickled (refused before it
    runs: nothing converted, nothing pinned), and later a different archive than the one pinned
    (refused before it is unpacked)."""
    from test_fairseq_convert import RunsCode, hostile_checkpoint

    monkeypatch.setenv("BIOMINE_MODEL_CACHE", str(tmp_path / "models"))
    mirror = release_mirror(tmp_path)
    good = (mirror / "RE-DDI-BioGPT.tgz").read_bytes()
    folder = tmp_path / "hostile" / "RE-DDI-BioGPT"
    marker = tmp_path / "pwned"
    hostile_checkpoint(folder / "checkpoint_avg.pt", marker, RunsCode)
    with tarfile.open(mirror / "RE-DDI-BioGPT.tgz", "w:gz") as tar:
        tar.add(folder, arcname="RE-DDI-BioGPT")
    server = FileServer(mirror)
    pins = tmp_path / "models" / "release-pins.json"
    try:
        assert main(["models", "pull", "re-ddi", "--mirror", server.url, "--allow-http", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "refused: its pickle names builtins.exec" in err[0], err
        assert not marker.exists() and not hub.released_dir("re-ddi").exists() and not pins.exists()

        (mirror / "RE-DDI-BioGPT.tgz").write_bytes(good)
        (tmp_path / "models" / "downloads" / "RE-DDI-BioGPT.tgz").unlink()
        assert main(["models", "pull", "re-ddi", "--mirror", server.url, "--allow-http", "--no-progress"]) == 0
        assert json.loads(pins.read_text()) == {"RE-DDI-BioGPT": hashlib.sha256(good).hexdigest()}
        capsys.readouterr()

        # the mirror now serves other bytes: refused against the pin, removed, the pulled model untouched
        with tarfile.open(mirror / "RE-DDI-BioGPT.tgz", "w:gz") as tar:
            tar.add(mirror / "base", arcname="RE-DDI-BioGPT")
        before = (hub.released_dir("re-ddi") / "model.safetensors").read_bytes()
        assert main(["models", "pull", "re-ddi", "--mirror", server.url, "--allow-http", "--force"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert (
            len(err) == 1 and "is not " + hashlib.sha256(good).hexdigest() in err[0] and "release-pins.json" in err[0]
        )
        assert not (tmp_path / "models" / "downloads" / "RE-DDI-BioGPT.tgz").exists()
        assert (hub.released_dir("re-ddi") / "model.safetensors").read_bytes() == before
        # --sha256 names the digest to require, whatever is pinned
        assert (
            main(["models", "pull", "re-ddi", "--mirror", server.url, "--allow-http", "--force", "--sha256", "0" * 64])
            == 2
        )
        err = capsys.readouterr().err
        assert "is not " + "0" * 64 + " (the digest asked for)" in err
        assert err.endswith(
            "check the new digest with its publisher and ask for it (or edit release-pins.json) (--sha256)\n"
        )
    finally:
        server.close()


def blob(tmp_path, size: int) -> tuple[bytes, Path, Path]:
    """``(data, served folder, download destination)``: random bytes served as blob.tgz."""
    (tmp_path / "srv").mkdir()
    data = os.urandom(size)
    (tmp_path / "srv" / "blob.tgz").write_bytes(data)
    dest = tmp_path / "dl" / "blob.tgz"
    dest.parent.mkdir()
    return data, tmp_path / "srv", dest


def test_a_part_file_left_by_a_killed_pull_is_resumed(tmp_path):
    from pipeline.store.releases import download

    data, served, dest = blob(tmp_path, 300_000)
    server = FileServer(served)
    (dest.parent / "blob.tgz.part").write_bytes(data[:123_456])  # what a killed process left,
    (dest.parent / "blob.tgz.part.url").write_text(f"{server.url}/blob.tgz")  # and the URL it was fetching
    try:
        sha, size = download(f"{server.url}/blob.tgz", dest, progress=False)
    finally:
        server.close()
    assert server.requests == [("blob.tgz", "bytes=123456-")]
    assert dest.read_bytes() == data and size == len(data) and sha == hashlib.sha256(data).hexdigest()
    assert not (dest.parent / "blob.tgz.part").exists()


def test_a_part_file_of_another_url_is_not_resumed_and_a_busy_server_is_retried(tmp_path):
    from pipeline.store.releases import download

    data, served, dest = blob(tmp_path, 50_000)
    (dest.parent / "blob.tgz.part").write_bytes(b"x" * 1000)  # the start of another mirror's file
    (dest.parent / "blob.tgz.part.url").write_text("http://127.0.0.1:1/elsewhere/blob.tgz")
    server = FileServer(served, busy="blob.tgz")
    try:
        download(f"{server.url}/blob.tgz", dest, progress=False)
    finally:
        server.close()
    assert server.requests == [("blob.tgz", None), ("blob.tgz", None)]  # 503, then the whole file, from 0
    assert dest.read_bytes() == data and not (dest.parent / "blob.tgz.part.url").exists()


def test_unknown_release_names_are_one_line(capsys):
    assert main(["models", "pull", "re-ddx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("biomine: error: unknown released model 're-ddx'") and "re-ddi" in err


def test_an_unreachable_host_is_named_once_with_the_mirror_to_use(tmp_path, monkeypatch, capsys, caplog):
    """Offline, `models pull` logged "resuming from byte 0" at every retry and never said that the host
    cannot be reached, nor that a mirror can stand in: now each retry says so, and the end is one line."""
    import logging
    import socket

    from pipeline.store import releases

    with socket.socket() as s:  # a loopback port with nothing listening: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(releases, "_BLOB", f"https://127.0.0.1:{port}/release/")
    monkeypatch.setenv("BIOMINE_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BIOMINE_RELEASE_MIRROR", raising=False)
    waits: list[float] = []
    monkeypatch.setattr(releases.time, "sleep", waits.append)  # the backoff, recorded instead of slept
    with caplog.at_level(logging.WARNING, logger="pipeline.store.releases"):
        assert main(["models", "pull", "re-ddi", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"biomine: error: cannot reach 127.0.0.1:{port} ([Errno 111] Connection refused), 5 tries: check the "
        "network, or pull from a mirror you can reach (also $BIOMINE_RELEASE_MIRROR) (--mirror)\n"
    ), err
    assert len(waits) == 4 and sum(waits) <= 20  # bounded retries
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 4 and all(f"cannot reach 127.0.0.1:{port}" in m for m in logged), logged
    assert not any("resuming" in m for m in logged)
