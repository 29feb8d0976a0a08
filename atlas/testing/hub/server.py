"""A local Hugging Face Hub over HTTP, serving repos from folders, for tests and the offline demo.

Point huggingface_hub at it with ``endpoint=hub.endpoint`` (or ``HF_ENDPOINT`` before import).
Routes follow what huggingface_hub 2.4 and transformers 5 call: model/dataset listing with
cursor paging, repo info, tree listing, HEAD/GET ``resolve`` with ranges, whoami, and the
agent-harness registry. ``LocalHub.faults`` injects failures; ``LocalHub.requests`` logs calls.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import json
import socket
import sys
import threading
import traceback
from dataclasses import replace
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from atlas.testing.hub.faults import Fault, FaultPlan, RequestRecord
from atlas.testing.hub.repos import (
    DATASET_EXPAND,
    DATASET_LIST_FIELDS,
    FULL_FIELDS,
    MODEL_EXPAND,
    MODEL_LIST_FIELDS,
    REPO_TYPES,
    SORT_KEYS,
    HubServerError,
    RepoSpec,
    _decode_cursor,
    _encode_cursor,
    _iso,
    _param_range,
    _parse_iso,
    _parse_range,
    _Repo,
    _repo_fields,
    _scan,
    _select,
    _Snapshot,
    _tree_file,
    _tree_oid,
    _unchanged,
    _utc,
    discover,
)


class LocalHub:
    """An in-process Hugging Face Hub serving folders on 127.0.0.1."""

    def __init__(
        self,
        repos: list[RepoSpec] | None = None,
        *,
        token: str | None = None,
        page_size: int = 1000,
        user: str = "atlas-local",
        verbose: bool = False,
    ) -> None:
        self.token, self.page_size, self.user, self.verbose = token, page_size, user, verbose
        self.faults = FaultPlan()
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._log: list[RequestRecord] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        for spec in repos or []:
            self.add(spec)

    # -- repos -------------------------------------------------------------------------------
    def add(self, spec: RepoSpec) -> str:
        """Serve a new repo; returns its commit sha."""
        if spec.repo_type not in REPO_TYPES:
            raise ValueError(f"repo_type must be one of {REPO_TYPES}, not {spec.repo_type!r}")
        key = (spec.repo_type, spec.repo_id)
        snapshot = _scan(Path(spec.folder), spec.repo_type)
        created = _utc(spec.created_at) or datetime.now(timezone.utc)
        modified = _utc(spec.last_modified) or created
        with self._lock:
            if key in self._repos:
                raise ValueError(f"{spec.repo_type} repo {spec.repo_id!r} already served")
            self._repos[key] = _Repo(spec, snapshot, {snapshot.sha: snapshot}, created, modified)
        return snapshot.sha

    def update(self, repo_id: str, *, repo_type: str = "model", **changes: Any) -> str:
        """Change a repo's spec fields and rescan its folder; new files give a new sha."""
        with self._lock:
            spec = replace(self._get(repo_type, repo_id).spec, **changes)
        snapshot = _scan(Path(spec.folder), repo_type)
        with self._lock:
            repo = self._get(repo_type, repo_id)
            modified = _utc(changes.get("last_modified"))
            if snapshot.sha != repo.head.sha:
                modified = modified or datetime.now(timezone.utc)
            self._repos[(repo_type, repo_id)] = _Repo(
                spec=spec,
                head=snapshot,
                revisions={**repo.revisions, snapshot.sha: snapshot},
                created_at=_utc(changes.get("created_at")) or repo.created_at,
                last_modified=modified or repo.last_modified,
            )
        return snapshot.sha

    def remove(self, repo_id: str, *, repo_type: str = "model") -> None:
        """Stop serving a repo."""
        with self._lock:
            self._get(repo_type, repo_id)
            del self._repos[(repo_type, repo_id)]

    def sha(self, repo_id: str, *, repo_type: str = "model") -> str:
        """Current commit sha of a repo."""
        with self._lock:
            return self._get(repo_type, repo_id).head.sha

    def _get(self, repo_type: str, repo_id: str) -> _Repo:
        try:
            return self._repos[(repo_type, repo_id)]
        except KeyError:
            raise KeyError(f"no {repo_type} repo {repo_id!r}") from None

    def _all(self, repo_type: str) -> list[_Repo]:
        with self._lock:
            return [r for (t, _), r in self._repos.items() if t == repo_type]

    # -- request log -------------------------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        """Copy of the request log, oldest first."""
        with self._lock:
            return list(self._log)

    def requests_to(self, pattern: str, method: str | None = None) -> list[RequestRecord]:
        """Logged requests whose path matches a glob (and method, if given)."""
        return [
            r
            for r in self.requests
            if fnmatch.fnmatchcase(r.path, pattern) and method in (None, r.method)
        ]

    def clear_requests(self) -> None:
        """Empty the request log."""
        with self._lock:
            self._log.clear()

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)

    # -- server ------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT``."""
        if self._server is None:
            raise RuntimeError("LocalHub is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self, port: int = 0) -> str:
        """Listen on 127.0.0.1 (a free port unless given) and return the endpoint."""
        if self._server is not None:
            return self.endpoint
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.hub = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self.endpoint

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server, self._thread = None, None

    def wait(self) -> None:
        """Block until stop() is called from another thread."""
        self._stopping.wait()

    def __enter__(self) -> LocalHub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _authorized(self, headers: Any) -> bool:
        """Bearer token matches the server's token (any token when none is configured)."""
        auth = headers.get("Authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        return bool(given) and (self.token is None or given == self.token)


# -- scanning a folder ---------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: LocalHub

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.connections: set[socket.socket] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Hang up on keep-alive clients so their handler threads end."""
        for connection in list(self.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if self.hub.verbose:
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.hub.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._handle("POST")

    # -- plumbing ----------------------------------------------------------------------------
    def _handle(self, method: str) -> None:
        hub = self.server.hub
        url = urlsplit(self.path)
        self.hub, self.method = hub, method
        self.segments = [unquote(s) for s in url.path.split("/")[1:]]
        self.pairs = parse_qsl(url.query, keep_blank_values=True)
        self.query: dict[str, list[str]] = {}
        for key, value in self.pairs:
            self.query.setdefault(key, []).append(value)
        self.truncate_at: int | None = None
        path = unquote(url.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.record = RequestRecord(method, path, self.query, headers)
        hub._record(self.record)
        fault = hub.faults.take(method, path)
        if fault is not None and self._inject(fault):
            return
        try:
            self._route()
        except HubServerError as error:
            self._error(error)
        except (ConnectionError, TimeoutError):
            self.close_connection = True  # the client hung up (e.g. after its own timeout)
        except Exception as error:  # answer 500 like the Hub rather than hang up
            if hub.verbose:
                traceback.print_exc()
            self._error(HubServerError(500, f"internal error: {error}"))

    def _inject(self, fault: Fault) -> bool:
        """Apply a fault; True when the request is fully answered by it."""
        if fault.kind == "slow":
            self.hub._stopping.wait(fault.delay)
            return False
        if fault.kind == "truncate":
            self.truncate_at = fault.after_bytes
            return False
        if fault.kind == "drop":
            self.close_connection = True
            return True
        extra = {"Retry-After": str(fault.retry_after)} if fault.kind == "429" else {}
        self._error(HubServerError(int(fault.kind), f"injected fault {fault.kind}"), extra)
        return True

    def _send(
        self, status: int, headers: dict[str, str], body: bytes = b"", length: int | None = None
    ) -> None:
        self.record.status = status
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.method != "HEAD":
            self._write(body)

    def _write(self, data: bytes) -> bool:
        """Write body bytes, honouring a truncate fault; False once the connection is cut."""
        if self.truncate_at is not None:
            data = data[: self.truncate_at]
            self.truncate_at -= len(data)
        self.wfile.write(data)
        if self.truncate_at == 0:
            self.wfile.flush()
            self.close_connection = True
            return False
        return True

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, default=str).encode()
        self._send(
            status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, body
        )

    def _error(self, error: HubServerError, extra: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Message": error.message, **(extra or {})}
        if error.code:
            headers["X-Error-Code"] = error.code
        if error.commit:
            headers["X-Repo-Commit"] = error.commit
        self._json(error.status, {"error": error.message}, headers)

    # -- routing -----------------------------------------------------------------------------
    def _route(self) -> None:
        segs = self.segments
        if self.method == "POST":
            raise HubServerError(405, "this local Hub is read-only")
        if segs[:2] == ["api", "agent-harnesses"]:
            return self._json(200, {"standardEnvVars": [], "harnesses": {}})
        if segs[:2] == ["api", "whoami-v2"]:
            return self._whoami()
        if len(segs) >= 2 and segs[0] == "api" and segs[1] in ("models", "datasets"):
            repo_type = segs[1][:-1]
            if len(segs) == 2:
                return self._list(repo_type)
            repo, rest = self._find_repo(repo_type, segs[2:])
            if not rest:
                return self._info(repo, "main")
            if rest[0] == "revision" and len(rest) >= 2:
                return self._info(repo, "/".join(rest[1:]))
            if rest[0] == "tree" and len(rest) >= 2:
                return self._tree(repo, rest[1], "/".join(rest[2:]))
            raise HubServerError(404, f"no route for {'/'.join(segs)}")
        repo_type, rest = ("dataset", segs[1:]) if segs[:1] == ["datasets"] else ("model", segs)
        for i in (1, 2):
            if len(rest) > i + 2 and rest[i] == "resolve":
                repo, _ = self._find_repo(repo_type, rest[:i])
                return self._resolve(repo, rest[i + 1], "/".join(rest[i + 2 :]))
        raise HubServerError(404, f"no route for /{'/'.join(segs)}")

    def _find_repo(self, repo_type: str, segs: list[str]) -> tuple[_Repo, list[str]]:
        """Match a one- or two-part repo id at the start of segs; 404/401 when unknown."""
        with self.hub._lock:
            for n in (2, 1):
                repo = self.hub._repos.get((repo_type, "/".join(segs[:n])))
                if repo is not None and len(segs) >= n:
                    break
            else:
                repo = None
        if repo is None or (repo.spec.private and not self.hub._authorized(self.headers)):
            status = 401 if "Authorization" not in self.headers else 404
            raise HubServerError(status, "Repository not found", "RepoNotFound")
        return repo, segs[n:]

    def _snapshot(self, repo: _Repo, revision: str) -> _Snapshot:
        if revision in ("main", "refs/heads/main"):
            return repo.head
        if revision in repo.revisions:
            return repo.revisions[revision]
        raise HubServerError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    # -- API routes --------------------------------------------------------------------------
    def _whoami(self) -> None:
        if not self.hub._authorized(self.headers):
            raise HubServerError(401, "Invalid credentials in Authorization header")
        self._json(
            200,
            {
                "type": "user",
                "id": hashlib.sha1(self.hub.user.encode()).hexdigest()[:24],
                "name": self.hub.user,
                "fullname": self.hub.user,
                "email": None,
                "orgs": [],
                "isPro": False,
                "canPay": False,
                "avatarUrl": "",
                "auth": {"type": "access_token", "accessToken": {"displayName": "local"}},
            },
        )

    def _children(self, repo_type: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for repo in self.hub._all(repo_type):
            for base in repo.head.base_models:
                counts[base] = counts.get(base, 0) + 1
        return counts

    def _expand(self, repo_type: str) -> list[str]:
        expand = self.query.get("expand", [])
        allowed = MODEL_EXPAND if repo_type == "model" else DATASET_EXPAND
        bad = sorted(set(expand) - allowed)
        if bad:
            raise HubServerError(400, f"invalid expand value(s): {', '.join(bad)}")
        return expand

    def _flag(self, name: str) -> bool:
        return self.query.get(name, [""])[-1].lower() in ("1", "true")

    def _info(self, repo: _Repo, revision: str) -> None:
        snap = self._snapshot(repo, revision)
        children = self._children(repo.spec.repo_type).get(repo.spec.repo_id, 0)
        data = _repo_fields(repo, snap, children, blobs=self._flag("blobs"))
        expand = self._expand(repo.spec.repo_type)
        if expand:
            return self._json(200, _select(data, expand))
        if self._flag("securityStatus"):
            data["securityRepoStatus"] = {"scansDone": True, "filesWithIssues": []}
        self._json(200, {k: v for k, v in data.items() if v is not None})

    def _list(self, repo_type: str) -> None:
        query, hub = self.query, self.hub
        authorized = hub._authorized(self.headers)
        repos = [r for r in hub._all(repo_type) if authorized or not r.spec.private]
        expand = self._expand(repo_type)
        searches = [s.lower() for s in query.get("search", []) if s]
        tags = [t for value in query.get("filter", []) for t in value.split(",") if t]
        low, high = (
            _param_range(query["num_parameters"][-1]) if "num_parameters" in query else (0, None)
        )
        sort = SORT_KEYS.get(query.get("sort", ["trendingScore"])[-1])
        if sort is None:
            raise HubServerError(400, f"invalid sort {query['sort'][-1]!r}")
        children = self._children(repo_type)
        rows = []
        for repo in repos:
            spec, snap = repo.spec, repo.head
            data = _repo_fields(repo, snap, children.get(spec.repo_id, 0), blobs=False)
            total = (snap.safetensors or {}).get("total")
            checks = [
                all(s in spec.repo_id.lower() for s in searches),
                all(t in data["tags"] for t in tags),
                "author" not in query or data["author"] == query["author"][-1],
                "pipeline_tag" not in query
                or data.get("pipeline_tag") == query["pipeline_tag"][-1],
                "library" not in query or data.get("library_name") == query["library"][-1],
                "gated" not in query or bool(data["gated"]) == self._flag("gated"),
                high is None or (total is not None and low <= total <= high),
            ]
            if all(checks):
                value = data[sort]
                number = _parse_iso(value).timestamp() if isinstance(value, str) else value
                rows.append(((-float(number), spec.repo_id), data))
        rows.sort(key=lambda row: row[0])
        if "cursor" in query:
            after = _decode_cursor(query["cursor"][-1])
            rows = [row for row in rows if row[0] > after]
        try:
            size = min(int(query.get("limit", [hub.page_size])[-1]), hub.page_size)
        except ValueError as error:
            raise HubServerError(400, "invalid limit") from error
        page, more = rows[: max(size, 1)], len(rows) > max(size, 1)
        headers = {}
        if more:
            pairs = [(k, v) for k, v in self.pairs if k != "cursor"]
            pairs.append(("cursor", _encode_cursor(page[-1][0])))
            headers["Link"] = f'<{hub.endpoint}/api/{repo_type}s?{urlencode(pairs)}>; rel="next"'
        self._json(200, [self._list_item(repo_type, data, expand) for _, data in page], headers)

    def _list_item(self, repo_type: str, data: dict[str, Any], expand: list[str]) -> dict[str, Any]:
        if expand:
            return _select(data, expand)
        keys = list(MODEL_LIST_FIELDS if repo_type == "model" else DATASET_LIST_FIELDS)
        if self._flag("full"):
            keys += FULL_FIELDS
        if self._flag("config"):
            keys.append("config")
        if self._flag("cardData"):
            keys.append("cardData")
        return {k: data[k] for k in keys if k in data}

    def _tree(self, repo: _Repo, revision: str, path: str) -> None:
        snap = self._snapshot(repo, revision)
        path = path.strip("/")
        prefix = f"{path}/" if path else ""
        recursive, expand = self._flag("recursive"), self._flag("expand")
        if path and not any(name.startswith(prefix) for name in snap.files):
            raise HubServerError(
                404, f"{path} does not exist on {revision}", "EntryNotFound", snap.sha
            )
        entries: dict[str, dict[str, Any]] = {}
        for name, blob in snap.files.items():
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                entries.setdefault(
                    folder, {"type": "directory", "oid": _tree_oid(snap, folder), "path": folder}
                )
                if not recursive:
                    break
            if recursive or len(parts) == 1:
                entries[name] = _tree_file(blob)
        items = sorted(entries.values(), key=lambda e: (e["type"] != "directory", e["path"]))
        if expand:
            commit = {"id": snap.sha, "title": "Update", "date": _iso(repo.last_modified)}
            for item in items:
                item["lastCommit"] = commit
        start = int(self.query.get("cursor", ["0"])[-1] or 0)
        size = min(self.hub.page_size, 50 if expand else 1000)
        headers = {}
        if start + size < len(items):
            pairs = [(k, v) for k, v in self.pairs if k != "cursor"] + [
                ("cursor", str(start + size))
            ]
            url = f"{self.hub.endpoint}/api/{repo.spec.repo_type}s/{repo.spec.repo_id}/tree/"
            url += quote(revision, safe="") + (f"/{quote(path, safe='')}" if path else "")
            headers["Link"] = f'<{url}?{urlencode(pairs)}>; rel="next"'
        self._json(200, items[start : start + size], headers)

    # -- files -------------------------------------------------------------------------------
    def _resolve(self, repo: _Repo, revision: str, filename: str) -> None:
        snap = self._snapshot(repo, revision)
        spec = repo.spec
        if spec.gated and not self.hub._authorized(self.headers):
            status = 401 if "Authorization" not in self.headers else 403
            message = (
                f"Access to {spec.repo_type} {spec.repo_id} is restricted: log in with a token."
            )
            raise HubServerError(status, message, "GatedRepo")
        blob = snap.files.get(filename)
        if blob is None:
            raise HubServerError(404, f"Entry not found: {filename}", "EntryNotFound", snap.sha)
        if snap is not repo.head and not _unchanged(blob):
            current = repo.head.files.get(filename)
            if current is None or current.sha256 != blob.sha256 or not _unchanged(current):
                raise HubServerError(404, f"files of {revision} are gone", "RevisionNotFound")
            blob = current
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": f'"{blob.etag}"',
            "X-Repo-Commit": snap.sha,
        }
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
        start, end, status = 0, blob.size - 1, 200
        if "Range" in self.headers:
            bounds = _parse_range(self.headers["Range"], blob.size)
            if bounds is None:
                headers["Content-Range"] = f"bytes */{blob.size}"
                return self._send(416, headers)
            (start, end), status = bounds, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
        self._send(status, headers, length=end - start + 1 if blob.size else 0)
        if self.method == "HEAD":
            return
        with open(blob.source, "rb") as f:
            f.seek(start)
            remaining = end - start + 1 if blob.size else 0
            while remaining > 0 and (chunk := f.read(min(remaining, 1 << 16))):
                remaining -= len(chunk)
                if not self._write(chunk):
                    return


def main(argv: list[str] | None = None) -> int:
    """Serve folders of repos until interrupted, printing the endpoint on stdout."""
    parser = argparse.ArgumentParser(prog="python -m atlas.testing.hub", description=__doc__)
    for kind in ("models", "datasets"):
        text = f"folders holding <org>/<name> {kind[:-1]} repos"
        parser.add_argument(
            f"--{kind}", nargs="+", action="extend", default=[], type=Path, metavar="DIR", help=text
        )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free)")
    parser.add_argument("--token", help="token that unlocks gated and private repos")
    parser.add_argument("--page-size", type=int, default=1000, help="items per listing page")
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args(argv)
    specs = [s for d in args.models for s in discover(d, "model")]
    specs += [s for d in args.datasets for s in discover(d, "dataset")]
    hub = LocalHub(specs, token=args.token, page_size=args.page_size, verbose=args.verbose)
    print(hub.start(args.port), flush=True)
    print(f"serving {len(specs)} repos; Ctrl-C to stop", file=sys.stderr)
    try:
        hub.wait()
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
