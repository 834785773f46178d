"""Is a media file usable? `ClipError` (why a clip cannot be used, naming the file) and `check_source` (missing,
unreadable or truncated), shared by the audio, video and mel readers and every stage that reads videos."""
from __future__ import annotations

from pathlib import Path


class ClipError(RuntimeError):
    """A clip cannot be processed; the message says why and names the file.

    `kind` sorts failures: "missing" (listed but absent), "corrupt" (unreadable or truncated) or "unusable"
    (a readable file that cannot serve: no audio, silence, too few frames). Left None, it is read from the
    message ("corrupt" when it says so, else "unusable")."""

    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        self.kind = kind or ("corrupt" if "corrupt" in message else "unusable")

    def __reduce__(self):  # keeps `kind` across worker processes
        return (type(self), (str(self), self.kind))

# a source whose packets end this much before its declared duration is truncated (seconds, share)
TRUNCATION_TOLERANCE = (0.25, 0.05)


_SOUND: set[tuple[str, int, int]] = set()  # (path, size, mtime) of the sources this process found usable


def check_source(path: Path) -> None:
    """Raise ClipError when a source video is missing, unreadable or truncated (reads packets, decodes nothing).
    A file found usable is not read again by this process while its size and time stay the same (every stage
    checks the videos it reads, some in several places)."""
    path = Path(path)
    if not path.exists():
        raise ClipError(f"missing: {path} is listed but does not exist (fix the split file or the videos folder)",
                        kind="missing")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _SOUND:
        return
    _check_packets(path)
    _SOUND.add(key)


def _check_packets(path: Path) -> None:
    import av

    try:
        container = av.open(str(path))
    except Exception as error:  # noqa: BLE001 - PyAV raises several error types for broken files
        raise ClipError(f"corrupt file {path}: cannot open it ({type(error).__name__}: {error})",
                        kind="corrupt") from None
    with container:
        declared = container.duration / 1e6 if container.duration else None
        end = 0.0
        try:
            for packet in container.demux():
                if packet.pts is not None and packet.time_base is not None:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
        except Exception as error:  # noqa: BLE001
            raise ClipError(f"corrupt file {path}: reading its packets failed ({type(error).__name__}: {error})",
                            kind="corrupt") from None
    start = min((float(s.start_time * s.time_base) for s in container.streams
                 if s.start_time is not None and s.time_base is not None), default=0.0)
    if declared and end - start < declared - max(TRUNCATION_TOLERANCE[0], TRUNCATION_TOLERANCE[1] * declared):
        raise ClipError(f"corrupt file {path}: truncated, its header declares {declared:.2f} s but its data ends "
                        f"at {end - start:.2f} s (re-download or re-encode it)", kind="corrupt")
