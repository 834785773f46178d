"""A real HTTP server on 127.0.0.1 for the download tests, and archives in the original's released layout.

`FileServer` serves bytes by URL path (http.server's ThreadingHTTPServer in a thread) with HTTP Range support;
`cut_once` paths send only the first half of the body on their first full request and then close the
connection, as a broken transfer does. Every request is logged (path, Range header, bytes sent).
"""
from __future__ import annotations

import functools
import hashlib
import io
import re
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.helpers import SHARED

SHARED_RELEASED = SHARED / "fixtures" / "original" / "released"


@dataclass
class Request:
    path: str
    range: str | None
    sent: int = 0
    status: int = 0


@dataclass
class FileServer:
    files: dict[str, bytes] = field(default_factory=dict)
    cut_once: set[str] = field(default_factory=set)
    requests: list[Request] = field(default_factory=list)

    def start(self) -> FileServer:
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802 - http.server's name
                record = Request(self.path, self.headers.get("Range"))
                server_self.requests.append(record)
                body = server_self.files.get(self.path.lstrip("/"))
                if body is None:
                    record.status = 404
                    self.send_error(404, "Not Found")
                    return
                start = 0
                m = re.match(r"bytes=(\d+)-$", record.range or "")
                if m:
                    start = int(m.group(1))
                    if start >= len(body):
                        record.status = 416
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    record.status = 206
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    record.status = 200
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                payload = body[start:]
                if self.path.lstrip("/") in server_self.cut_once and not m:
                    server_self.cut_once.discard(self.path.lstrip("/"))
                    payload = payload[: len(payload) // 2]
                    self.wfile.write(payload)
                    self.wfile.flush()
                    record.sent = len(payload)
                    self.close_connection = True
                    return
                self.wfile.write(payload)
                record.sent = len(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def add(self, path: str, body: bytes) -> str:
        """Serve `body` at `path`; returns its md5."""
        self.files[path] = body
        return hashlib.md5(body).hexdigest()


@functools.lru_cache(maxsize=8)
def tar_gz(folder: Path, arcname: str | None = None) -> bytes:
    """`folder` as the release packs it: a .tar.gz whose top level is the folder itself (made once per test run)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=arcname or folder.name)
    return buffer.getvalue()


def tar_with(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A .tar.gz made of hand-written members (unsafe names, links)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buffer.getvalue()
