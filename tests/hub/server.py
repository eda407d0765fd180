"""A loopback HTTP server speaking the Hugging Face Hub's file API, for ``HF_ENDPOINT``.

It serves a folder of repositories laid out as ``root/<org>/<name>/`` (``build.build_all``) with
what huggingface_hub 0.36 and transformers call while loading a checkpoint:

* ``HEAD|GET /{repo}/resolve/{revision}/{file}``: the file, with ``ETag`` (git blob sha1, or the
  sha256 for LFS files, as the Hub), ``X-Repo-Commit``, ``Content-Length``, LFS files also
  ``X-Linked-Etag`` / ``X-Linked-Size``; ``Range`` for resumed downloads. No redirects.
* ``GET /api/models/{repo}[/revision/{revision}]``: ``model_info`` (sha, siblings; sizes and LFS
  facts with ``blobs=True``, gated, tags and cardData from the README's front matter).
* ``GET /api/models/{repo}/tree/{revision}[/{path}]``: ``list_repo_tree`` / ``list_repo_files``.
* ``HEAD|GET /api/models``: the reachability check of ``polydub.export.hub``.

Errors carry the Hub's ``X-Error-Code`` (what ``hf_raise_for_status`` maps to exceptions): an
unknown repository 404 ``RepoNotFound``; a gated one's files 401 (no token) or 403 (a token not
accepted) ``GatedRepo``; an unknown revision 404 ``RevisionNotFound``; a missing file 404
``EntryNotFound`` (with ``X-Repo-Commit``, so the client caches the absence). Each repository has
one commit, ``main``, whose sha is a hash of its files; the sha itself is accepted as a revision.
Routes it does not serve (commits, discussions: transformers' background safetensors conversion
asks for them) answer a plain 404, so that thread stops there and never reaches the network.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.hub.build import GATED, LFS_SUFFIXES

DEFAULT_TOKEN = "hf_fakehub_accepted_token"
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)$")
_API = re.compile(
    r"^/api/models/(?P<repo>[^/]+/[^/]+)"
    r"(?:/revision/(?P<revision>[^/]+)|/tree/(?P<tree>[^/]+)(?:/(?P<path>.+))?)?$"
)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    sha256: str
    git_sha1: str  # the blob id git gives the file's content

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_sha1


@dataclass(frozen=True)
class Repo:
    repo_id: str
    root: Path
    commit: str
    files: dict[str, RepoFile]
    card: dict[str, Any] = field(default_factory=dict)


def scan_repo(repo_id: str, root: Path) -> Repo:
    files: dict[str, RepoFile] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        name = path.relative_to(root).as_posix()
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        files[name] = RepoFile(name, len(data), hashlib.sha256(data).hexdigest(), blob)
    listing = "".join(f"{f.path}\0{f.sha256}\n" for f in files.values())
    commit = hashlib.sha1(listing.encode()).hexdigest()
    return Repo(repo_id, root, commit, files, _front_matter(root / "README.md"))


def _front_matter(readme: Path) -> dict[str, Any]:
    import yaml

    if not readme.is_file():
        return {}
    parts = readme.read_text(encoding="utf-8").split("---\n")
    loaded = yaml.safe_load(parts[1]) if len(parts) > 2 else None
    return loaded if isinstance(loaded, dict) else {}


def scan(root: Path) -> dict[str, Repo]:
    """Every ``root/<org>/<name>/`` holding files, by repository id."""
    repos: dict[str, Repo] = {}
    for repo_dir in sorted(p for p in root.glob("*/*") if p.is_dir()):
        repo_id = repo_dir.relative_to(root).as_posix()
        repos[repo_id] = scan_repo(repo_id, repo_dir)
    return repos


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.commit = status, code, message, commit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as requests' sessions expect
    server: FakeHubServer

    def do_HEAD(self) -> None:
        self._dispatch(body=False)

    def do_GET(self) -> None:
        self._dispatch(body=True)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # every request is in FakeHubServer.requests instead

    def _dispatch(self, body: bool) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)  # components unquoted once split
        status = 500
        try:
            if path.rstrip("/") == "/api/models":
                status = self._send_json([self._info(r, r.commit, {}) for r in self._repos()], body)
            elif match := _RESOLVE.match(path):
                repo_id, revision, name = (unquote(match[g]) for g in ("repo", "revision", "file"))
                status = self._send_file(repo_id, revision, name, body)
            elif match := _API.match(path):
                repo = self._repo(unquote(match["repo"]))
                if match["tree"] is not None:
                    revision = self._commit(repo, unquote(match["tree"]))
                    data: Any = self._tree(repo, unquote(match["path"] or ""), query)
                else:
                    revision = self._commit(repo, unquote(match["revision"] or "main"))
                    data = self._info(repo, revision, query)
                status = self._send_json(data, body)
            else:
                raise HubError(404, None, f"{path} is not served by the fake hub")
        except HubError as error:
            status = self._send_error(error, body)
        finally:
            self.server.requests.append((self.command, self.path, status))

    # ---------------------------------------------------------------------------- lookups

    def _repos(self) -> list[Repo]:
        return list(self.server.repos.values())

    def _repo(self, repo_id: str) -> Repo:
        repo = self.server.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
        return repo

    def _commit(self, repo: Repo, revision: str) -> str:
        if revision not in ("main", repo.commit):
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo.commit

    def _check_access(self, repo: Repo) -> None:
        if repo.repo_id not in self.server.gated:
            return
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        if not token:
            raise HubError(
                401,
                "GatedRepo",
                f"Access to model {repo.repo_id} is restricted. You must have access to it and "
                "be authenticated to access it. Please log in.",
            )
        if token not in self.server.tokens:
            raise HubError(
                403,
                "GatedRepo",
                f"Access to model {repo.repo_id} is restricted and you are not in the authorized "
                "list.",
            )

    # ---------------------------------------------------------------------------- answers

    def _info(self, repo: Repo, revision: str, query: dict[str, list[str]]) -> dict[str, Any]:
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for f in repo.files.values():
            sibling: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                sibling |= {"size": f.size, "blobId": f.git_sha1}
                if f.lfs:
                    sibling["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": 134}
            siblings.append(sibling)
        card = repo.card
        tags = [*card.get("tags", []), f"license:{card['license']}"] if card else []
        return {
            "_id": repo.commit[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": revision,
            "private": False,
            "disabled": False,
            "gated": "auto" if repo.repo_id in self.server.gated else False,
            "downloads": 0,
            "likes": 0,
            "tags": tags,
            "pipeline_tag": card.get("pipeline_tag"),
            "library_name": card.get("library_name"),
            "cardData": card,
            "siblings": siblings,
            "createdAt": "2023-01-01T00:00:00.000Z",
            "lastModified": "2023-01-01T00:00:00.000Z",
        }

    def _tree(self, repo: Repo, base: str, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{base.strip('/')}/" if base.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for f in repo.files.values():
            if not f.path.startswith(prefix):
                continue
            rest = f.path[len(prefix) :]
            if "/" in rest and not recursive:
                folder = prefix + rest.split("/")[0]
                entries[folder] = {"type": "directory", "oid": "0" * 40, "size": 0, "path": folder}
                continue
            entry: dict[str, Any] = {
                "type": "file",
                "oid": f.git_sha1,
                "size": f.size,
                "path": f.path,
            }
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
            entries[f.path] = entry
        if prefix and not entries:
            raise HubError(404, "EntryNotFound", f"{base} does not exist on main", repo.commit)
        return list(entries.values())

    def _send_file(self, repo_id: str, revision: str, name: str, body: bool) -> int:
        repo = self._repo(repo_id)
        self._check_access(repo)
        commit = self._commit(repo, revision)
        entry = repo.files.get(name)
        if entry is None:
            raise HubError(404, "EntryNotFound", f"{name} does not exist on {revision}", commit)
        start, end = 0, entry.size - 1
        status = 200
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if ranged and entry.size:
            start = int(ranged[1])
            end = min(int(ranged[2]), end) if ranged[2] else end
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(max(end - start + 1, 0)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{entry.etag}"')
        self.send_header("X-Repo-Commit", commit)
        if entry.lfs:
            self.send_header("X-Linked-Etag", f'"{entry.sha256}"')
            self.send_header("X-Linked-Size", str(entry.size))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{entry.size}")
        self.end_headers()
        if body:
            with (repo.root / name).open("rb") as fh:
                fh.seek(start)
                left = end - start + 1
                while left > 0:
                    chunk = fh.read(min(_CHUNK, left))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)
        return status

    def _send_json(
        self, data: Any, body: bool, status: int = 200, headers: dict[str, str] | None = None
    ) -> int:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(payload)
        return status

    def _send_error(self, error: HubError, body: bool) -> int:
        headers = {"X-Error-Message": error.message}
        if error.code:
            headers["X-Error-Code"] = error.code
        if error.commit:
            headers["X-Repo-Commit"] = error.commit
        return self._send_json({"error": error.message}, body, error.status, headers)


class FakeHubServer(ThreadingHTTPServer):
    """The Hub on ``127.0.0.1`` at a free port, serving ``root`` from a background thread."""

    daemon_threads = True

    def __init__(
        self,
        root: Path,
        gated: frozenset[str] = GATED,
        tokens: frozenset[str] = frozenset({DEFAULT_TOKEN}),
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.repos = scan(root)
        self.gated = gated
        self.tokens = tokens
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status), in order
        self._thread = threading.Thread(target=self.serve_forever, name="fake-hub", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeHubServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def serve(
    root: Path,
    gated: frozenset[str] = GATED,
    tokens: frozenset[str] = frozenset({DEFAULT_TOKEN}),
) -> Iterator[str]:
    """The fake Hub serving ``root`` while the block runs; yields its endpoint URL."""
    server = FakeHubServer(root, gated, tokens).start()
    try:
        yield server.url
    finally:
        server.close()
