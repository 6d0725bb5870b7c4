"""A file server on 127.0.0.1 that the download tests start themselves (http.server in a thread).

It serves `files` (path → bytes) with HTTP Range support, logs every request, and can misbehave
per path (`faults`): "404", "truncate" (announce the whole length, send half, close), "stall"
(send half, then nothing), "ignore-range" (answer a Range request with the whole file, 200),
"wrong-range" (answer a Range request with the file from byte 1, 206).
A fault is used once, so that the next attempt meets a healthy server. With `hub_commit` it also
answers the few Hugging Face Hub API routes that `huggingface_hub.snapshot_download` calls
(repository info, the file tree, HEAD/GET of `resolve/`), serving `files` as one repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class Loopback:
    def __init__(self, files: dict[str, bytes] | None = None, hub_repo: str | None = None) -> None:
        self.files = dict(files or {})
        self.faults: dict[str, str] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.hub_repo, self.hub_commit = hub_repo, "0123456789abcdef0123456789abcdef01234567"
        self.release = threading.Event()  # ends a stall
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> Loopback:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def gets(self, path: str) -> list[str | None]:
        """The Range headers of the GET requests for `path`, in order (None: no Range)."""
        return [r for m, p, r in self.requests if m == "GET" and p == path]


def _handler(server: Loopback) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = unquote(urlparse(self.path).path)
            server.requests.append((self.command, path, self.headers.get("Range")))
            if server.hub_repo is not None and path.startswith("/api/"):
                return self._hub_api(path)
            if server.hub_repo is not None:
                m = re.fullmatch(rf"/{re.escape(server.hub_repo)}/resolve/[^/]+/(.+)", path)
                path = f"/{m[1]}" if m else path
            data = server.files.get(path.lstrip("/"))
            fault = server.faults.pop(path.lstrip("/"), None) if body else None
            if data is None or fault == "404":
                return self._send(404, b"not found", {})
            start = 0
            ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if ranged and fault != "ignore-range":
                start = 1 if fault == "wrong-range" else int(ranged[1])
                if start >= len(data):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": server.hub_commit}
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            rest = data[start:]
            if not body:
                return self._send(200, b"", {**headers, "Content-Length": str(len(rest))}, body=False)
            if fault in ("truncate", "stall"):
                self._send(
                    206 if start else 200,
                    rest[: len(rest) // 2],
                    {**headers, "Content-Length": str(len(rest))},
                )
                if fault == "stall":
                    server.release.wait(30)
                self.close_connection = True
                return None
            return self._send(206 if start else 200, rest, headers)

        def _hub_api(self, path: str) -> None:
            repo = re.escape(server.hub_repo)
            if re.fullmatch(rf"/api/models/{repo}/revision/[^/]+", path):
                info = {"id": server.hub_repo, "sha": server.hub_commit, "siblings": []}
                return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})
            if re.fullmatch(rf"/api/models/{repo}/tree/[^/]+/?", path):
                tree = [{"type": "file", "path": p, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                        for p, d in server.files.items()]  # fmt: skip
                return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
            return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})

        def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool = True) -> None:
            self.send_response(status)
            headers.setdefault("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if body:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client that gave up
                    self.wfile.write(data)
                    self.wfile.flush()

    return Handler
