"""A real HTTP server on 127.0.0.1 for the download tests, and archives in the original's released layout.

`FileServer` serves bytes by URL path (http.server's ThreadingHTTPServer in a thread) with HTTP Range support;
`cut_once` paths send only the first half of the body on their first full request and then close the
connection, as a broken transfer does; `reset_every` paths send at most that many bytes per response and then
reset the connection (TCP RST); `trickle` paths send one byte every that many seconds; `short_once` paths
answer their first full request with the first half of the body and a Content-Length that says it is all;
`serve_once` paths are gone (404) after their first response, as a server that went away. Every request is
logged (path, Range header, bytes sent).
"""
from __future__ import annotations

import functools
import hashlib
import io
import re
import socket
import struct
import tarfile
import threading
import time
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
    reset_every: dict[str, int] = field(default_factory=dict)
    trickle: dict[str, float] = field(default_factory=dict)
    short_once: set[str] = field(default_factory=set)
    serve_once: set[str] = field(default_factory=set)
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
                if self.path.lstrip("/") in server_self.serve_once:
                    server_self.serve_once.discard(self.path.lstrip("/"))
                    server_self.files.pop(self.path.lstrip("/"))
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
                payload = body[start:]
                key = self.path.lstrip("/")
                if key in server_self.short_once and not m:  # a short body that claims to be the whole file
                    server_self.short_once.discard(key)
                    payload = payload[: len(payload) // 2]
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if key in server_self.reset_every:
                    payload = payload[: server_self.reset_every[key]]
                    self.wfile.write(payload)
                    self.wfile.flush()
                    record.sent = len(payload)
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()  # linger 0: a reset, not an orderly close
                    return
                if key in server_self.trickle:
                    for i in range(len(payload)):
                        try:
                            self.wfile.write(payload[i:i + 1])
                            self.wfile.flush()
                        except OSError:  # the client gave up
                            break
                        record.sent = i + 1
                        time.sleep(server_self.trickle[key])
                    self.close_connection = True
                    return
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
