"""A loopback stand-in for the Hugging Face Hub's file endpoint, for tests.

It answers ``HEAD`` and ``GET /{repo_id}/resolve/{revision}/{filename}`` the way
``huggingface_hub.hf_hub_download`` (2.x, httpx-based) expects the Hub to:

* ``X-Repo-Commit``: the 40-hex commit the revision resolves to (required by the client);
* ``ETag``: for LFS files the sha256 of the content, for regular git files the git blob sha1
  (both quoted); LFS files also carry ``X-Linked-Etag`` and ``X-Linked-Size`` (which the client
  prefers over ``ETag`` / ``Content-Length``);
* ``Content-Length`` (the client asks for ``Accept-Encoding: identity``, so this is the size);
* 404 with ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound`` (the latter
  with ``X-Repo-Commit``, as the Hub does) for missing things;
* ``Range: bytes=N-`` on GET (the client only sends it to resume a broken download);
* optionally (``lfs_redirect=True``) LFS files the way the real Hub serves them: ``/resolve``
  answers ``302`` to a CDN on another origin (here a second server on another port), carrying
  ``X-Repo-Commit`` / ``X-Linked-Etag`` / ``X-Linked-Size`` on the redirect itself. The client
  does not follow redirects to another origin on HEAD; it reads the metadata from the 302 and
  GETs the CDN URL.

No ``X-Xet-Hash`` / xet ``Link`` header is ever sent, so the client never takes the xet path and
downloads with a plain HTTP GET from this server. Files can be "tampered with": then GET serves
other bytes while HEAD keeps advertising the original hash and size, like a corrupted CDN.
Every request is logged in :attr:`FakeHub.requests`.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_RESOLVE = re.compile(r"^/(?P<repo>.+?)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$")


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a blob: sha1 over ``b"blob <size>\\0" + data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    commit: str
    files: dict[str, bytes]
    lfs: set[str] = field(default_factory=set)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit

    def resolve(self, revision: str) -> str | None:
        if revision == self.commit:
            return revision
        return self.branches.get(revision)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


class FakeHub:
    """A threaded HTTP server on 127.0.0.1 (random port) serving repositories from memory.

    Use as a context manager, or call :meth:`start` / :meth:`stop`.
    """

    def __init__(self, lfs_redirect: bool = False) -> None:
        self.lfs_redirect = lfs_redirect
        self.repos: dict[str, FakeRepo] = {}
        self.tampered: dict[tuple[str, str], bytes] = {}
        self.requests: list[Request] = []
        self._servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []
        self._lock = threading.Lock()

    # -- content ---------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes], lfs: set[str] | None = None, commit: str | None = None) -> FakeRepo:
        """Publish ``files`` as ``repo_id`` at one commit, with ``main`` pointing at it."""
        commit = commit or hashlib.sha1(repo_id.encode() + b"".join(sorted(files.values()))).hexdigest()
        repo = FakeRepo(commit=commit, files=dict(files), lfs=set(lfs or ()), branches={"main": commit})
        self.repos[repo_id] = repo
        return repo

    def tamper(self, repo_id: str, filename: str, data: bytes) -> None:
        """Serve ``data`` on GET while HEAD still advertises the published file's hash and size."""
        self.tampered[(repo_id, filename)] = data

    def untamper(self) -> None:
        self.tampered.clear()

    # -- server ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The Hub endpoint (what ``HF_ENDPOINT`` should be)."""
        return self._url(0)

    @property
    def cdn_url(self) -> str:
        """Where LFS redirects point (another origin), with ``lfs_redirect``."""
        return self._url(1)

    def _url(self, i: int) -> str:
        assert len(self._servers) > i, "server not started"
        host, port = self._servers[i][0].server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        for role in ("hub", "cdn") if self.lfs_redirect else ("hub",):
            handler = type(f"{role.title()}Handler", (_Handler,), {"hub": self, "role": role})
            server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            server.daemon_threads = True
            thread = threading.Thread(target=server.serve_forever, args=(0.05,), name=f"fake-{role}", daemon=True)
            thread.start()
            self._servers.append((server, thread))
        return self

    def stop(self) -> None:
        for server, thread in self._servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        self._servers.clear()

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub
    role: str  # "hub" or "cdn"

    def log_message(self, format, *args) -> None:  # keep pytest output clean
        pass

    def end_headers(self) -> None:
        # No keep-alive: once stop() returns, no pooled client connection can still be served.
        self.send_header("Connection", "close")
        self.close_connection = True
        super().end_headers()

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def _answer(self, send_body: bool) -> None:
        hub = self.hub
        hub.log(Request(self.command, f"{self.role}:{self.path}", dict(self.headers.items())))
        if self.role == "cdn":
            return self._answer_cdn(send_body)
        match = _RESOLVE.match(urlsplit(self.path).path)
        if match is None:
            return self._error(404, None, f"no such endpoint {self.path}", send_body)
        repo_id, revision, filename = (unquote(match[g]) for g in ("repo", "revision", "filename"))
        repo = hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found", send_body)
        commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", "Invalid rev id: " + revision, send_body)
        if filename not in repo.files:
            return self._error(404, "EntryNotFound", f"{filename} does not exist on {revision!r}", send_body, commit)

        published = repo.files[filename]
        body = hub.tampered.get((repo_id, filename), published)
        headers = {"X-Repo-Commit": commit, "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if filename in repo.lfs:
            sha256 = hashlib.sha256(published).hexdigest()
            headers.update({"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(published))})
            if hub.lfs_redirect:
                headers["Location"] = f"{hub.cdn_url}/lfs/{repo_id}/{filename}/{sha256}"
                headers["Content-Length"] = "0"
                self.send_response(302)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                return
        else:
            headers["ETag"] = f'"{git_blob_sha1(published)}"'
        self._send_file(body, headers, send_body)

    def _answer_cdn(self, send_body: bool) -> None:
        match = re.fullmatch(r"/lfs/(?P<repo>.+)/(?P<filename>[^/]+)/(?P<sha>[0-9a-f]{64})", urlsplit(self.path).path)
        repo = self.hub.repos.get(match["repo"]) if match else None
        if repo is None or match["filename"] not in repo.files:
            return self._error(404, None, "no such object", send_body)
        repo_id, filename = match["repo"], match["filename"]
        body = self.hub.tampered.get((repo_id, filename), repo.files[filename])
        self._send_file(body, {"Content-Type": "application/octet-stream", "ETag": f'"{match["sha"]}"'}, send_body)

    def _send_file(self, body: bytes, headers: dict[str, str], send_body: bool) -> None:
        status, start = 200, 0
        range_header = self.headers.get("Range")
        if send_body and range_header:
            m = re.fullmatch(r"bytes=(\d+)-", range_header.strip())
            if m and int(m[1]) < len(body):
                status, start = 206, int(m[1])
                headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        payload = body[start:]
        headers["Content-Length"] = str(len(payload))

        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if send_body:
            self.wfile.write(payload)

    def _error(self, status: int, code: str | None, message: str, send_body: bool, commit: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)
