"""Fetching one file over HTTP(S) resumably, checking its md5, and unpacking a tar archive safely.

    fetch(url, dest, md5)            # dest.part grows (HTTP Range on a rerun), md5 checked, then moved to dest
    safe_extract(archive, folder)    # every member checked first; nothing outside `folder`, no links out, no devices

`fetch` keeps the partial file `<dest>.part` when a transfer breaks: the next call (or the next run of the same
command) asks the server for the remaining bytes only. A server that ignores Range makes it start over. A file
whose md5 differs from the expected one is deleted and reported (file, expected, got). Progress is a tqdm bar
with size and speed on stderr.
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

CHUNK = 1 << 20          # bytes per read
USER_AGENT = "specvqgan-pipeline"


class DownloadError(RuntimeError):
    """A file could not be fetched (HTTP error, network failure after the retries)."""


class ChecksumError(DownloadError):
    """A fetched file's md5 is not the published one (the file has been deleted)."""


class UnsafeArchiveError(RuntimeError):
    """An archive holds a member that would land outside the target, a link out of it, or a device file."""


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


def _transfer(url: str, part: Path, timeout: float, progress: bool) -> None:
    """One request: appends to `part` from its current size (a Range request when it is not empty)."""
    from tqdm import tqdm

    offset = part.stat().st_size if part.exists() else 0
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
        total = _total_size(response, offset)
        with open(part, "ab" if offset else "wb") as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name[:-5],
                disable=not progress, leave=True, mininterval=0.5) as bar:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                f.write(block)
                bar.update(len(block))
    size = part.stat().st_size
    if total is not None and size < total:
        raise http.client.IncompleteRead(b"", total - size)


def fetch(url: str, dest: str | os.PathLike, md5: str | None, *, retries: int = 3, timeout: float = 60.0,
          progress: bool = True, backoff: float = 1.0) -> str:
    """Download `url` to `dest` (atomically: `<dest>.part`, then a rename); returns the file's md5.

    A broken transfer is resumed with HTTP Range up to `retries` times within the call, and by the next call.
    `md5` None skips the check (the caller reports the md5 it got). Raises DownloadError (HTTP errors, e.g. a
    404, and a network failing more than `retries` times: the partial file is kept for the next run) and
    ChecksumError (md5 mismatch: the file is deleted).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout, progress)
            break
        except (http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionError, socket.timeout,
                TimeoutError, urllib.error.URLError) as error:
            reason = getattr(error, "reason", error)
            have = part.stat().st_size if part.exists() else 0
            if attempt == retries or isinstance(reason, ConnectionRefusedError):  # no server there: no retry
                raise DownloadError(f"{url}: {type(error).__name__} ({reason}) after {retries + 1} attempts; "
                                    f"{have} bytes kept in {part}: run the same command again to resume") from None
            log.warning("%s: %s at %d bytes; resuming (attempt %d of %d)", url, reason, have, attempt + 2,
                        retries + 1)
            time.sleep(backoff * (attempt + 1))
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
