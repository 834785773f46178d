"""Fetching one file over HTTP(S) resumably, checking its md5, and unpacking a tar archive safely.

    fetch(url, dest, md5, size=N)    # dest.part grows (HTTP Range on a rerun), md5 / size checked, then moved
    safe_extract(archive, folder)    # every member checked first; nothing outside `folder`, no links out, no devices

`fetch` writes every block as it arrives into the partial file `<dest>.part` and keeps it when a transfer breaks
(a reset, a cut, a stall): it resumes after a growing wait, and the next call (or the next run of the same
command) asks the server for the remaining bytes only. A server that ignores Range makes it start over. A file
whose md5 or size differs from the expected one is deleted and reported (file, expected, got). Progress is a
tqdm bar with size and speed on stderr.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 1 << 20          # bytes per read when hashing a file
READ = 1 << 16           # bytes asked of the connection per read: whatever has arrived is written at once
STALL_BYTES = 1 << 16    # an attempt must receive this much in every `timeout` seconds, or it is broken off
MAX_BACKOFF_S = 30.0     # the longest wait between two attempts
USER_AGENT = "specvqgan-pipeline"


class DownloadError(RuntimeError):
    """A file could not be fetched (HTTP error, network failure after the retries)."""


class ChecksumError(DownloadError):
    """A fetched file's md5 or size is not the published one (the file has been deleted)."""


class UnsafeArchiveError(RuntimeError):
    """An archive holds a member that would land outside the target, a link out of it, or a device file."""


class Stalled(OSError):
    """An attempt that received less than STALL_BYTES in `timeout` seconds (a stalled or trickling link)."""


def md5_of(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _total_size(response, offset: int) -> int | None:
    """The full file size from Content-Range (a 206) or Content-Length (a 200)."""
    content_range = response.headers.get("Content-Range")
    if content_range:
        m = re.match(r"bytes\s+\d+-\d+/(\d+)", content_range)
        if m:
            return int(m.group(1))
    length = response.headers.get("Content-Length")
    return int(length) + offset if length is not None else None


def _transfer(url: str, part: Path, timeout: float, progress: bool, size: int | None = None) -> None:
    """One request: appends to `part` from its current size (a Range request when it is not empty). Every block is
    written as it arrives, so a reset loses nothing received; an attempt that gets less than STALL_BYTES in
    `timeout` seconds raises Stalled. `size` (the registry's) wins over what the server says the file's size is."""
    from tqdm import tqdm

    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset == size:
        return
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) URLs from the registry
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing left to send: the partial file is already complete
            return
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    with response:
        status = getattr(response, "status", 200)
        if offset and status != 206:  # the server ignored Range: start over
            log.warning("%s: the server does not resume (HTTP %s to a Range request); starting over", url, status)
            offset = 0
        total = size if size is not None else _total_size(response, offset)
        with open(part, "ab" if offset else "wb") as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name[:-5],
                disable=not progress, leave=True, mininterval=0.5) as bar:
            window_start, window_bytes = time.monotonic(), 0
            while True:
                block = response.read1(READ)
                if not block:
                    break
                f.write(block)
                f.flush()  # on disk before the next read can fail
                bar.update(len(block))
                window_bytes += len(block)
                if window_bytes >= STALL_BYTES:
                    window_start, window_bytes = time.monotonic(), 0
                elif time.monotonic() - window_start > timeout:
                    raise Stalled(f"stalled: less than {STALL_BYTES // 1024} KiB in {timeout:g} s")
    got = part.stat().st_size
    if total is not None and got < total:
        raise http.client.IncompleteRead(b"", total - got)


BROKEN = (http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionError, socket.timeout, TimeoutError,
          urllib.error.URLError, Stalled)


def fetch(url: str, dest: str | os.PathLike, md5: str | None, *, size: int | None = None, retries: int = 3,
          timeout: float = 60.0, progress: bool = True, backoff: float = 1.0) -> str:
    """Download `url` to `dest` (atomically: `<dest>.part`, then a rename); returns the file's md5.

    A broken transfer (a reset, a cut, a stall: less than STALL_BYTES in `timeout` seconds) is resumed with HTTP
    Range, after a wait of `backoff` seconds doubling each time (at most MAX_BACKOFF_S); `retries` bounds the
    attempts in a row that bring less than STALL_BYTES, so a link that breaks often but moves on completes. The
    next call resumes too. `md5` and `size` (bytes), when given, are checked before the file is installed: a
    mismatch deletes it; a file shorter than `size` that the server calls complete is resumed, not installed.
    Raises DownloadError (HTTP errors, e.g. a 404, and a network failing more than `retries` times in a row: the
    bytes received are kept in the partial file for the next run; an empty one is removed) and ChecksumError.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = attempts = 0
    try:
        while True:
            before = part.stat().st_size if part.exists() else 0
            attempts += 1
            try:
                _transfer(url, part, timeout, progress, size)
                break
            except BROKEN as error:
                reason = getattr(error, "reason", error)
                have = part.stat().st_size if part.exists() else 0
                failures = 0 if have - before >= STALL_BYTES else failures + 1
                if failures > retries or isinstance(reason, ConnectionRefusedError):  # no server there: no retry
                    raise DownloadError(f"{url}: {type(error).__name__} ({reason}) after {attempts} attempts; {have} "
                                        f"bytes kept in {part}: run the same command again to resume") from None
                wait = 0.0 if failures == 0 else min(MAX_BACKOFF_S, backoff * 2 ** (failures - 1))  # moving: at once
                log.warning("%s: %s at %d bytes; resuming in %.1f s (attempt %d)", url, reason, have, wait,
                            attempts + 1)
                time.sleep(wait)
    finally:
        if part.exists() and part.stat().st_size == 0:
            part.unlink()  # a failed start leaves no empty .part behind
    got_size = part.stat().st_size
    if size is not None and got_size != size:
        part.unlink()
        raise ChecksumError(f"{dest.name} from {url}: {got_size} bytes, the registry records {size}; the file was "
                            f"deleted (a changed file or a wrong mirror)")
    got = md5_of(part)
    if md5 is not None and got != md5.lower():
        part.unlink()
        raise ChecksumError(f"{dest.name} from {url}: md5 {got} differs from the published {md5}; the file was "
                            f"deleted (a corrupt transfer or a changed file: run again, or check the mirror)")
    os.replace(part, dest)
    return got


# --------------------------------------------------------------------------------------------- unpacking
def check_members(archive: str | os.PathLike, folder: str | os.PathLike) -> list[str]:
    """The top-level names of a tar archive after checking every member against `folder` with Python's
    `data` filter (PEP 706): nothing outside `folder` (`../`), no links that leave it or are absolute, no
    device or fifo files; absolute names, which the filter would make relative, are refused too. Raises
    UnsafeArchiveError naming the archive and the member; writes nothing."""
    folder = os.path.realpath(folder)
    tops: set[str] = set()
    with tarfile.open(archive) as tar:
        for member in tar:
            try:
                if member.name.startswith(("/", os.sep)) or os.path.isabs(member.name):
                    raise tarfile.AbsolutePathError(member)  # the data filter would strip the slash: refuse instead
                tarfile.data_filter(member, folder)
            except tarfile.FilterError as error:
                raise UnsafeArchiveError(f"{archive}: member {member.name!r} refused ({error}); nothing was "
                                         f"unpacked") from None
            name = os.path.normpath(member.name)
            if name != ".":
                tops.add(name.split(os.sep)[0])
    return sorted(tops)


def safe_extract(archive: str | os.PathLike, folder: str | os.PathLike) -> list[str]:
    """Unpack `archive` into `folder` after `check_members`; returns the top-level names it made."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tops = check_members(archive, folder)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return tops


def move_into(src: Path, dst: Path) -> None:
    """Move `src` to `dst` on the same file system: one rename when `dst` does not exist; into an existing
    folder (archives that share a top folder, e.g. 64 VGGSound parts) file by file, each a rename."""
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        return
    if not (src.is_dir() and dst.is_dir()):
        raise FileExistsError(f"{dst} already exists and is not a folder to merge {src.name} into: move it away")
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir() and not path.is_symlink():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    shutil.rmtree(src)
