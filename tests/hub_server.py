"""A small in-memory Hugging Face Hub-protocol server for tests (standard library only, loopback only).

It implements the routes huggingface_hub 2.x uses to create a repo, commit files (regular and LFS) and download
them (see ../shared/reference/ecosystem.md §8.2), so that `upload_folder`, `hf_hub_download`, timm's `hf-hub:`
loading and transformers' `from_pretrained` run against it unchanged. Clients must use `HF_HUB_DISABLE_XET=1`.

Bounded on purpose: it binds 127.0.0.1 only and answers only loopback clients, refuses request bodies over
`max_body` bytes and more than `max_repos` repositories, and keeps everything in memory until `stop()`.

    with HubServer() as hub:          # or hub = HubServer().start(); ...; hub.stop()
        os.environ["HF_ENDPOINT"] = hub.url
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import unquote, urlsplit

__all__ = ["HubServer", "Repo"]

_REPO = r"(?P<repo>[\w.\-]+/[\w.\-]+)"
_REV = r"(?P<rev>[^/]+)"
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz", ".onnx", ".msgpack", ".h5")
_LFS_MIN_SIZE = 10 * 1024 * 1024


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    """One model repo: its commits, each a full snapshot {path: bytes}; `main` is the last."""

    repo_id: str
    commits: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)
    lfs_paths: set[str] = field(default_factory=set)

    def snapshot(self, rev: str) -> Optional[tuple[str, dict[str, bytes]]]:
        if rev == "main":
            return self.commits[-1] if self.commits else ("0" * 40, {})
        for sha, files in self.commits:
            if sha == rev:
                return sha, files
        return None


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    # -- plumbing ------------------------------------------------------------------------------------------------
    def log_message(self, format: str, *args) -> None:  # quiet: tests read `hub.requests` instead
        pass

    def _send(self, status: int, body: bytes = b"", headers: Optional[dict] = None, head: bool = False) -> None:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
        headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: Optional[dict] = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, message: str, code: Optional[str] = None, head: bool = False) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

    def _body(self) -> Optional[bytes]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.server.hub.max_body:
            self._error(413, f"request body over {self.server.hub.max_body} bytes")
            self.close_connection = True
            return None
        return self.rfile.read(length) if length else b""

    def _authorized(self) -> bool:
        if (self.headers.get("Authorization") or "").startswith("Bearer "):
            return True
        self._error(401, "Invalid credentials in Authorization header", code="Unauthorized")
        return False

    def _dispatch(self, method: str) -> None:
        if self.client_address[0] not in ("127.0.0.1", "::1"):
            self._error(403, "loopback clients only")
            return
        path = unquote(urlsplit(self.path).path)
        hub = self.server.hub
        with hub.lock:
            hub.requests.append((method, path))
        for route_method, pattern, handler in _ROUTES:
            if route_method == method or (route_method == "GET" and method == "HEAD"):
                m = re.fullmatch(pattern, path)
                if m:
                    handler(self, method, **m.groupdict())
                    return
        self._error(404, f"no route for {method} {path}")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # -- routes --------------------------------------------------------------------------------------------------
    def whoami(self, method: str) -> None:
        if self._authorized():
            self._json(200, {"type": "user", "name": "test-user", "orgs": [],
                             "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

    def create_repo(self, method: str) -> None:
        body = self._body()
        if body is None or not self._authorized():
            return
        payload = json.loads(body or b"{}")
        name, org = payload.get("name"), payload.get("organization")
        repo_id = f"{org}/{name}" if org else f"test-user/{name}"
        hub = self.server.hub
        with hub.lock:
            if repo_id in hub.repos:   # the Hub answers 409 with the url, which create_repo(exist_ok=True) reads
                self._json(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"},
                           headers={"X-Error-Message": "You already created this model repo"})
                return
            if len(hub.repos) >= hub.max_repos:
                self._error(507, f"test server holds at most {hub.max_repos} repos")
                return
            hub.repos[repo_id] = Repo(repo_id)
        self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})

    def validate_yaml(self, method: str) -> None:
        body = self._body()
        if body is None:
            return
        content = json.loads(body or b"{}").get("content", "")
        if not content.startswith("---"):
            self._json(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
            return
        self._json(200, {"errors": [], "warnings": []})

    def _repo(self, repo: str, head: bool = False) -> Optional[Repo]:
        found = self.server.hub.repos.get(repo)
        if found is None:
            self._error(404, f"Repository not found: {repo}", code="RepoNotFound", head=head)
        return found

    def preupload(self, method: str, repo: str, rev: str) -> None:
        body = self._body()
        if body is None or not self._authorized() or self._repo(repo) is None:
            return
        files = json.loads(body or b"{}").get("files", [])
        out = []
        for f in files:
            lfs = f["path"].endswith(_LFS_SUFFIXES) or f.get("size", 0) >= _LFS_MIN_SIZE
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": None})
        self._json(200, {"files": out, "commitOid": self.server.hub.repos[repo].snapshot("main")[0]})

    def lfs_batch(self, method: str, repo: str) -> None:
        body = self._body()
        if body is None or not self._authorized() or self._repo(repo) is None:
            return
        hub = self.server.hub
        objects = []
        for obj in json.loads(body or b"{}").get("objects", []):
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in hub.lfs:
                entry["actions"] = {"upload": {"href": f"{hub.url}/_lfs/{obj['oid']}", "header": {}}}
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   headers={"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_put(self, method: str, oid: str) -> None:
        body = self._body()
        if body is None:
            return
        if hashlib.sha256(body).hexdigest() != oid:
            self._error(400, "sha256 of the uploaded content does not match the object id")
            return
        with self.server.hub.lock:
            self.server.hub.lfs[oid] = body
        self._send(200, b"")

    def commit(self, method: str, repo: str, rev: str) -> None:
        body = self._body()
        if body is None or not self._authorized():
            return
        hub = self.server.hub
        target = self._repo(repo)
        if target is None:
            return
        if rev != "main":
            self._error(400, "the test server commits to main only", code="RevisionNotFound")
            return
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        with hub.lock:
            _, files = target.snapshot("main")
            files = dict(files)
            message = ""
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    message = value.get("summary", "")
                elif key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                    target.lfs_paths.discard(value["path"])
                elif key == "lfsFile":
                    if value["oid"] not in hub.lfs:
                        self._error(422, f"LFS object {value['oid']} was never uploaded")
                        return
                    files[value["path"]] = hub.lfs[value["oid"]]
                    target.lfs_paths.add(value["path"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: d for p, d in files.items() if not p.startswith(prefix)}
                else:
                    self._error(400, f"unsupported commit operation {key!r}")
                    return
            sha = hashlib.sha1(
                (repo + message + str(len(target.commits))).encode()
                + b"".join(p.encode() + hashlib.sha256(d).digest() for p, d in sorted(files.items()))
            ).hexdigest()
            target.commits.append((sha, files))
        self._json(200, {"commitUrl": f"{hub.url}/{repo}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None})

    def _file_entry(self, target: Repo, path: str, data: bytes) -> dict:
        entry = {"type": "file", "path": path, "size": len(data), "oid": _git_blob_sha1(data)}
        if path in target.lfs_paths:
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def model_info(self, method: str, repo: str, rev: str = "main") -> None:
        target = self._repo(repo)
        if target is None:
            return
        snap = target.snapshot(rev)
        if snap is None:
            self._error(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
            return
        sha, files = snap
        self._json(200, {
            "_id": repo, "id": repo, "modelId": repo, "sha": sha, "private": False, "disabled": False,
            "gated": False, "downloads": 0, "likes": 0, "tags": [], "library_name": None,
            "siblings": [{"rfilename": p, "size": len(d)} for p, d in sorted(files.items())],
        })

    def tree(self, method: str, repo: str, rev: str, sub: str = "") -> None:
        target = self._repo(repo)
        if target is None:
            return
        snap = target.snapshot(rev)
        if snap is None:
            self._error(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
            return
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        entries = [self._file_entry(target, p, d) for p, d in sorted(snap[1].items()) if p.startswith(prefix)]
        self._json(200, entries)

    def resolve(self, method: str, repo: str, rev: str, path: str) -> None:
        head = method == "HEAD"
        target = self._repo(repo, head=head)
        if target is None:
            return
        snap = target.snapshot(rev)
        if snap is None:
            self._error(404, f"Invalid rev id: {rev}", code="RevisionNotFound", head=head)
            return
        sha, files = snap
        if path not in files:
            self._error(404, f"Entry not found: {path}", code="EntryNotFound", head=head)
            return
        data = files[path]
        headers = {"X-Repo-Commit": sha, "Content-Type": "application/octet-stream",
                   "Content-Length": str(len(data))}
        if path in target.lfs_paths:
            digest = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{digest}"', "X-Linked-Etag": f'"{digest}"', "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{_git_blob_sha1(data)}"'
        self._send(200, data, headers, head=head)


_ROUTES = [
    ("GET", r"/api/whoami-v2", _Handler.whoami),
    ("POST", r"/api/repos/create", _Handler.create_repo),
    ("POST", r"/api/validate-yaml", _Handler.validate_yaml),
    ("POST", rf"/api/models/{_REPO}/preupload/{_REV}", _Handler.preupload),
    ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", _Handler.lfs_batch),
    ("PUT", r"/_lfs/(?P<oid>[0-9a-f]{64})", _Handler.lfs_put),
    ("POST", rf"/api/models/{_REPO}/commit/{_REV}", _Handler.commit),
    ("GET", rf"/api/models/{_REPO}/tree/{_REV}(?P<sub>/.*)?", _Handler.tree),
    ("GET", rf"/api/models/{_REPO}/revision/{_REV}", _Handler.model_info),
    ("GET", rf"/api/models/{_REPO}", _Handler.model_info),
    ("GET", rf"/{_REPO}/resolve/{_REV}/(?P<path>.+)", _Handler.resolve),
]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: "HubServer"


class HubServer:
    """The in-memory Hub; `url` is its endpoint once started. `requests` logs (method, path) of every call."""

    def __init__(self, max_body: int = 64 * 1024 * 1024, max_repos: int = 32) -> None:
        self.max_body = max_body
        self.max_repos = max_repos
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self.url = ""

    def start(self) -> "HubServer":
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        """The files of a repo at a revision (empty if none)."""
        repo = self.repos.get(repo_id)
        return dict(repo.snapshot(rev)[1]) if repo else {}

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
