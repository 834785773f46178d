"""A small generated audio-visual data set in exactly the VAS layout (`python -m stages.make_demo_data`).

Every class has its own look (shape, colour, background texture) and its own sound (a tonal chirp, a noise
burst, a harmonic tone, a click train; further classes reuse these with other pitches and hues), and each sound
keeps to its own band of the mel spectrogram's five code rows (the chirp the lowest, the noise the highest), so
that class survives a tiny codebook's reconstruction. In each clip the class's object idles dimly, and at a few
random moments it jumps to a new place and lights up while its sound plays.

The events sit on the codebook's grid: every sound starts at the first frame of a code column of the models'
centre-cropped window (16 mel frames, 0.19 s) and lasts whole columns, so the demo's 32-code codebook can
represent a clip exactly and a model's timing is measured against a grid it can express. A video frame is bright
when its middle lies inside the sound (25 fps frames do not fall on the columns: within half a frame, 20 ms).

Layout (as VAS): `<root>/videos/<class>/video_XXXXX.mp4` (H.264 yuv420p + AAC mono), split files with
`<class>/video_XXXXX` rows, plus `classes.txt`, `events.json` (each clip's event onsets in seconds) and a
README. Everything is deterministic from the seed: each clip draws from its own generator (seed, class, clip),
so skipping clips that exist does not change the others.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from pipeline.data.conditions import center_offset
from pipeline.files.writes import atomic_write, save_bytes, save_json
from pipeline.media.mel import FRAMES_PER_COLUMN, HOP
from pipeline.runs.outcomes import Outcomes, say

KINDS = ("chirp", "noise", "harmonic", "clicks")  # the four sound families, cycled for more classes
SHAPES = {"chirp": "circle", "noise": "square", "harmonic": "triangle", "clicks": "ring"}
TEXTURES = {"chirp": "stripes", "noise": "speckle", "harmonic": "checker", "clicks": "rings"}
EVENT_COLUMNS = {"chirp": 2, "noise": 1, "harmonic": 3, "clicks": 2}  # sound (and flash) lengths in code columns
# silent code columns between two events: a codebook code sees its neighbour columns (an event changes the codes
# of the column before its onset and after its end), so with one silent column two events merge into codes that
# neither makes alone; three keep every event of a class the same code pattern for the transformer to learn
SILENT_COLUMNS = 3
BASE_HUES = {"chirp": 0.0, "noise": 0.62, "harmonic": 0.33, "clicks": 0.15}  # red, blue, green, yellow


@dataclass(frozen=True)
class DemoSpec:
    """How big the generated data set is; every field comes from conf/make_demo_data.yaml."""

    num_classes: int
    clips_per_class: int
    valid_share: float
    seconds: float
    size: int
    fps: int
    sample_rate: int
    background: float  # std of the background hiss
    events_per_clip: tuple[int, int]  # fewest and most events of a clip (fewer when they do not fit)
    seed: int
    # the models' window, whose code columns the events start on (conf/make_demo_data.yaml's grid)
    spec_len: int  # stored mel frames of 10 s
    crop_len: int  # frames the models see (the centre crop)
    hop: int = HOP  # mel hop in samples: the mel transform's, not a setting
    frames_per_column: int = FRAMES_PER_COLUMN  # mel frames per code column: the codebook's, not a setting

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **overrides: Any) -> DemoSpec:
        """The spec of conf/make_demo_data.yaml (composed: `cfg`, or the stage's own when None), `overrides` set."""
        values = dict(num_classes=int(cfg["num_classes"]), clips_per_class=int(cfg["clips_per_class"]),
                      valid_share=float(cfg["valid_share"]), seconds=float(cfg["seconds"]), size=int(cfg["size"]),
                      fps=int(cfg["fps"]), sample_rate=int(cfg["sample_rate"]), background=float(cfg["background"]),
                      events_per_clip=tuple(int(n) for n in cfg["events_per_clip"]), seed=int(cfg["seed"]),
                      **{key: int(value) for key, value in cfg["grid"].items()})
        return cls(**{**values, **overrides})

    def __post_init__(self):
        if self.num_classes < 1 or self.clips_per_class < 1:
            raise ValueError("num_classes and clips_per_class must be >= 1")
        if self.seconds < 1.0:
            raise ValueError(f"seconds={self.seconds}: clips need at least 1 s to hold an event")
        if self.size < 32 or self.size % 2:
            raise ValueError(f"size={self.size}: use an even frame size >= 32 (yuv420p needs even sides)")
        if not 0 <= self.valid_share < 1:
            raise ValueError(f"valid_share={self.valid_share}: use a share in [0, 1)")
        low, high = self.events_per_clip
        if not 1 <= low <= high:
            raise ValueError(f"events_per_clip={list(self.events_per_clip)}: use [fewest, most] with "
                             f"1 <= fewest <= most")
        if not 0 < self.background < 0.1:
            raise ValueError(f"background={self.background}: use a hiss std in (0, 0.1); 0 would leave silent "
                             f"stretches, which the extraction stages treat as broken audio")

    @property
    def num_valid(self) -> int:
        """Clips per class in the validation split (the last ones, as the VAS split rule)."""
        if self.clips_per_class < 2 or self.valid_share == 0:
            return 0
        return min(self.clips_per_class - 1, max(1, round(self.clips_per_class * self.valid_share)))

    @property
    def num_frames(self) -> int:
        return round(self.seconds * self.fps)

    @property
    def num_samples(self) -> int:
        return round(self.seconds * self.sample_rate)

    @property
    def column_samples(self) -> int:
        """Samples per code column."""
        return self.frames_per_column * self.hop

    def column_start(self, column: int) -> int:
        """The sample where an event in code column `column` of the models' window starts: one hop after the
        column's first frame's centre, so the STFT window of that frame holds only the sound's first quarter."""

        return (center_offset(self.spec_len, self.crop_len) + column * self.frames_per_column + 1) * self.hop


@dataclass(frozen=True)
class DemoClass:
    name: str
    kind: str
    shape: str
    texture: str
    colour: tuple[int, int, int]
    pitch: float  # frequency multiplier of the kind's sound
    event_columns: int  # code columns the sound (and the flash) lasts


def class_list(num_classes: int) -> list[DemoClass]:
    """The classes, in target order (their names sort in this order)."""
    classes = []
    for i in range(num_classes):
        kind = KINDS[i % len(KINDS)]
        variant = i // len(KINDS)
        hue = (BASE_HUES[kind] + 0.09 * variant) % 1.0
        colour = tuple(int(255 * c) for c in _hsv_to_rgb(hue, 0.85, 1.0))
        classes.append(DemoClass(
            name=f"{i:02d}_{kind}_{SHAPES[kind]}", kind=kind, shape=SHAPES[kind], texture=TEXTURES[kind],
            colour=colour, pitch=1.5 ** variant, event_columns=EVENT_COLUMNS[kind]))
    return classes


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


@dataclass
class ClipPlan:
    """One clip: its events (onset frames) and where the object sits after each event."""

    id: str
    cls: DemoClass
    onsets: list[int]  # samples where an event (sound + flash) starts, each on a code column (DemoSpec.column_start)
    positions: list[tuple[int, int]]  # object centre (x, y): before the first event, then after each one
    tint: float  # a per-clip shift of the background brightness
    seed: tuple[int, int, int]


def event_samples(cls: DemoClass, spec: DemoSpec) -> int:
    """Samples of one event's sound: its columns less three hops, so its last STFT frame stays in its last column."""
    return cls.event_columns * spec.column_samples - 3 * spec.hop


def _event_onsets(rng: np.random.Generator, spec: DemoSpec, cls: DemoClass) -> list[int]:
    """Random onsets (samples, each a code column's start), at least SILENT_COLUMNS silent columns apart, inside
    the clip (spec.events_per_clip of them, fewer if they cannot fit)."""
    columns = [c for c in range(1, spec.crop_len // spec.frames_per_column)
               if spec.column_start(c) + event_samples(cls, spec) <= spec.num_samples - spec.hop]
    if not columns:
        raise ValueError(f"seconds={spec.seconds}: too short for a {cls.event_columns}-column event")
    gap = cls.event_columns + SILENT_COLUMNS
    wanted = int(rng.integers(spec.events_per_clip[0], spec.events_per_clip[1] + 1))
    for n in range(min(wanted, len(columns)), 0, -1):
        for _ in range(50):
            picked = np.sort(rng.choice(columns, size=n, replace=False))
            if n == 1 or np.diff(picked).min() >= gap:
                return [spec.column_start(int(c)) for c in picked]
    return [spec.column_start(columns[0])]


def plan(spec: DemoSpec) -> list[ClipPlan]:
    """Every clip of the data set, class by class (deterministic from spec.seed)."""
    plans = []
    margin = spec.size // 5
    for c, cls in enumerate(class_list(spec.num_classes)):
        for k in range(spec.clips_per_class):
            seed = (spec.seed, c, k)
            rng = np.random.default_rng(seed)
            onsets = _event_onsets(rng, spec, cls)
            positions = [tuple(int(v) for v in rng.integers(margin, spec.size - margin, size=2))
                         for _ in range(len(onsets) + 1)]
            plans.append(ClipPlan(f"{cls.name}/video_{k:05d}", cls, onsets, positions,
                                  float(rng.uniform(-10, 10)), seed))
    return plans


# ---------------------------------------------------------------------------------------------- sound

def event_sound(cls: DemoClass, spec: DemoSpec, rng: np.random.Generator) -> np.ndarray:
    """One event's sound, peak 0.5, with a sharp (10 ms) attack so its onset is exact. Each kind fills its own
    band of the mel (at x1 pitch), densely, so that a blurred reconstruction keeps it: chirp a rising band
    250 -> 1000 Hz (code rows 0-1), harmonic 220 Hz partials over 700-2600 Hz (rows 1-3), clicks across every
    band, noise 3-7.3 kHz (rows 3-4). (Sounds kept to one row each, with no band shared, left the tiny
    codebook at the floor image: too few bright pixels for its L1 to leave the median.)"""
    from scipy.signal import butter, sosfilt

    sr = spec.sample_rate
    n = event_samples(cls, spec)
    t = np.arange(n) / sr

    def band(wave: np.ndarray, low: float, high: float) -> np.ndarray:
        low, high = min(low * cls.pitch, 0.4 * sr), min(high * cls.pitch, 0.45 * sr)
        return sosfilt(butter(4, [low, high], btype="band", fs=sr, output="sos"), wave)

    if cls.kind == "chirp":  # a band of noise sweeping up, 250 -> 1000 Hz (centre), +-30 %: 8 cross-faded bands
        wave = np.zeros(n)
        steps = 8
        width = n / (steps - 1)
        for i, centre_at in enumerate(np.linspace(0, n, steps)):
            weight = np.clip(1 - np.abs(np.arange(n) - centre_at) / width, 0, 1)  # triangles summing to 1
            centre = 250 * 4 ** (i / (steps - 1))
            wave += weight * band(rng.standard_normal(n), 0.7 * centre, 1.3 * centre)
    elif cls.kind == "noise":  # band-passed white noise burst, exponential decay
        wave = band(rng.standard_normal(n), 3000, 7300) * np.exp(-t / 0.2)
    elif cls.kind == "harmonic":  # a 220 Hz buzz (partials 1/k) kept to 700-2600 Hz, slow decay
        f0 = 220 * cls.pitch
        wave = band(sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 16)), 700, 2600) * np.exp(-t / 0.5)
    elif cls.kind == "clicks":  # a 1 ms click every 4 hops: 4 clicks a code column, 21.5 a second, every band
        wave = np.zeros(n)
        ping = np.hanning(int(0.001 * sr)) * np.sign(np.sin(np.linspace(0, 2 * np.pi, int(0.001 * sr))))
        for start in range(0, n - ping.size, 4 * spec.hop):
            wave[start:start + ping.size] += ping
    else:
        raise ValueError(f"unknown sound kind {cls.kind!r}")
    if cls.kind != "clicks":  # raised-cosine ends (10 ms): a hard edge would splash across every mel band
        ramp = min(n // 2, int(0.01 * sr))
        fade = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
        wave[:ramp] *= fade
        wave[n - ramp:] *= fade[::-1]
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32)


def clip_audio(p: ClipPlan, spec: DemoSpec) -> np.ndarray:
    """(samples,) float32 mono: quiet background noise plus the class sound at every onset."""
    rng = np.random.default_rng((*p.seed, 1))
    total = spec.num_samples
    audio = spec.background * rng.standard_normal(total)  # a faint hiss: digital silence reads as broken audio
    for start in p.onsets:
        sound = event_sound(p.cls, spec, rng)[: total - start]
        audio[start:start + sound.size] += sound
    return np.clip(audio, -1, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------- picture

def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: int, cy: int, r: float) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx ** 2 + dy ** 2 <= r ** 2
    if shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "triangle":
        return (dy <= 0.8 * r) & (dy >= -r + 2 * np.abs(dx))
    if shape == "ring":
        d2 = dx ** 2 + dy ** 2
        return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
    raise ValueError(f"unknown shape {shape!r}")


def _background(p: ClipPlan, size: int) -> np.ndarray:
    """(size, size, 3) float: dark grey with the class's texture."""
    yy, xx = np.mgrid[0:size, 0:size]
    if p.cls.texture == "stripes":
        texture = (yy // 8) % 2
    elif p.cls.texture == "checker":
        texture = ((yy // 16) + (xx // 16)) % 2
    elif p.cls.texture == "rings":
        texture = (np.hypot(yy - size / 2, xx - size / 2) // 10) % 2
    else:  # speckle: a fixed random pattern of 4x4 cells
        cells = np.random.default_rng((*p.seed, 2)).integers(0, 2, size=(size // 4 + 1, size // 4 + 1))
        texture = cells[yy // 4, xx // 4]
    grey = 45 + p.tint + 25 * texture.astype(np.float64)
    return np.repeat(grey[..., None], 3, axis=2)


def clip_frames(p: ClipPlan, spec: DemoSpec) -> np.ndarray:
    """(frames, size, size, 3) uint8 RGB: the object dim while idle, bright during each event."""
    size = spec.size
    yy, xx = np.mgrid[0:size, 0:size]
    background = _background(p, size)
    colour = np.array(p.cls.colour, dtype=np.float64)
    length = event_samples(p.cls, spec)
    frames = np.empty((spec.num_frames, size, size, 3), dtype=np.uint8)
    for f in range(spec.num_frames):
        middle = (f + 0.5) * spec.sample_rate / spec.fps  # the frame's middle, in samples
        done = sum(1 for o in p.onsets if o <= middle)  # events begun so far: the object moved that many times
        active = any(o <= middle < o + length for o in p.onsets)
        cx, cy = p.positions[done]
        radius = size * (0.17 if active else 0.13)
        mask = _shape_mask(p.cls.shape, xx, yy, cx, cy, radius)
        image = background.copy()
        image[mask] = colour * (1.0 if active else 0.3)
        frames[f] = np.clip(image, 0, 255).astype(np.uint8)
    return frames


# ---------------------------------------------------------------------------------------------- files

def encode_mp4(path: str | os.PathLike, frames: np.ndarray, audio: np.ndarray, fps: int,
               sample_rate: int) -> None:
    """Mux RGB frames (H.264, yuv420p) and mono float audio (AAC) into an mp4, atomically."""
    with atomic_write(path) as f, av.open(f, mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        # one encoder thread: the same bytes on every run and machine load
        video.options = {"crf": "18", "preset": "veryfast", "threads": "1"}
        sound = container.add_stream("aac", rate=sample_rate, layout="mono")
        sound.bit_rate = 128_000
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode())
        chunk = 1024  # AAC frame size
        for start in range(0, audio.size, chunk):
            block = audio[None, start:start + chunk]  # (1, n) planar mono
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="fltp", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            container.mux(sound.encode(frame))
        container.mux(sound.encode())


def _length_note(spec: DemoSpec) -> str:
    if spec.seconds < 10:
        return ("Clips are shorter than 10 s: the mel stage loops their audio to 10 s (the clip plus the AAC "
                "padding) and the feature stage tiles their frames, as the original treats short clips; the two "
                "loops drift apart a little.")
    return ("Clips last the models' 10 s: nothing is looped or tiled, so every event is heard and seen once, "
            "at the time `events.json` gives.")


def _readme(spec: DemoSpec, classes: list[DemoClass]) -> str:
    rows = "\n".join(f"| {c.name} | {c.shape}, colour RGB{c.colour}, {c.texture} background | {c.kind} sound "
                     f"(x{c.pitch:g} pitch), {c.event_columns} code column(s) |" for c in classes)
    return (f"# Generated demo data set (VAS layout)\n\nMade by `python -m stages.make_demo_data` "
            f"(seed {spec.seed}): {spec.num_classes} classes x {spec.clips_per_class} clips "
            f"({spec.clips_per_class - spec.num_valid} train + {spec.num_valid} valid) "
            f"of {spec.seconds:g} s, "
            f"{spec.size}x{spec.size} at {spec.fps} fps, audio AAC mono {spec.sample_rate} Hz.\n\n"
            f"In every clip the object idles dimly; at each event it jumps to a new place and lights up while "
            f"its sound plays. Sounds start on the code columns of the models' centre-cropped window "
            f"({spec.frames_per_column} mel frames, {spec.column_samples / spec.sample_rate:.3f} s) and last whole "
            f"columns; a frame is bright when its middle lies inside the sound (`events.json` lists the onsets in "
            f"seconds). {_length_note(spec)}\n\n"
            f"| class | look | sound |\n| --- | --- | --- |\n{rows}\n")


# what a clip is made from: a data set written with other values holds other clips (the split sizes only add or
# regroup clips, each drawn from its own generator)
SPLIT_FIELDS = ("num_classes", "clips_per_class", "valid_share")


def check_same_clips(events: Path, spec: DemoSpec) -> None:
    """Refuse to add clips to a data set whose clips were made from another seed or clip settings (its
    events.json records them): the two would mix."""
    if not events.is_file():
        return
    old = json.loads(events.read_text()).get("spec") or {}
    new = asdict(spec)
    changed = [f"{k}: {old[k]} there, {new[k]} now" for k in sorted(new)
               if k not in SPLIT_FIELDS and k in old and _plain(old[k]) != _plain(new[k])]
    if changed:
        raise ValueError(f"{events.parent} holds a demo data set made with other settings ({'; '.join(changed)}): "
                         f"its clips would mix with these. Give this one its own outputs folder (paths.outputs=DIR "
                         f"or SPECVQGAN_OUTPUTS=DIR) or replace it with overwrite=true")


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def generate(root: str | os.PathLike, spec: DemoSpec, videos: str | os.PathLike | None = None,
             train_split: str | os.PathLike | None = None, valid_split: str | os.PathLike | None = None,
             overwrite: bool = False) -> dict[str, Any]:
    """Write the data set under `root`; clips whose mp4 exists are kept unless `overwrite`.

    Returns counts and paths: {"written", "skipped", "root", "videos", "train", "valid"}.
    """
    root = Path(root)
    if not overwrite:
        check_same_clips(root / "events.json", spec)
    videos = Path(videos) if videos else root / "videos"
    train_split = Path(train_split) if train_split else root / "demo_train.txt"
    valid_split = Path(valid_split) if valid_split else root / "demo_valid.txt"
    classes = class_list(spec.num_classes)
    plans = plan(spec)
    written = skipped = 0
    train, valid = [], []
    for p in plans:
        k = int(p.id.rsplit("_", 1)[1])
        (valid if k >= spec.clips_per_class - spec.num_valid else train).append(p.id)
        path = videos / f"{p.id}.mp4"
        if path.exists() and not overwrite:
            skipped += 1
            continue
        encode_mp4(path, clip_frames(p, spec), clip_audio(p, spec), spec.fps, spec.sample_rate)
        written += 1
    save_bytes(train_split, "".join(f"{i}\n" for i in train).encode())
    save_bytes(valid_split, "".join(f"{i}\n" for i in valid).encode())
    save_bytes(root / "classes.txt", "".join(f"{c.name}\n" for c in classes).encode())
    save_json(root / "events.json", {"fps": spec.fps, "spec": asdict(spec),
                                     "onsets_s": {p.id: [o / spec.sample_rate for o in p.onsets] for p in plans},
                                     "event_seconds": {c.name: event_samples(c, spec) / spec.sample_rate
                                                       for c in classes}})
    with atomic_write(root / "README.md", "w") as f:
        f.write(_readme(spec, classes))
    return {"written": written, "skipped": skipped, "root": root, "videos": videos,
            "train": train_split, "valid": valid_split}


def run(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The `make_demo_data` stage: build the spec from the config, generate, say where the data went."""
    if cfg["dataset"]["name"] != "demo":
        raise ValueError(f"make_demo_data writes the demo data set, but dataset={cfg['dataset']['name']}: "
                         f"drop the dataset override (the data goes to dataset=demo's root)")
    spec = DemoSpec.from_config(cfg)
    dataset = cfg["dataset"]
    result = generate(dataset["root"], spec, dataset["videos"], dataset["splits"]["train"],
                      dataset["splits"]["valid"], overwrite=bool(cfg["overwrite"]))
    done = Outcomes("make_demo_data", per_item=False)
    done.add(written=result["written"], skipped=result["skipped"])
    done.finish()
    say(f"  {spec.num_classes} classes x {spec.clips_per_class} clips of {spec.seconds:g} s\n"
        f"  videos: {Path(result['videos']).resolve()}\n"
        f"  splits: {Path(result['train']).resolve()}, {Path(result['valid']).resolve()}\n"
        f"  about:  {(Path(result['root']) / 'README.md').resolve()}")
    return result
