"""A local stand-in for the Hugging Face Hub: real HTTP on 127.0.0.1, real commits, tags and downloads.

It serves the endpoints that `huggingface_hub` calls to publish a folder (create a repo, preupload, LFS batch
and upload, commit, tag) and to download one (repo and revision info, HEAD and GET on `/resolve`), so that
`HfApi(endpoint=hub.url)` and `from_pretrained(repo_id, revision=...)` run unmodified against it. Each repo
keeps its file contents in a folder under `root`, addressed by sha256, and every commit keeps its whole file
tree, so any past commit, branch or tag stays downloadable.

    with FakeHub(tmp_path) as hub:
        api = HfApi(endpoint=hub.url, token=hub.write_token)
        api.create_repo("org/model")
        ...
        hub.files("org/model", "main")  # {path: bytes} at that revision

Outages, for the tests of what a client does when the Hub is away: `go_down()` refuses every connection (the
port stays reserved), `go_down(503)` answers every request with that status, `answer_delay_s` holds each answer
(a Hub that does not answer in time), `fail_next` fails the next few requests, `fail_containing` fails every
request whose body holds some bytes (one version's commit, say); `come_back()` ends an outage.

What it does not do: Xet storage (the client must run with `HF_HUB_DISABLE_XET`; `patch_client` sets it),
pull requests, branches other than `main`, dataset and Space repos, multipart LFS uploads, `Range` requests
(the client accepts a full 200 answer). Unknown routes answer 404, so a test sees what the client called.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

WRITE_TOKEN = "hf_fake_write_token"
READ_TOKEN = "hf_fake_read_token"

# What a new Hub repo starts with: one commit holding a .gitattributes that routes binaries through LFS.
_INITIAL_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.zip")
)
_COMMIT_OID = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Blob:
    """One file's content as the Hub describes it."""

    size: int
    sha256: str
    git_oid: str  # git's blob id (sha1 of "blob <size>\0" + content): the Hub's id and ETag of a regular file
    lfs: bool

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class Commit:
    oid: str
    parent: str | None
    tree: dict[str, Blob]
    title: str
    description: str
    created_at: float


@dataclass
class Repo:
    repo_id: str
    private: bool
    folder: Path
    created_at: float
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def object_path(self, sha256: str) -> Path:
        return self.folder / "objects" / sha256


class HubError(Exception):
    """An HTTP error answer, with the `X-Error-Code` that `huggingface_hub` turns into its exception types."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.extra = headers or {}, extra or {}


class FakeHub:
    """The Hub's state (repos, commits, tags, LFS objects) and the HTTP server that exposes it.

    `tokens` maps each accepted bearer token to "write" or "read". `lfs_patterns` and `lfs_threshold_bytes` decide
    the upload mode the preupload endpoint hands out, as the real Hub's .gitattributes does; pass
    `lfs_patterns=(), lfs_threshold_bytes=None` to have every file sent inline in the commit.
    """

    def __init__(
        self,
        root: Path,
        tokens: dict[str, str] | None = None,
        lfs_patterns: tuple[str, ...] = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt"),
        lfs_threshold_bytes: int | None = 10 * 2**20,
    ):
        self.root = Path(root)
        self.tokens = dict(tokens) if tokens is not None else {WRITE_TOKEN: "write", READ_TOKEN: "read"}
        self.lfs_patterns = lfs_patterns
        self.lfs_threshold_bytes = lfs_threshold_bytes
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in arrival order
        self.fail_next: list[int] = []  # statuses to answer the next requests with, whatever they ask (an outage)
        self.fail_containing: dict[bytes, int] = {}  # a request whose body holds these bytes gets this status
        self.down_with: int | None = None  # while set, every request is answered with this status (go_down)
        self.answer_delay_s = 0.0  # each answer waits this long first: a Hub that does not answer in time
        self._unreachable = False  # go_down(): connections are refused, and kept-alive ones closed unanswered
        self._address: tuple[str, int] | None = None
        self._port_holder: socket.socket | None = None
        self._lfs_tickets: dict[str, tuple[str, str, int]] = {}  # upload ticket -> (repo_id, sha256, size)
        self._commit_counter = 0
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------------

    @property
    def write_token(self) -> str:
        return next(token for token, role in self.tokens.items() if role == "write")

    @property
    def url(self) -> str:
        if self._address is None:
            raise RuntimeError("FakeHub is not started")
        host, port = self._address
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        self.root.mkdir(parents=True, exist_ok=True)
        # the same port when it comes back: a client keeps the URL it was given
        self._server = ThreadingHTTPServer(self._address or ("127.0.0.1", 0), _Handler)
        self._server.hub = self  # type: ignore[attr-defined]
        self._address = self._server.server_address[:2]
        # a short poll interval: `stop` waits for the serving loop to notice, once per test
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None
        if self._port_holder is not None:
            self._port_holder.close()
            self._port_holder = None

    def go_down(self, status: int | None = None) -> None:
        """An outage until `come_back()`. With `status` (503, say) every request is answered with it; without,
        the Hub is unreachable: new connections are refused and kept-alive ones closed without an answer."""
        if status is not None:
            self.down_with = status
            return
        self._unreachable = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None
            # bound but not listening: connections are refused, and the port stays this Hub's for come_back
            self._port_holder = socket.socket()
            self._port_holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._port_holder.bind(self._address)

    def come_back(self) -> None:
        """End an outage: answer again, on the same address."""
        self.down_with = None
        self._unreachable = False
        if self._server is None and self._address is not None:
            if self._port_holder is not None:
                self._port_holder.close()
                self._port_holder = None
            self.start()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def patch_client(self, monkeypatch) -> None:
        """Point `huggingface_hub`'s defaults at this server for the test (downloads through transformers use them).

        huggingface_hub reads HF_ENDPOINT once, at import, into `constants.ENDPOINT` and the `/resolve` URL template,
        so both are patched as well as the variable. Xet is off (the fake speaks LFS), telemetry is off (it would
        fetch a registry of agent harnesses), and offline mode is off (other test modules set HF_HUB_OFFLINE).
        """
        from huggingface_hub import constants

        monkeypatch.setenv("HF_ENDPOINT", self.url)
        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        resolve_template = self.url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", resolve_template)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(name, raising=False)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold every answer until the block exits, as a slow Hub would."""
        with self._lock:
            yield

    # ---- inspection helpers for tests -------------------------------------------------------------------------

    def resolve(self, repo_id: str, revision: str = "main") -> Commit:
        with self._lock:
            return self._resolve(self._repo(repo_id), revision)

    def history(self, repo_id: str, revision: str = "main") -> list[str]:
        """Commit ids from `revision` back to the repo's first commit."""
        with self._lock:
            repo = self._repo(repo_id)
            oids, commit = [], self._resolve(repo, revision)
            while commit is not None:
                oids.append(commit.oid)
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return oids

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self._lock:
            repo = self._repo(repo_id)
            tree = self._resolve(repo, revision).tree
            return {path: repo.object_path(blob.sha256).read_bytes() for path, blob in sorted(tree.items())}

    # ---- state changes (each called with the lock held) ---------------------------------------------------------

    def _repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _resolve(self, repo: Repo, revision: str) -> Commit:
        oid = repo.branches.get(revision) or repo.tags.get(revision)
        if oid is None and _COMMIT_OID.fullmatch(revision) and revision in repo.commits:
            oid = revision
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[oid]

    def _store(self, repo: Repo, content: bytes, lfs: bool) -> Blob:
        sha256 = hashlib.sha256(content).hexdigest()
        git_oid = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
        target = repo.object_path(sha256)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        return Blob(size=len(content), sha256=sha256, git_oid=git_oid, lfs=lfs)

    def _commit(self, repo: Repo, branch: str, tree: dict[str, Blob], title: str, description: str) -> Commit:
        parent = repo.branches.get(branch)
        self._commit_counter += 1
        identity = json.dumps(
            [parent, sorted((path, blob.sha256) for path, blob in tree.items()), title, self._commit_counter]
        )
        commit = Commit(
            oid=hashlib.sha1(identity.encode()).hexdigest(),
            parent=parent,
            tree=tree,
            title=title,
            description=description,
            created_at=time.time(),
        )
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    def _create_repo(self, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_id=repo_id, private=private, folder=self.root / repo_id, created_at=time.time())
        self.repos[repo_id] = repo
        attributes = self._store(repo, _INITIAL_GITATTRIBUTES.encode(), lfs=False)
        self._commit(repo, "main", {".gitattributes": attributes}, "initial commit", "")
        return repo

    def _upload_mode(self, path: str, size: int) -> str:
        name = PurePosixPath(path).name
        if any(fnmatch.fnmatch(name, pattern) for pattern in self.lfs_patterns):
            return "lfs"
        if self.lfs_threshold_bytes is not None and size >= self.lfs_threshold_bytes:
            return "lfs"
        return "regular"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _repo_path(path: str) -> str:
    """A commit path must stay inside the repo."""
    parts = PurePosixPath(path).parts
    if not path or path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise HubError(400, f"invalid path in repo: {path!r}")
    return path


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

    def log_message(self, format, *args) -> None:  # noqa: A002 - the stdlib's name
        pass  # quiet tests; `FakeHub.requests` records every request

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ---- plumbing ----------------------------------------------------------------------------------------------

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined]

    def _dispatch(self, method: str) -> None:
        # The body is read before anything can fail, so an error answer never leaves it in the kept-alive socket.
        self.body = self._read_body()
        parts = urlsplit(self.path)
        self.query = parse_qs(parts.query)
        segments = [unquote(segment) for segment in parts.path.split("/")[1:]]
        if self.hub._unreachable:  # a connection kept alive from before the outage: closed without an answer
            self.close_connection = True
            return
        if self.hub.answer_delay_s:
            time.sleep(self.hub.answer_delay_s)
        with self.hub._lock:
            self.hub.requests.append((method, parts.path))
            outage = self.hub.fail_next.pop(0) if self.hub.fail_next else self.hub.down_with
            if outage is None:
                outage = next((status for marker, status in self.hub.fail_containing.items() if marker in self.body),
                              None)
        try:
            if outage is not None:
                raise HubError(outage, f"the fake Hub was told to fail this request with {outage}")
            self._route(method, segments)
        except HubError as error:
            headers = dict(error.headers)
            if error.code:
                headers["X-Error-Code"] = error.code
            headers["X-Error-Message"] = error.message
            self._send_json({"error": error.message, **error.extra}, status=error.status, headers=headers)
        except Exception as error:  # a bug in the fake: show it to the client instead of dropping the connection
            self._send_json({"error": f"fake hub failure: {error!r}"}, status=500)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise HubError(400, "request body is not JSON") from None

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, payload, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _role(self) -> str | None:
        """'write', 'read', or None without an Authorization header; a token the Hub does not know is a 401."""
        header = self.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        role = self.hub.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if role is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return role

    def _require_write(self) -> None:
        role = self._role()
        if role is None:
            raise HubError(401, "You must be authenticated with a write token to do this")
        if role != "write":
            raise HubError(403, "You don't have the rights to write to this repo: use a token with write access")

    def _readable_repo(self, repo_id: str) -> Repo:
        role = self._role()
        repo = self.hub._repo(repo_id)
        if repo.private and role is None:
            raise HubError(401, "Repository not found", "RepoNotFound")
        return repo

    # ---- routes ------------------------------------------------------------------------------------------------

    def _route(self, method: str, s: list[str]) -> None:
        n = len(s)
        if s[:2] == ["api", "models"] and n >= 4:
            repo_id = f"{s[2]}/{s[3]}"
            if n == 4 and method == "GET":
                return self._repo_info(repo_id, "main")
            if n == 6 and method == "GET" and s[4] == "revision":
                return self._repo_info(repo_id, s[5])
            if n == 6 and method == "POST" and s[4] == "preupload":
                return self._preupload(repo_id, s[5])
            if n == 6 and method == "POST" and s[4] == "commit":
                return self._create_commit(repo_id, s[5])
            if n == 6 and method == "POST" and s[4] == "tag":
                return self._create_tag(repo_id, s[5])
            if n == 6 and method == "DELETE" and s[4] == "tag":
                return self._delete_tag(repo_id, s[5])
        if s == ["api", "repos", "create"] and method == "POST":
            return self._create_repo()
        if s == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml()
        if n == 6 and s[1].endswith(".git") and s[2:6] == ["info", "lfs", "objects", "batch"] and method == "POST":
            return self._lfs_batch(f"{s[0]}/{s[1][: -len('.git')]}")
        if n == 6 and s[1].endswith(".git") and s[2:6] == ["info", "lfs", "objects", "verify"] and method == "POST":
            return self._lfs_verify(f"{s[0]}/{s[1][: -len('.git')]}")
        if n == 2 and s[0] == "_lfs-upload" and method == "PUT":
            return self._lfs_put(s[1])
        if n >= 5 and s[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve_file(f"{s[0]}/{s[1]}", s[3], "/".join(s[4:]))
        raise HubError(404, f"the fake Hub has no route for {method} /{'/'.join(s)}")

    def _create_repo(self) -> None:
        self._require_write()
        request = self._json_body()
        if request.get("type", "model") != "model":
            raise HubError(400, "the fake Hub only hosts model repos")
        name, organization = request.get("name"), request.get("organization")
        if not name or not organization or not re.fullmatch(r"[\w.-]+", f"{name}{organization}"):
            raise HubError(400, "name and organization are required: use 'namespace/name'")
        repo_id = f"{organization}/{name}"
        url = f"{self.hub.url}/{repo_id}"
        with self.hub._lock:
            if repo_id in self.hub.repos:
                # the client reads the url from the conflict answer when it passes exist_ok=True
                raise HubError(409, "You already created this model repo", extra={"url": url})
            private = request.get("private", request.get("visibility") == "private") is True
            self.hub._create_repo(repo_id, private=private)
        self._send_json({"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _validate_yaml(self) -> None:
        content = self._json_body().get("content", "")
        match = re.match(r"^---\n(.*?)\n---", content, flags=re.S)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as error:
            return self._send_json({"errors": [{"message": f"invalid YAML: {error}"}]}, status=400)
        if metadata is not None and not isinstance(metadata, dict):
            return self._send_json({"errors": [{"message": "metadata must be a YAML mapping"}]}, status=400)
        self._send_json({"errors": [], "warnings": []})

    def _repo_info(self, repo_id: str, revision: str) -> None:
        with self.hub._lock:
            repo = self._readable_repo(repo_id)
            commit = self.hub._resolve(repo, revision)
        with_blobs = self.query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for path, blob in sorted(commit.tree.items()):
            sibling: dict = {"rfilename": path}
            if with_blobs:
                sibling.update(size=blob.size, blobId=blob.git_oid)
                if blob.lfs:
                    sibling["lfs"] = {"size": blob.size, "sha256": blob.sha256, "pointerSize": 134}
            siblings.append(sibling)
        organization = repo_id.split("/")[0]
        self._send_json(
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": organization,
                "sha": commit.oid,
                "lastModified": _iso(commit.created_at),
                "createdAt": _iso(repo.created_at),
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "tags": [],
                "siblings": siblings,
            }
        )

    def _preupload(self, repo_id: str, revision: str) -> None:
        self._require_write()
        request = self._json_body()
        with self.hub._lock:
            repo = self.hub._repo(repo_id)
            if revision not in repo.branches:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            commit = self.hub._resolve(repo, revision)
            answers = []
            for entry in request.get("files", []):
                path = _repo_path(entry["path"])
                existing = commit.tree.get(path)
                answers.append(
                    {
                        "path": path,
                        "uploadMode": self.hub._upload_mode(path, int(entry["size"])),
                        "shouldIgnore": False,
                        "oid": existing.etag if existing is not None else None,
                    }
                )
        self._send_json({"files": answers, "commitOid": commit.oid})

    def _create_commit(self, repo_id: str, revision: str) -> None:
        self._require_write()
        if self.query.get("create_pr"):
            raise HubError(400, "the fake Hub does not do pull requests")
        try:
            lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        except ValueError:
            raise HubError(400, "commit payload is not NDJSON") from None
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        with self.hub._lock:
            repo = self.hub._repo(repo_id)
            if revision not in repo.branches:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo.branches[revision]
            if header.get("parentCommit") and header["parentCommit"] != head:
                raise HubError(412, f"parent commit {header['parentCommit']} is not the head of {revision} ({head})")
            tree = dict(repo.commits[head].tree)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = _repo_path(value.get("path", ""))
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HubError(400, f"{path}: only base64 encoding is supported")
                    tree[path] = self.hub._store(repo, base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    oid = value.get("oid", "")
                    if value.get("algo", "sha256") != "sha256" or not repo.object_path(oid).exists():
                        raise HubError(400, f"{path}: LFS object {oid} was not uploaded before the commit")
                    size = repo.object_path(oid).stat().st_size
                    if value.get("size") is not None and int(value["size"]) != size:
                        raise HubError(400, f"{path}: LFS object {oid} has {size} bytes, not {value['size']}")
                    content = repo.object_path(oid).read_bytes()
                    tree[path] = self.hub._store(repo, content, lfs=True)
                elif key == "deletedFile":
                    if tree.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    for name in [name for name in tree if name.startswith(prefix)]:
                        del tree[name]
                else:
                    raise HubError(400, f"unknown commit operation {key!r}")
            commit = self.hub._commit(repo, revision, tree, header.get("summary", ""), header.get("description", ""))
        self._send_json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.hub.url}/{repo_id}/commit/{commit.oid}",
                "hookOutput": "",
            }
        )

    def _create_tag(self, repo_id: str, revision: str) -> None:
        self._require_write()
        tag = self._json_body().get("tag", "")
        if not re.fullmatch(r"[\w][\w.-]*", tag) or _COMMIT_OID.fullmatch(tag):
            raise HubError(400, f"invalid tag name {tag!r}")
        with self.hub._lock:
            repo = self.hub._repo(repo_id)
            commit = self.hub._resolve(repo, revision)
            if tag in repo.tags or tag in repo.branches:
                raise HubError(409, f"Tag {tag} already exists")
            repo.tags[tag] = commit.oid
        self._send_json({"success": True})

    def _delete_tag(self, repo_id: str, tag: str) -> None:
        self._require_write()
        with self.hub._lock:
            repo = self.hub._repo(repo_id)
            if repo.tags.pop(tag, None) is None:
                raise HubError(404, f"Invalid rev id: {tag}", "RevisionNotFound")
        self._send_json({"success": True})

    def _lfs_batch(self, repo_id: str) -> None:
        self._require_write()
        request = self._json_body()
        if request.get("operation") != "upload":
            raise HubError(400, "the fake Hub's LFS batch API only uploads")
        if "basic" not in request.get("transfers", ["basic"]):
            raise HubError(400, "the fake Hub's LFS batch API only does the basic transfer")
        answers = []
        with self.hub._lock:
            repo = self.hub._repo(repo_id)
            for item in request.get("objects", []):
                oid, size = str(item.get("oid", "")), int(item.get("size", -1))
                answer: dict = {"oid": oid, "size": size, "authenticated": True}
                if not re.fullmatch(r"[0-9a-f]{64}", oid) or size < 0:
                    answer["error"] = {"code": 422, "message": "oid must be a sha256 hex digest and size >= 0"}
                elif not repo.object_path(oid).exists():
                    # A signed one-use URL, as the real Hub hands out for S3: the PUT carries no Authorization.
                    ticket = secrets.token_urlsafe(16)
                    self.hub._lfs_tickets[ticket] = (repo_id, oid, size)
                    answer["actions"] = {
                        "upload": {"href": f"{self.hub.url}/_lfs-upload/{ticket}", "header": {}},
                        "verify": {"href": f"{self.hub.url}/{repo_id}.git/info/lfs/objects/verify", "header": {}},
                    }
                answers.append(answer)  # an object already stored gets no actions: the client skips it
        self._send(200, json.dumps({"transfer": "basic", "objects": answers}).encode(), "application/vnd.git-lfs+json")

    def _lfs_put(self, ticket: str) -> None:
        with self.hub._lock:
            claim = self.hub._lfs_tickets.pop(ticket, None)
        if claim is None:
            raise HubError(403, "unknown or used upload URL")
        repo_id, oid, size = claim
        if len(self.body) != size or hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, f"uploaded content does not match oid {oid} and size {size}")
        with self.hub._lock:
            self.hub._store(self.hub._repo(repo_id), self.body, lfs=True)
        self._send(200, b"", "text/plain", {"ETag": f'"{oid}"'})

    def _lfs_verify(self, repo_id: str) -> None:
        self._require_write()
        request = self._json_body()
        with self.hub._lock:
            path = self.hub._repo(repo_id).object_path(str(request.get("oid", "")))
            if not path.exists() or path.stat().st_size != request.get("size"):
                raise HubError(404, f"LFS object {request.get('oid')} is not stored")
        self._send_json({"success": True})

    def _resolve_file(self, repo_id: str, revision: str, path: str) -> None:
        with self.hub._lock:
            repo = self._readable_repo(repo_id)
            commit = self.hub._resolve(repo, revision)
            blob = commit.tree.get(path)
            if blob is None:
                raise HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": commit.oid})
            content = repo.object_path(blob.sha256).read_bytes()
        self._send(
            200,
            content,
            "application/octet-stream",
            {"ETag": f'"{blob.etag}"', "X-Repo-Commit": commit.oid, "Accept-Ranges": "none"},
        )
