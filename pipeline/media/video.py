"""Video I/O with PyAV: frame times, frames resampled to 21.5 fps, looping to 10 s, writing and muxing mp4s.

The original re-encodes every video with ffmpeg (`-r 21.5`, after looping short clips to 10 s with
`-stream_loop`, spec §1.1) and reads the frames of that file. We decode the source once and pick frames by
time instead, which needs no ffmpeg binary and no temporary files:

* output frame k is shown at t = k / fps; it is the decoded frame on screen at t, i.e. the one with the
  largest presentation time <= t (the nearest previous pts);
* a clip of duration D (last frame's time + one frame interval) gives round(D * fps) output frames, so a
  10 s clip gives 215 (216 for a slightly longer one) and the 6.006 s dog/video_02677 gives 129, the
  period of the original's tiled ResNet50 features;
* looping to L seconds at the video level (`loop_to=L`) maps t to t mod D, and a clip longer than L is cut
  at L, as the original's loop-then-cut does.

Memory: the frame times come from a demux pass (no decoding); the decode pass keeps only the frames that are
picked, each already shrunk by the caller's `transform` (e.g. to 224 x 224), never a full-resolution clip.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from pipeline.files.writes import atomic_write
from pipeline.media.source import ClipError

FPS = 21.5  # the original's visual frame rate: 4 mel frames per visual frame
SEEK_AFTER = 250  # frames: a first wanted frame further in is reached by seeking, not by decoding every frame before


def open_video(path: str | os.PathLike):
    import av

    path = Path(path)
    if not path.exists():
        raise ClipError(f"video {path} does not exist")
    try:
        container = av.open(str(path))
    except Exception as error:
        raise ClipError(f"cannot open video {path} ({type(error).__name__}: {error}): the file is corrupt "
                        f"or not a video; re-download or re-encode it") from error
    if not container.streams.video:
        container.close()
        raise ClipError(f"{path} has no video stream")
    return container


def frame_times(path: str | os.PathLike) -> np.ndarray:
    """Presentation times (s) of every frame of the first video stream, sorted, relative to the first frame.

    Read from the packets (no decoding); (N,) float64.
    """
    with open_video(path) as container:
        stream = container.streams.video[0]
        pts, time_base = _frame_pts(container, stream, path), float(stream.time_base)  # read while it is open
    return (pts - pts[0]).astype(np.float64) * time_base


def _frame_pts(container, stream, path) -> np.ndarray:
    """The sorted, unique presentation timestamps of a video stream's frames, from its packets (nothing decoded)."""
    try:
        pts = [p.pts for p in container.demux(stream) if p.pts is not None and p.size > 0]
    except Exception as error:
        raise ClipError(f"cannot read the packets of {path} ({type(error).__name__}: {error}): the file "
                        f"is corrupt; re-download or re-encode it") from error
    if not pts:
        raise ClipError(f"{path} has no video frames")
    return np.unique(np.asarray(pts, dtype=np.int64))


def clip_duration(times: np.ndarray) -> float:
    """Duration of a clip from its frame times: the last frame is shown for one (median) frame interval."""
    if len(times) < 2:
        return 1.0 / 25  # a single still frame: show it for one frame at a common rate
    return float(times[-1] + np.median(np.diff(times)))


def sample_indices(
    times: np.ndarray,
    fps: float = FPS,
    *,
    loop_to: float | None = None,
    extra: int = 0,
    start: float = 0.0,
    span: float | None = None,
) -> np.ndarray:
    """Which decoded frame each output frame at `fps` shows; (N,) int64 indices into `times`.

    N = round(D * fps) + extra with D the clip's duration, or `loop_to` when looping (the clip is repeated
    from its start until `loop_to` seconds and cut there). `extra` frames past the end repeat the last one,
    as ffmpeg's constant-rate output does. The clip is the video from `start` (s) on, at most `span` s of it (a
    window of a longer video; None: to the end).
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    duration = clip_duration(times) - start
    if duration <= 0:
        raise ClipError(f"a clip starting at {start:g} s lies past the end of its video ({duration + start:.2f} s)")
    if span is not None:
        duration = min(duration, float(span))
    total = float(loop_to) if loop_to else duration
    count = math.floor(total * fps + 0.5) + int(extra)
    t = np.arange(count, dtype=np.float64) / fps  # (N,) output frame times
    t = np.minimum(t, total - 1e-6)  # past the end: the last frame stays on screen
    if loop_to:
        t = np.mod(t, duration)
    idx = np.searchsorted(times, start + t + 1e-6, side="right") - 1  # the frame on screen at t
    return np.clip(idx, 0, len(times) - 1).astype(np.int64)


def stream_frames(
    path: str | os.PathLike,
    indices: np.ndarray,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    pix_fmt: str = "rgb24",
) -> Iterator[np.ndarray]:
    """The frames at non-decreasing `indices` (into `frame_times(path)`, repeats allowed), one per index, each
    through `transform`: the one frame decoder of the project.

    Frames are decoded once in presentation order and only the wanted ones are converted; one frame is held at a
    time, so memory does not grow with the video's length. When the first wanted frame lies more than SEEK_AFTER
    frames in (a window deep in a long video), decoding starts at the keyframe before it instead of the first
    frame. A broken tail (fewer decodable frames than packets) repeats the last decoded frame. `pix_fmt` is `rgb24`
    or `bgr24` (H, W, 3 uint8).
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        return
    if np.any(np.diff(indices) < 0):
        raise ValueError("stream_frames takes non-decreasing frame indices (read_frames takes any order)")
    position, image, j = 0, None, -1
    with open_video(path) as container:
        stream = container.streams.video[0]
        pts = None
        if indices[0] > SEEK_AFTER:
            pts = _frame_pts(container, stream, path)
            container.seek(int(pts[min(int(indices[0]), pts.size - 1)]), stream=stream, backward=True)
        stream.thread_type = "AUTO"  # frame-parallel decoding
        try:
            for frame in container.decode(stream):
                if pts is not None and frame.pts is not None:  # after a seek: the frame's index from its time
                    j = int(np.searchsorted(pts, frame.pts))
                elif pts is not None and j < 0:
                    continue  # no time, no index yet: wait for a frame that has one
                else:
                    j += 1
                if j == indices[position]:
                    image = frame.to_ndarray(format=pix_fmt)
                    image = transform(image) if transform is not None else image
                    while position < indices.size and indices[position] == j:
                        yield image
                        position += 1
                    if position == indices.size:
                        return
        except Exception as error:
            raise ClipError(f"cannot decode frame {j + 1} of {path} ({type(error).__name__}: {error}): the "
                            f"file is corrupt; re-download or re-encode it") from error
    if image is None:
        raise ClipError(f"{path}: no frame could be decoded")
    for _ in range(position, indices.size):  # a broken tail: the last decoded frame stays on screen
        yield image


def read_frames(
    path: str | os.PathLike,
    indices: np.ndarray,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    pix_fmt: str = "rgb24",
) -> list[np.ndarray]:
    """The frames at `indices` (any order, repeats allowed) as a list: `stream_frames` over the sorted indices."""
    indices = np.asarray(indices, dtype=np.int64)
    order = np.argsort(indices, kind="stable")
    frames: list[np.ndarray] = [None] * indices.size  # type: ignore[list-item]
    for position, image in zip(order.tolist(), stream_frames(path, indices[order], transform, pix_fmt)):
        frames[position] = image
    return frames


def read_clip_frames(
    path: str | os.PathLike,
    fps: float = FPS,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    loop_to: float | None = None,
    extra: int = 0,
    pix_fmt: str = "rgb24",
    start: float = 0.0,
    span: float | None = None,
) -> list[np.ndarray]:
    """A clip's frames at `fps` (optionally looped / cut to `loop_to` s), each through `transform`; the clip is
    `span` s of the video from `start` (`sample_indices`)."""
    idx = sample_indices(frame_times(path), fps, loop_to=loop_to, extra=extra, start=start, span=span)
    return read_frames(path, idx, transform, pix_fmt)


# ---------------------------------------------------------------- per-frame geometry (numpy / PIL, uint8)

def resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (PIL, antialiased) resize so that the short side is `size`, as torchvision's Resize(size)."""
    from PIL import Image

    h, w = image.shape[:2]
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central size x size window (torchvision's CenterCrop offsets: round((H - size) / 2))."""
    h, w = image.shape[:2]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}x{size} out of a {w}x{h} frame")
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)
    return image[top:top + size, left:left + size]


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear (PIL, antialiased) resize to exactly width x height (torchvision's Resize((h, w)) on PIL)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


# ---------------------------------------------------------------- writing

def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sr: int | None = None,
    codec: str = "libx264",
) -> None:
    """Write (N, H, W, 3) uint8 RGB frames (and optional mono/(n, C) float audio) as an mp4, atomically."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    with atomic_write(path) as f, av.open(f, "w", format="mp4") as out:
        vs = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        vs.width, vs.height = frames.shape[2] // 2 * 2, frames.shape[1] // 2 * 2
        vs.pix_fmt = "yuv420p"
        aus = _add_audio_stream(out, sr) if audio is not None else None
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:vs.height, :vs.width]), format="rgb24")
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        if aus is not None:
            _encode_audio(out, aus, audio, sr)


def _add_audio_stream(out, sr: int | None):
    if not sr:
        raise ValueError("audio needs its sample rate (sr)")
    stream = out.add_stream("aac", rate=int(sr))
    stream.layout = "mono"
    return stream


def _encode_audio(out, stream, audio: np.ndarray, sr: int) -> None:
    import av

    wav = np.asarray(audio, dtype=np.float32)
    if wav.ndim == 2:  # (n, C) -> mono, as the original's -ac 1
        wav = wav.mean(axis=1)
    wav = np.clip(wav, -1.0, 1.0)
    frame = av.AudioFrame.from_ndarray(wav[None, :], format="fltp", layout="mono")
    frame.sample_rate = int(sr)
    frame.pts = 0
    out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def mux_audio(
    video_path: str | os.PathLike,
    wav: str | os.PathLike | np.ndarray,
    out_path: str | os.PathLike,
    sr: int | None = None,
) -> Path:
    """Put `wav` (a file, or a float waveform at `sr`) as the sound of `video_path`; writes `out_path` (mp4).

    The video stream is copied (no re-encoding); the audio is encoded as AAC mono. Atomic: a reader never
    sees a half-written file.
    """
    import av
    import soundfile as sf

    if isinstance(wav, (str, os.PathLike)):
        if not Path(wav).exists():
            raise FileNotFoundError(f"audio file {wav} does not exist")
        data, file_sr = sf.read(str(wav), dtype="float32", always_2d=False)
        if sr is not None and int(sr) != int(file_sr):
            raise ValueError(f"{wav} is at {file_sr} Hz but sr={sr} was given: resample it first or pass sr=None")
        wav, sr = data, file_sr
    elif sr is None:
        raise ValueError("a waveform array needs its sample rate: mux_audio(..., sr=22050)")
    out_path = Path(out_path)
    with open_video(video_path) as src, atomic_write(out_path) as f, av.open(f, "w", format="mp4") as out:
        vin = src.streams.video[0]
        vout = out.add_stream_from_template(vin)
        aout = _add_audio_stream(out, sr)
        for packet in src.demux(vin):
            if packet.dts is None:
                continue
            packet.stream = vout
            out.mux(packet)
        _encode_audio(out, aout, wav, int(sr))
    return out_path
