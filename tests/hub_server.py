"""A Hugging Face Hub endpoint on loopback, for tests.

It speaks the HTTP protocol that huggingface_hub 2.x speaks (found by pointing ``HF_ENDPOINT`` at a logging
server and by reading huggingface_hub's sources), so that unmodified client code runs against it:
``create_repo``, ``create_branch``, ``upload_folder``/``create_commit`` (preupload, LFS batch + basic
transfer, ndjson commit), ``repo_info``/``model_info``, ``list_repo_tree``, ``get_paths_info``,
``list_repo_refs``, ``list_repo_commits``, ``file_exists``/``repo_exists``,
``hf_hub_download`` and ``snapshot_download`` (HEAD/GET ``resolve``), and diffusers' ``push_to_hub``; for
model, dataset and Space repos (``repo_type="space"`` needs ``space_sdk``, which ``space_info`` reports;
nothing is built or run).

Storage is in memory and git-like: every commit is an immutable snapshot of the repo's files, branches
and tags point at commits, any revision resolves by branch, tag, full commit sha or a unique sha prefix
(at least 7 characters). Files whose content is binary (or that ``.gitattributes`` sends to LFS, or
over 10 MB) are LFS files, as on the Hub: the commit refers to them by sha256 and their bytes are
uploaded to the LFS store first.

Errors carry the headers huggingface_hub turns into its typed exceptions: ``X-Error-Code``
(``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) and ``X-Error-Message``. Like the Hub, a
private repo asked for without a valid token answers 401 ``RepoNotFound`` (it does not reveal that the
repo exists). HEAD error responses never carry a body.

Not implemented (answered 400 with a clear message): pull requests (``create_pr``), Xet transfers,
multipart LFS uploads, gated repos.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

#: the token the test server accepts (as user ``TEST_USER``); any other token is invalid
TEST_TOKEN = "hf_ddpmHubLoopbackTestToken0000000000"
TEST_USER = "ddpm-tester"
TEST_ORGS = ("ddpm-org",)

GITATTRIBUTES = b"""*.7z filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.pkl filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.tar.gz filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
"""
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
SPACE_SDKS = ("gradio", "streamlit", "docker", "static")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a regular file's oid and ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Blob:
    size: int
    git_oid: str  # git sha1 of the content (regular file) or of the LFS pointer (LFS file)
    content: bytes | None = None  # regular files
    lfs_sha256: str | None = None  # LFS files: the bytes live in the server's LFS store

    @property
    def lfs(self) -> dict | None:
        if self.lfs_sha256 is None:
            return None
        return {
            "oid": self.lfs_sha256,
            "size": self.size,
            "pointerSize": len(lfs_pointer(self.lfs_sha256, self.size)),
        }

    @property
    def etag(self) -> str:
        return self.lfs_sha256 or self.git_oid


@dataclass
class Commit:
    sha: str
    parent: str | None
    files: dict[str, Blob]
    title: str
    message: str
    date: float


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    sdk: str | None = None  # spaces: gradio, streamlit, docker or static


class HubError(Exception):
    """An HTTP error answer: status, message, and the ``X-Error-Code`` huggingface_hub dispatches on."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class HubState:
    """Repos, commits and the LFS store, guarded by one lock (the server is threaded)."""

    def __init__(self):
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for tests to inspect
        self.outage: int | None = None  # set to 503 (say) to answer every request with that status
        self._counter = 0

    # -- repos and revisions -------------------------------------------------------------------------
    def new_commit(
        self, repo: Repo, parent: str | None, files: dict[str, Blob], title: str, message: str = ""
    ) -> str:
        self._counter += 1
        payload = json.dumps(
            [
                repo.repo_id,
                parent,
                sorted((p, b.git_oid) for p, b in files.items()),
                title,
                message,
                self._counter,
            ]
        )
        sha = hashlib.sha1(payload.encode()).hexdigest()
        repo.commits[sha] = Commit(sha, parent, dict(files), title, message, time.time())
        return sha

    def create_repo(
        self, repo_type: str, repo_id: str, private: bool, url: str, sdk: str | None = None
    ) -> Repo:
        with self.lock:
            if (
                repo_type,
                repo_id,
            ) in self.repos:  # the Hub's 409 names the repo's url (create_repo reads it)
                raise HubError(409, f"You already created this {repo_type} repo", url=url)
            repo = Repo(repo_type, repo_id, private, sdk=sdk)
            files = {
                ".gitattributes": Blob(
                    len(GITATTRIBUTES), git_blob_sha1(GITATTRIBUTES), content=GITATTRIBUTES
                )
            }
            repo.branches["main"] = self.new_commit(repo, None, files, "initial commit")
            self.repos[(repo_type, repo_id)] = repo
            return repo

    def get_repo(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self.can_read(repo, user)):
            # Like the Hub: an anonymous caller gets 401, an authenticated one 404, and neither learns
            # whether a private repo exists.
            status = 401 if user is None else 404
            raise HubError(status, "Repository not found", "RepoNotFound")
        return repo

    @staticmethod
    def can_read(repo: Repo, user: str | None) -> bool:
        return user is not None and repo.repo_id.split("/")[0] in (user, *TEST_ORGS)

    def resolve(self, repo: Repo, revision: str) -> Commit:
        sha = repo.branches.get(revision) or repo.tags.get(revision)
        if sha is None and re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [c for c in repo.commits if c.startswith(revision)]
            sha = matches[0] if len(matches) == 1 else None
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[sha]


class HubServer:
    """The loopback Hub: ``start()``/``stop()``, ``url`` (the ``HF_ENDPOINT``), ``token``, ``state``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.state = HubState()
        self.token = TEST_TOKEN
        self.user = TEST_USER
        handler = type("BoundHubHandler", (HubHandler,), {"hub": self})
        ThreadingHTTPServer.allow_reuse_address = True
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="loopback-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # helpers for tests
    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.state.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, Blob]:
        repo = self.repo(repo_id, repo_type)
        return self.state.resolve(repo, revision).files


class HubHandler(BaseHTTPRequestHandler):
    """Routes requests to the Hub API. ``hub`` is set on a per-server subclass."""

    hub: HubServer
    protocol_version = "HTTP/1.1"
    server_version = "LoopbackHub/1.0"

    def log_message(self, format, *args):  # quiet: tests read ``state.requests`` instead
        pass

    # -- plumbing ------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        self._body_read = True
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str | None = None
    ):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        if self.command == "HEAD":
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data, headers: dict | None = None):
        self._send(status, json.dumps(data).encode(), headers, "application/json")

    def _error(self, err: HubError):
        if not getattr(self, "_body_read", True):
            # An error answered before the request's body was read: read it now, or its bytes would be
            # taken for the next request on this kept-alive connection (requests-based clients reuse it).
            self._body()
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        if self.command == "HEAD":  # never a body on a HEAD answer
            self._send(err.status, headers=headers)
        else:
            self._json(err.status, {"error": err.message, **err.extra}, headers)

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth:
            return None
        if auth == f"Bearer {self.hub.token}":
            return self.hub.user
        raise HubError(401, "Invalid credentials in Authorization header")

    def _write_user(self) -> str:
        user = self._user()
        if user is None:
            raise HubError(401, "You must be authenticated to do this: pass a token (HF_TOKEN)")
        return user

    def _check_write(self, repo: Repo, user: str) -> None:
        if repo.repo_id.split("/")[0] not in (user, *TEST_ORGS):
            raise HubError(403, f"You don't have the rights to write to {repo.repo_id}")

    def _dispatch(self):
        split = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        raw = [s for s in split.path.split("/") if s != ""]
        parts = [unquote(s) for s in raw]
        with self.hub.state.lock:
            self.hub.state.requests.append((self.command, self.path))
        self._body_read = False
        try:
            if self.hub.state.outage is not None:
                self._body()
                raise HubError(self.hub.state.outage, "the loopback hub is down (outage set by the test)")
            self._route(parts)
        except HubError as err:
            self._error(err)
        except Exception as err:  # a bug in the test server: make it loud in the client's error
            self._error(HubError(500, f"loopback hub error: {type(err).__name__}: {err}"))
            raise

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # -- routing -------------------------------------------------------------------------------------
    def _route(self, parts: list[str]):
        m = self.command
        if parts[:1] == ["api"]:
            rest = parts[1:]
            if rest == ["whoami-v2"] and m == "GET":
                return self.whoami()
            if rest == ["validate-yaml"] and m == "POST":
                self._body()
                return self._json(200, {"errors": [], "warnings": []})
            if rest == ["repos", "create"] and m == "POST":
                return self.create_repo()
            if rest == ["repos", "delete"] and m == "DELETE":
                return self.delete_repo()
            if rest == ["repos", "move"] and m == "POST":
                raise HubError(400, "moving repos is not supported by the loopback hub")
            if len(rest) >= 3 and rest[0] in REPO_TYPES:
                repo_type, repo_id, tail = REPO_TYPES[rest[0]], f"{rest[1]}/{rest[2]}", rest[3:]
                return self.repo_api(repo_type, repo_id, tail)
            raise HubError(404, f"no such API route: {self.path}")
        if parts[:1] == ["lfs-upload"] and len(parts) == 2 and m == "PUT":
            return self.lfs_upload(parts[1])
        repo_type = "model"
        if parts[:1] and parts[0] in REPO_TYPES and parts[0] != "models" and len(parts) >= 3:
            repo_type, parts = REPO_TYPES[parts[0]], parts[1:]
        if len(parts) >= 2 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
            return self.lfs_batch(repo_type, f"{parts[0]}/{parts[1][:-4]}")
        if len(parts) >= 5 and parts[2] == "resolve" and m in ("GET", "HEAD"):
            return self.resolve_file(repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        raise HubError(404, f"no such route: {self.command} {self.path}")

    def repo_api(self, repo_type: str, repo_id: str, tail: list[str]):
        m = self.command
        state = self.hub.state
        user = self._user()
        with state.lock:
            repo = state.get_repo(repo_type, repo_id, user)
            if not tail and m == "GET":
                return self.repo_info(repo, state.resolve(repo, "main"))
            if tail[:1] == ["revision"] and len(tail) == 2 and m == "GET":
                return self.repo_info(repo, state.resolve(repo, tail[1]))
            if tail[:1] == ["tree"] and len(tail) >= 2 and m == "GET":
                return self.tree(repo, state.resolve(repo, tail[1]), "/".join(tail[2:]))
            if tail[:1] == ["paths-info"] and len(tail) == 2 and m == "POST":
                return self.paths_info(state.resolve(repo, tail[1]))
            if tail == ["refs"] and m == "GET":
                return self.refs(repo)
            if tail[:1] == ["commits"] and len(tail) == 2 and m == "GET":
                return self.commits(repo, state.resolve(repo, tail[1]))
            if tail[:1] == ["branch"] and len(tail) == 2 and m in ("POST", "DELETE"):
                return self.branch(repo, tail[1], self._write_user())
            if tail[:1] == ["tag"] and len(tail) == 2 and m == "POST":
                return self.tag(repo, tail[1], self._write_user())
            if tail[:1] == ["preupload"] and len(tail) == 2 and m == "POST":
                return self.preupload(repo, tail[1], self._write_user())
            if tail[:1] == ["commit"] and len(tail) == 2 and m == "POST":
                return self.commit(repo, tail[1], self._write_user())
            if tail == ["settings"] and m == "PUT":
                return self.settings(repo, self._write_user())
        raise HubError(404, f"no such route: {self.command} {self.path}")

    # -- account ------------------------------------------------------------------------------------
    def whoami(self):
        user = self._user()
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        self._json(
            200,
            {
                "type": "user",
                "id": "0" * 24,
                "name": user,
                "fullname": "ddpm-hub tester",
                "orgs": [{"type": "org", "name": org} for org in TEST_ORGS],
                "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": "write"}},
            },
        )

    def create_repo(self):
        user = self._write_user()
        payload = json.loads(self._body() or b"{}")
        name, org = payload.get("name"), payload.get("organization") or user
        if not name or not NAME_RE.match(name) or not NAME_RE.match(org):
            raise HubError(400, f"invalid repo name {org}/{name}")
        if org not in (user, *TEST_ORGS):
            raise HubError(403, f"You don't have the rights to create a repo under {org}")
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"invalid repo type {repo_type!r}")
        sdk = payload.get("sdk")
        if repo_type == "space" and sdk not in SPACE_SDKS:  # the Hub refuses a Space without its SDK
            raise HubError(400, f"a Space needs its sdk, one of {', '.join(SPACE_SDKS)} (got {sdk!r})")
        private = payload.get("visibility", "private" if payload.get("private") else "public") != "public"
        url = f"{self.hub.url}/{URL_PREFIXES[repo_type]}{org}/{name}"
        repo = self.hub.state.create_repo(
            repo_type, f"{org}/{name}", private, url, sdk=sdk if repo_type == "space" else None
        )
        self._json(200, {"url": url, "name": repo.repo_id})

    def delete_repo(self):
        user = self._write_user()
        payload = json.loads(self._body() or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or user}/{payload.get('name')}"
        with self.hub.state.lock:
            repo = self.hub.state.get_repo(repo_type, repo_id, user)
            self._check_write(repo, user)
            del self.hub.state.repos[(repo_type, repo_id)]
        self._send(200)

    def settings(self, repo: Repo, user: str):
        self._check_write(repo, user)
        payload = json.loads(self._body() or b"{}")
        if "private" in payload:
            repo.private = bool(payload["private"])
        if "visibility" in payload:
            repo.private = payload["visibility"] != "public"
        self._json(200, {})

    # -- reading -------------------------------------------------------------------------------------
    def repo_info(self, repo: Repo, commit: Commit):
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if self.query.get("blobs") in ("True", "true", "1"):
                sibling.update(size=blob.size, blobId=blob.git_oid)
                if blob.lfs:
                    sibling["lfs"] = {
                        "sha256": blob.lfs_sha256,
                        "size": blob.size,
                        "pointerSize": blob.lfs["pointerSize"],
                    }
            siblings.append(sibling)
        card = _card_metadata(commit.files.get("README.md"))
        iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))  # noqa: E731
        info = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.sha,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": list(card.get("tags") or []),
            "createdAt": iso(repo.created),
            "lastModified": iso(commit.date),
            "siblings": siblings,
        }
        if repo.repo_type == "space":  # the Space's SDK; nothing is built or run here
            info["sdk"] = card.get("sdk") or repo.sdk
            info["subdomain"] = repo.repo_id.replace("/", "-").replace("_", "-").lower()
            info["runtime"] = {"stage": "NO_APP_FILE" if "app.py" not in commit.files else "BUILDING"}
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
            info["library_name"] = card.get("library_name")
            info["pipeline_tag"] = card.get("pipeline_tag")
        if card:
            info["cardData"] = card
        self._json(200, info)

    def tree(self, repo: Repo, commit: Commit, path: str):
        path = path.strip("/")
        prefix = f"{path}/" if path else ""
        recursive = self.query.get("recursive") in ("True", "true", "1")
        if path and path not in _folders(commit.files):
            raise HubError(404, f"{path} does not exist on {commit.sha}", "EntryNotFound")
        entries, seen = [], set()
        for file_path, blob in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix) :].split("/")
            for depth in range(1, len(rest)):  # folders on the way
                folder = prefix + "/".join(rest[:depth])
                if folder not in seen:
                    seen.add(folder)
                    entries.append(
                        {
                            "type": "directory",
                            "oid": hashlib.sha1(folder.encode()).hexdigest(),
                            "size": 0,
                            "path": folder,
                        }
                    )
                if not recursive:
                    break
            if len(rest) == 1 or recursive:
                entry = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": file_path}
                if blob.lfs:
                    entry["lfs"] = blob.lfs
                entries.append(entry)
        self._json(200, entries)

    def paths_info(self, commit: Commit):
        body = self._body()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        folders, entries = _folders(commit.files), []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                blob = commit.files[path]
                entry = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": path}
                if blob.lfs:
                    entry["lfs"] = blob.lfs
                entries.append(entry)
            elif path in folders:
                entries.append(
                    {
                        "type": "directory",
                        "oid": hashlib.sha1(path.encode()).hexdigest(),
                        "size": 0,
                        "path": path,
                    }
                )
        self._json(200, entries)

    def refs(self, repo: Repo):
        self._json(
            200,
            {
                "branches": [
                    {"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in repo.branches.items()
                ],
                "tags": [
                    {"name": t, "ref": f"refs/tags/{t}", "targetCommit": s} for t, s in repo.tags.items()
                ],
                "converts": [],
            },
        )

    def commits(self, repo: Repo, commit: Commit | None):
        out = []
        while commit is not None:
            out.append(
                {
                    "id": commit.sha,
                    "title": commit.title,
                    "message": commit.message,
                    "authors": [{"user": TEST_USER}],
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date)),
                }
            )
            commit = repo.commits.get(commit.parent) if commit.parent else None
        self._json(200, out)

    def resolve_file(self, repo_type: str, repo_id: str, revision: str, path: str):
        state = self.hub.state
        with state.lock:
            repo = state.get_repo(repo_type, repo_id, self._user())
            commit = state.resolve(repo, revision)
            blob = commit.files.get(path)
            if blob is None:
                raise HubError(404, "Entry not found", "EntryNotFound")
            data = blob.content if blob.content is not None else state.lfs[blob.lfs_sha256]
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{blob.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.lfs_sha256}"', "X-Linked-Size": blob.size})
        status, rng = 200, self.headers.get("Range")
        if rng and (match := re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())):
            start, end = int(match[1]), int(match[2]) if match[2] else len(data) - 1
            if start >= len(data) and len(data) > 0:
                raise HubError(416, "Requested range not satisfiable")
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        if self.command == "HEAD":
            headers["Content-Length"] = len(data)
            return self._send(status, headers=headers)
        self._send(status, data, headers)

    # -- writing -------------------------------------------------------------------------------------
    def branch(self, repo: Repo, name: str, user: str):
        self._check_write(repo, user)
        if self.command == "DELETE":
            if name not in repo.branches or name == "main":
                raise HubError(404 if name not in repo.branches else 403, f"cannot delete branch {name}")
            del repo.branches[name]
            return self._send(200)
        payload = json.loads(self._body() or b"{}")
        if name in repo.branches:
            raise HubError(409, f"Reference refs/heads/{name} already exists")
        start = self.hub.state.resolve(repo, payload.get("startingPoint") or "main")
        repo.branches[name] = start.sha
        self._send(200)

    def tag(self, repo: Repo, revision: str, user: str):
        self._check_write(repo, user)
        payload = json.loads(self._body() or b"{}")
        if payload.get("tag") in repo.tags:
            raise HubError(409, f"Tag {payload.get('tag')} already exists")
        repo.tags[payload["tag"]] = self.hub.state.resolve(repo, revision).sha
        self._send(200)

    def preupload(self, repo: Repo, revision: str, user: str):
        self._check_write(repo, user)
        if "create_pr" in self.query:
            raise HubError(400, "pull requests are not supported by the loopback hub")
        files = self.hub.state.resolve(repo, revision).files
        lfs_patterns = _lfs_patterns(files)
        out = []
        for item in json.loads(self._body())["files"]:
            sample = base64.b64decode(item["sample"])
            path = item["path"]
            lfs = (
                item["size"] > LFS_SIZE_THRESHOLD
                or b"\0" in sample
                or any(
                    fnmatch.fnmatch(path.rsplit("/", 1)[-1], p) or fnmatch.fnmatch(path, p)
                    for p in lfs_patterns
                )
            )
            existing = files.get(path)
            oid = None if existing is None else (existing.lfs_sha256 if lfs else existing.git_oid)
            out.append(
                {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._json(200, {"files": out, "commitOid": self.hub.state.resolve(repo, revision).sha})

    def lfs_batch(self, repo_type: str, repo_id: str):
        state = self.hub.state
        with state.lock:
            user = self._write_user()
            repo = state.get_repo(repo_type, repo_id, user)
            self._check_write(repo, user)
        payload = json.loads(self._body())
        if payload.get("operation") != "upload":
            raise HubError(400, "only LFS uploads are supported by the loopback hub")
        if "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(400, "the loopback hub only speaks the basic LFS transfer")
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in state.lfs:
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.url}/lfs-upload/{obj['oid']}", "header": {}}
                }
            objects.append(entry)
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
            content_type="application/vnd.git-lfs+json",
        )

    def lfs_upload(self, oid: str):
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"LFS object does not match its oid {oid}")
        with self.hub.state.lock:
            self.hub.state.lfs[oid] = data
        self._send(200)

    def commit(self, repo: Repo, revision: str, user: str):
        self._check_write(repo, user)
        if "create_pr" in self.query:
            raise HubError(400, "pull requests are not supported by the loopback hub")
        state = self.hub.state
        if revision not in repo.branches:
            state.resolve(repo, revision)  # 404 RevisionNotFound when it is nothing at all
            raise HubError(400, f"Invalid rev id: {revision} is not a branch; commits go to branches")
        head = repo.commits[repo.branches[revision]]
        files = dict(head.files)
        header = None
        for line in self._body().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
                parent = value.get("parentCommit")
                if parent and not head.sha.startswith(parent):
                    raise HubError(
                        412, f"A commit has happened since {parent}: the head of {revision} is {head.sha}"
                    )
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"unsupported encoding {value.get('encoding')}")
                data = base64.b64decode(value["content"])
                files[value["path"]] = Blob(len(data), git_blob_sha1(data), content=data)
            elif key == "lfsFile":
                sha = value["oid"]
                if sha not in state.lfs:
                    raise HubError(422, f"LFS object {sha} for {value['path']} was not uploaded")
                size = len(state.lfs[sha])
                files[value["path"]] = Blob(size, git_blob_sha1(lfs_pointer(sha, size)), lfs_sha256=sha)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, f"{value['path']} does not exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for p in [p for p in files if p.startswith(prefix)]:
                    del files[p]
            else:
                raise HubError(400, f"unsupported commit operation {key!r}")
        if header is None:
            raise HubError(400, "the commit payload has no header line")
        with state.lock:
            sha = state.new_commit(
                repo, head.sha, files, header.get("summary") or "", header.get("description") or ""
            )
            repo.branches[revision] = sha
        prefix = URL_PREFIXES[repo.repo_type]
        self._json(
            200,
            {
                "success": True,
                "commitOid": sha,
                "commitUrl": f"{self.hub.url}/{prefix}{repo.repo_id}/commit/{sha}",
                "commitMessage": header.get("summary"),
                "pullRequestUrl": None,
            },
        )


def _folders(files: dict[str, Blob]) -> set[str]:
    folders = set()
    for path in files:
        parts = path.split("/")[:-1]
        folders.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return folders


def _lfs_patterns(files: dict[str, Blob]) -> list[str]:
    blob = files.get(".gitattributes")
    text = (blob.content or b"").decode(errors="replace") if blob is not None else ""
    return [line.split()[0] for line in text.splitlines() if "filter=lfs" in line]


def _card_metadata(blob: Blob | None) -> dict:
    """The YAML front matter of README.md, as the Hub reads it into ``cardData``."""
    if blob is None or blob.content is None:
        return {}
    import yaml

    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", blob.content.decode(errors="replace"), re.S)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match[1])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def repo_url(endpoint: str, repo_id: str, repo_type: str = "model") -> str:
    return f"{endpoint}/{URL_PREFIXES[repo_type]}{quote(repo_id)}"
