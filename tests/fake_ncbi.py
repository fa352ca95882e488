"""A loopback fake of NCBI's PubMed file server (https://ftp.ncbi.nlm.nih.gov/pubmed/), for ``biomine sync``.

It serves ``/pubmed/baseline/`` and ``/pubmed/updatefiles/`` as the Apache-style HTML index NCBI
serves (``<a href="pubmed26n0001.xml.gz">`` with ``pubmed26n0001.xml.gz.md5`` beside each file,
whose body is NCBI's ``MD5(pubmed26n0001.xml.gz)= <hex>``), answers ``Range`` requests with 206,
and can misbehave on purpose: ``cut[name] = n`` closes the connection in the middle of the body of
the next n downloads of ``name``; ``corrupt[name] = n`` serves n downloads with one byte changed
(the .md5 then does not match); ``pause = (name, n)`` stops the next body of ``name`` after n bytes until ``resume`` is set (a
download caught in the middle, for as long as a test needs).
``requests`` records ``(path, Range header)`` of every GET. Only 127.0.0.1 is ever bound.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fake_eutils import article_xml, pubmed_document


def pubmed_file(pmids: list[int], deletions: list[int] | None = None, *, title: str = "") -> bytes:
    """A small real PubMed baseline/update file (gzip'd PubmedArticleSet) with these PMIDs."""
    articles = [article_xml(p, title=f"{title}Article {p} on drug interactions." if title else None) for p in pmids]
    return gzip.compress(pubmed_document(articles, deletions).encode(), mtime=0)


def md5_line(name: str, data: bytes) -> bytes:
    """The body of NCBI's ``NAME.md5`` (as the real files have it, newline included)."""
    return f"MD5({name})= {hashlib.md5(data).hexdigest()}\n".encode()


def index_html(folder: str, names: list[str], sizes: dict[str, int]) -> bytes:
    """A directory index in the layout Apache (and NCBI's FTP site over HTTPS) writes."""
    rows = "".join(f'<a href="{n}">{n}</a>{" " * max(1, 40 - len(n))}2025-12-12 11:02  {sizes[n]:>6}\n' for n in names)
    return (
        '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">\n<html>\n <head>\n'
        f"  <title>Index of /pubmed/{folder}</title>\n </head>\n <body>\n<h1>Index of /pubmed/{folder}</h1>\n"
        '<pre>Name                                    Last modified      Size  <hr><a href="/pubmed/">Parent Directory</a>'
        "                                             -   \n"
        f'<a href="README.txt">README.txt</a>                              2025-12-05 14:03  2.0K  \n{rows}'
        "<hr></pre>\n</body></html>\n"
    ).encode()


class FakeNcbi:
    """The server (see the module docstring); ``add(folder, name, data)`` publishes a file and its .md5."""

    def __init__(self):
        self.files: dict[str, dict[str, bytes]] = {"baseline": {}, "updatefiles": {}}
        self.cut: dict[str, int] = {}
        self.corrupt: dict[str, int] = {}
        self.pause: tuple[str, int] | None = None
        self.resume = threading.Event()
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/pubmed/"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def add(self, folder: str, name: str, data: bytes, *, md5: bool = True) -> None:
        self.files[folder][name] = data
        if md5:
            self.files[folder][name + ".md5"] = md5_line(name, data)

    def gets(self, suffix: str = ".xml.gz") -> list[tuple[str, str | None]]:
        """The GETs of files whose path ends with ``suffix``."""
        return [r for r in self.requests if r[0].endswith(suffix)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "FakeNcbi":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                rng = self.headers.get("Range")
                with server.lock:
                    server.requests.append((path, rng))
                parts = path.removeprefix("/pubmed/").split("/")
                if len(parts) != 2 or parts[0] not in server.files:
                    self._send(404, b"Not Found")
                    return
                folder, name = parts
                files = server.files[folder]
                if name == "":
                    names = sorted(files)
                    html = index_html(folder, names, {n: len(files[n]) for n in names})
                    self._send(200, html, {"Content-Type": "text/html;charset=ISO-8859-1"})
                    return
                if name not in files:
                    self._send(404, b"Not Found")
                    return
                data = files[name]
                with server.lock:
                    if server.corrupt.get(name, 0) > 0:
                        server.corrupt[name] -= 1
                        data = data[:-9] + bytes([data[-9] ^ 0xFF]) + data[-8:]
                    cut = server.cut.get(name, 0) > 0
                    if cut:
                        server.cut[name] -= 1
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(data) and rng:
                    self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    return
                body = data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if cut:  # half the body, then the connection closes: a broken download
                    body = body[: len(body) // 2]
                    self.close_connection = True
                with server.lock:
                    pause, server.pause = (
                        (server.pause, None) if server.pause and server.pause[0] == name else (None, server.pause)
                    )
                if pause is not None:
                    self.wfile.write(body[: pause[1]])
                    self.wfile.flush()
                    server.resume.wait(60)
                    body = body[pause[1] :]
                for i in range(0, len(body), 1024):
                    self.wfile.write(body[i : i + 1024])
                    self.wfile.flush()

        return Handler
