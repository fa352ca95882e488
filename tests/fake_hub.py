"""A loopback stand-in for the Hugging Face Hub: the endpoints ``huggingface_hub`` calls to fetch a model.

Faithful to the real Hub where the client looks (huggingface_hub's ``HfApi.model_info``,
``list_repo_tree``, ``hf_hub_download``): ``GET /api/models/{repo}[/revision/{rev}]`` (the commit
``sha`` and ``siblings``), ``GET /api/models/{repo}/tree/{rev}`` (files with git blob ids and, for
weights, their LFS sha256), ``HEAD``/``GET /{repo}/resolve/{rev}/{file}`` with ``X-Repo-Commit``,
``ETag`` / ``X-Linked-Etag`` / ``X-Linked-Size`` and ``Range`` support, and errors carrying
``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) as the Hub sends them.
A private repository answers 401 ``RepoNotFound`` without ``Authorization: Bearer <token>``.
Listens on 127.0.0.1 only; every request is recorded in :attr:`FakeHub.requests`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_SUFFIXES = (".bin", ".safetensors", ".pt")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> {path: bytes}
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> commit
    token: str | None = None  # private: this token only


class FakeHub:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, repo_id: str, folder: Path, *, branch: str = "main", token: str | None = None) -> str:
        """Publish every file of ``folder`` as a new commit of ``repo_id`` on ``branch``; the commit id."""
        files = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
        commit = hashlib.sha1(repo_id.encode() + b"".join(files.values()) + branch.encode()).hexdigest()
        repo = self.repos.setdefault(repo_id, Repo(token=token))
        repo.commits[commit] = files
        repo.refs[branch] = commit
        return commit

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if "Content-Length" not in (headers or {}):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head and body:
                    self.wfile.write(body)

            def _error(self, status: int, code: str, message: str, head: bool = False):
                body = json.dumps({"error": message}).encode()
                self._send(
                    status,
                    body,
                    {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"},
                    head,
                )

            def _repo(self, repo_id: str, head: bool = False) -> Repo | None:
                repo = hub.repos.get(repo_id)
                auth = self.headers.get("Authorization", "")
                if repo is None or (repo.token and auth != f"Bearer {repo.token}"):
                    self._error(401, "RepoNotFound", f"Repository Not Found for url: {self.path}", head)
                    return None
                return repo

            def _commit(self, repo: Repo, rev: str, head: bool = False) -> str | None:
                rev = urllib.parse.unquote(rev)
                commit = repo.refs.get(rev, rev if rev in repo.commits else None)
                if commit is None:
                    self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
                return commit

            def _entry(self, name: str, data: bytes) -> dict:
                entry = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": name}
                if name.endswith(LFS_SUFFIXES):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                return entry

            def _api(self, parts: list[str]):
                # /api/models/{owner}/{name}[/revision/{rev}] or /api/models/{owner}/{name}/tree/{rev}[/...]
                repo_id = "/".join(parts[2:4])
                repo = self._repo(repo_id)
                if repo is None:
                    return
                rest = parts[4:]
                if not rest or rest[0] == "revision":
                    commit = self._commit(repo, rest[1] if len(rest) > 1 else "main")
                    if commit is None:
                        return
                    files = repo.commits[commit]
                    info = {
                        "_id": repo_id,
                        "id": repo_id,
                        "modelId": repo_id,
                        "sha": commit,
                        "private": bool(repo.token),
                        "tags": [],
                        "siblings": [{"rfilename": n} for n in sorted(files)],
                    }
                    return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})
                if rest[0] == "tree":
                    commit = self._commit(repo, rest[1])
                    if commit is None:
                        return
                    files = repo.commits[commit]
                    body = json.dumps([self._entry(n, d) for n, d in sorted(files.items())]).encode()
                    return self._send(200, body, {"Content-Type": "application/json"})
                self._error(404, "EntryNotFound", f"no route {self.path}")

            def _resolve(self, parts: list[str], head: bool):
                # /{owner}/{name}/resolve/{rev}/{file}
                repo = self._repo("/".join(parts[0:2]), head)
                if repo is None:
                    return
                commit = self._commit(repo, parts[3], head)
                if commit is None:
                    return
                name = "/".join(parts[4:])
                data = repo.commits[commit].get(name)
                if data is None:
                    return self._error(404, "EntryNotFound", f"{name} does not exist on {commit}", head)
                headers = {
                    "X-Repo-Commit": commit,
                    "Accept-Ranges": "bytes",
                    "Content-Type": "application/octet-stream",
                }
                entry = self._entry(name, data)
                if "lfs" in entry:
                    headers["X-Linked-Etag"] = f'"{entry["lfs"]["oid"]}"'
                    headers["X-Linked-Size"] = str(len(data))
                    headers["ETag"] = f'"{entry["lfs"]["oid"]}"'
                else:
                    headers["ETag"] = f'"{entry["oid"]}"'
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and not head:
                    start = int(rng[len("bytes=") :].split("-")[0] or 0)
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                    return self._send(206, data[start:], headers)
                headers["Content-Length"] = str(len(data))
                self._send(200, data, headers, head)

            def _route(self, head: bool):
                path = urllib.parse.urlsplit(self.path).path
                hub.requests.append((self.command, path))
                parts = [p for p in path.split("/") if p]
                if len(parts) >= 4 and parts[:2] == ["api", "models"]:
                    return self._api(parts)
                if len(parts) >= 5 and parts[2] == "resolve":
                    return self._resolve(parts, head)
                self._error(404, "EntryNotFound", f"no route {path}", head)

            def do_GET(self):
                self._route(head=False)

            def do_HEAD(self):
                self._route(head=True)

        return Handler
