"""Atomic file writes and the failures manifest shared by every stage that writes files.

Every file a stage produces goes through `atomic_write`: it is written to a temporary file in the same
folder and moved into place with `os.replace`, so an interrupted job never leaves a half-written output that
a rerun would mistake for a finished one.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; on success move it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; shared cluster folders expect the umask's mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """`np.save` through `atomic_write` (the exact path is kept: no `.npy` is appended)."""
    with atomic_write(path) as f:
        np.save(f, array)


def save_pickle(path: str | os.PathLike, obj: Any) -> None:
    """Pickle `obj` atomically (protocol 4, as the original's ResNet50 features)."""
    with atomic_write(path) as f:
        pickle.dump(obj, f, protocol=4)


def save_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def save_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """`torch.save` through `atomic_write`."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    save_bytes(path, buffer.getvalue())


class FailureManifest:
    """Append-only `failures.jsonl`: one line per item that failed, with its reason.

    Thread-safe; each line is flushed at once so a killed job keeps what it recorded.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.count = 0

    def add(self, item: str, reason: str, **extra: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"item": str(item), "reason": reason, **extra}
        with self._lock, open(self.path, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")
            f.flush()
        self.count += 1

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
