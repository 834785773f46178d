"""The neural audio codec of the paper's demo (spec §9.3): audio -> codebook indices in a compact file -> audio.

Input: any audio file (wav, flac, mp3, the sound of a video...) at any sample rate, channel count and length:
decoded at its own rate, down-mixed to mono (the mean of the channels) and resampled to 22050 Hz with soxr
(`read_audio`). Encoding takes the original's mel (80 bins, hop 256), maps it to [-1, 1] and cuts it into
windows of `window_frames` (848 = the training crop) mel frames, consecutive windows overlapping by
`overlap_frames` (a multiple of the codebook's 16-frame columns); each full window becomes a 5 x 53 grid of codes.
The last window is padded with silence (0 in the [0, 1] mel) to a multiple of 16 frames (or to the whole window
with `full_last_window`), and the true sample count is recorded so decoding returns exactly the input's duration.
Decoding looks the codes up, runs the decoder on each window, joins the windows' mels by overlap-add with a
linear crossfade over each overlap (the weights sum to 1; no click where one window meets the next) and runs a
vocoder once over the joined mel (MelGAN, or Griffin-Lim without one).

File layout (little-endian), header then payload:
    magic b"SVQC" | version u8 | flags u8 (bit 0: full_last_window) | bits per code u8 |
    overlap u8 (code columns shared by consecutive windows; version 1 files: 0) |
    codebook identity (sha256 of the codebook model's weights) 32 bytes | n_embed u32 |
    n_mels u16 | window_frames u16 | grid_f u16 | grid_t u16 (codes per full window) | sample_rate u32 |
    n_samples u64 | n_tokens u32 | payload: n_tokens codes of `bits` bits each, MSB first, packed into bytes.
Tokens are stored window after window, each window in raster order (f * width + t).
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from models.vqgan import VQModel
from pipeline.files.writes import save_bytes
from pipeline.media.audio import SR, fit_to_length, load_audio, save_wav, source_rate
from pipeline.media.mel import CROP_LEN, HOP, N_FFT, N_MELS, mel_spectrogram, unit_mel

log = logging.getLogger(__name__)

MAGIC = b"SVQC"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no overlap byte (always 0 there)
DEFAULT_OVERLAP_FRAMES = 96  # mel frames shared by consecutive windows (6 code columns, 1.1 s): crossfade_weights
_HEADER = struct.Struct("<4sBBBB32sIHHHHIQI")
MAX_CODES = 1 << 16  # the most codes a codebook may have (the paper's: 128 and 1024); bounds bits per code to 16
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus", ".mp4", ".mkv", ".webm")


class CodecError(ValueError):
    """A codec file that cannot be decoded here (not ours, damaged, or made by another codebook)."""


@dataclass
class Header:
    bits: int
    identity: bytes
    n_embed: int
    n_mels: int
    window_frames: int
    grid_f: int
    grid_t: int
    sample_rate: int
    n_samples: int
    n_tokens: int
    full_last_window: bool = False
    overlap_columns: int = 0

    def to_bytes(self) -> bytes:
        return _HEADER.pack(MAGIC, VERSION, int(self.full_last_window), self.bits, self.overlap_columns,
                            self.identity, self.n_embed,
                            self.n_mels, self.window_frames, self.grid_f, self.grid_t, self.sample_rate,
                            self.n_samples, self.n_tokens)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "input") -> Header:
        """The header of a codec file's bytes, every field checked against the others and against the file's size
        (`check_fields`) before anything is allocated from it."""
        if len(data) < _HEADER.size or data[:4] != MAGIC:
            raise CodecError(f"{source} is not a SpecVQGAN codec file (no {MAGIC!r} header); "
                             f"encode audio with `mode=encode` first")
        (_, version, flags, bits, overlap, identity, n_embed, n_mels, window_frames, grid_f, grid_t, sample_rate,
         n_samples, n_tokens) = _HEADER.unpack_from(data)
        if version not in READABLE_VERSIONS:
            raise CodecError(f"{source} has codec version {version}; this code reads versions {READABLE_VERSIONS}")
        header = cls(bits, identity, n_embed, n_mels, window_frames, grid_f, grid_t, sample_rate, n_samples,
                     n_tokens, bool(flags & 1), overlap if version >= 2 else 0)
        header.check_fields(len(data) - _HEADER.size, source)
        return header

    def check_fields(self, payload_bytes: int, source: str = "input") -> None:
        """Refuse a damaged or crafted header, naming the field: each count within what the others and the
        `payload_bytes` after the header allow, so that decoding allocates no more than the file's size implies
        (at most `window_frames * HOP` samples per code column the payload holds)."""

        def bad(field: str, value, allowed: str) -> CodecError:
            return CodecError(f"{source}: damaged codec header: {field}={value}, {allowed}")

        if not 1 <= self.n_embed <= MAX_CODES:
            raise bad("n_embed", self.n_embed, f"a codebook has 1 to {MAX_CODES} codes")
        if self.bits != bits_per_code(self.n_embed):
            raise bad("bits_per_code", self.bits, f"{self.n_embed} codes take {bits_per_code(self.n_embed)} bits")
        if self.sample_rate != SR:
            raise bad("sample_rate", self.sample_rate, f"the codec decodes at {SR} Hz only")
        for field in ("n_mels", "window_frames", "grid_f", "grid_t"):
            if getattr(self, field) < 1:
                raise bad(field, getattr(self, field), "it must be at least 1")
        if self.grid_f > self.n_mels or self.n_mels % self.grid_f:
            raise bad("grid_f", self.grid_f, f"it must divide n_mels={self.n_mels}")
        if self.grid_t > self.window_frames or self.window_frames % self.grid_t:
            raise bad("grid_t", self.grid_t, f"it must divide window_frames={self.window_frames}")
        if not 2 * self.overlap_columns * self.factor < self.window_frames:
            raise bad("overlap", self.overlap_columns, f"shared columns must stay below half of the window's "
                                                       f"{self.grid_t}")
        expected = math.ceil(self.n_tokens * self.bits / 8)
        if payload_bytes != expected:
            raise bad("n_tokens", self.n_tokens, f"{self.n_tokens} codes of {self.bits} bits take {expected} bytes "
                                                 f"but the file holds {payload_bytes} after its header (truncated?)")
        columns = self.n_tokens // self.grid_f  # every window is grid_f codes tall
        if not 1 <= self.n_samples <= columns * self.factor * HOP:
            raise bad("n_samples", self.n_samples, f"{self.n_tokens} codes cover 1 to "
                                                   f"{columns * self.factor * HOP} samples")

    @property
    def factor(self) -> int:
        """Mel frames per code column."""
        return self.window_frames // self.grid_t

    def layout(self) -> list[tuple[int, int]]:
        """(first mel frame, width) of every window."""
        return window_layout(self.n_samples, self.window_frames, self.factor, self.full_last_window,
                             self.overlap_columns * self.factor)


def bits_per_code(n_embed: int) -> int:
    """ceil(log2 n_embed): 7 for VAS's 128 codes, 10 for VGGSound's 1024."""
    return max(1, math.ceil(math.log2(n_embed)))


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Non-negative ints < 2**bits -> `bits` bits each, most significant first, packed into bytes."""
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    if codes.size and (codes.min() < 0 or codes.max() >= 2 ** bits):
        raise ValueError(f"codes must lie in [0, {2 ** bits}) to pack them in {bits} bits")
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    matrix = ((codes[:, None] >> shifts) & 1).astype(np.uint8)  # (N, bits)
    return np.packbits(matrix.reshape(-1)).tobytes()


def unpack_codes(data: bytes, n: int, bits: int) -> np.ndarray:
    """The inverse of `pack_codes`: (n,) int64."""
    if len(data) * 8 < n * bits:
        raise CodecError(f"payload holds {len(data) * 8} bits, {n * bits} needed: the file is truncated")
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: n * bits].reshape(n, bits).astype(np.int64)
    return flat @ (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))


def codebook_identity(model: VQModel) -> bytes:
    """sha256 over the codebook model's weights (keys sorted, loss.* excluded), n_embed and the code grid."""
    h = hashlib.sha256()
    h.update(f"n_embed={model.n_embed};factor={model.downsample_factor}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("loss."):
            continue
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.digest()


def window_layout(n_samples: int, window_frames: int, factor: int, full_last_window: bool,
                  overlap_frames: int = 0) -> list[tuple[int, int]]:
    """(first mel frame, width) of each window: full windows every `window_frames - overlap_frames` frames
    while one does not reach the end, then the rest rounded up to `factor` (or a full window). The last window
    always brings more than `overlap_frames` new frames."""
    if overlap_frames % factor or not 0 <= overlap_frames < window_frames // 2:
        raise ValueError(f"overlap_frames={overlap_frames} must be a multiple of the codebook's {factor} frames "
                         f"and below half of window_frames={window_frames}")
    frames = max(1, math.ceil(n_samples / HOP))  # frames needed to cover every sample
    hop = window_frames - overlap_frames
    layout, start = [], 0
    while start + window_frames < frames:
        layout.append((start, window_frames))
        start += hop
    rest = frames - start
    layout.append((start, window_frames if full_last_window else factor * math.ceil(rest / factor)))
    return layout


def crossfade_weights(overlap: int) -> np.ndarray:
    """The later window's weights over an overlap of `overlap` frames (the earlier one's are 1 minus them): 0 over
    the first quarter (the later window's own edge, where its decoder sees padding), a linear ramp over the middle
    half, 1 over the last quarter (the earlier window's edge)."""
    guard = overlap // 4
    ramp = overlap - 2 * guard
    return np.concatenate([np.zeros(guard), (np.arange(ramp) + 0.5) / ramp, np.ones(guard)]).astype(np.float32)


def crossfade_join(mels: list[np.ndarray], layout: list[tuple[int, int]]) -> np.ndarray:
    """Overlap-add of the windows' (n_mels, width) mels at their starts, crossfaded where two windows overlap
    (`crossfade_weights`; the weights sum to 1 at every frame)."""
    end = max(s + w for s, w in layout)
    out = np.zeros((mels[0].shape[0], end), dtype=np.float32)
    for i, (mel, (start, width)) in enumerate(zip(mels, layout)):
        weight = np.ones(width, dtype=np.float32)
        if i > 0:
            overlap = layout[i - 1][0] + layout[i - 1][1] - start
            weight[:overlap] = crossfade_weights(overlap)
        if i + 1 < len(layout):
            overlap = start + width - layout[i + 1][0]
            weight[width - overlap:] = 1 - crossfade_weights(overlap)
        out[:, start:start + width] += mel[:, :width] * weight
    return out


# ------------------------------------------------------------------------------------------------ input
@dataclass
class Source:
    """The input as it was: its sample rate, channels and length (for the compression ratio)."""
    sample_rate: int
    channels: int
    n_samples: int

    @property
    def pcm16_bits(self) -> int:
        """Its size as 16-bit PCM at its own rate and channel count."""
        return self.n_samples * self.channels * 16


def to_codec_rate(wave: np.ndarray, sr: int) -> np.ndarray:
    """(samples,) or (channels, samples) at `sr` -> mono float32 at 22050 Hz: the mean of the channels,
    resampled with soxr (its very-high-quality setting)."""
    import soxr

    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=0)
    elif wave.ndim != 1:
        raise ValueError(f"audio must be (samples,) or (channels, samples), got shape {wave.shape}")
    if wave.size == 0:
        raise ValueError("cannot encode an empty waveform")
    if int(sr) == SR:
        return np.ascontiguousarray(wave)
    return soxr.resample(wave, int(sr), SR, quality="VHQ").astype(np.float32, copy=False)


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, Source]:
    """Any audio file -> (mono float32 at 22050 Hz, its `Source`); errors name the file."""

    rate = source_rate(path)
    wave = load_audio(path, sr=rate, mono=False)  # (channels, samples) at its own rate: nothing resampled
    if wave.shape[1] == 0:
        raise ValueError(f"{path} holds no audio samples")
    return to_codec_rate(wave, rate), Source(rate, wave.shape[0], wave.shape[1])


@dataclass
class Report:
    """What one encode, decode or round trip did. `bitrate_kbps` counts payload bits only, `file_kbps` the whole
    file; `compression_ratio` is the input as 16-bit PCM at its own rate and channels (decode: the 22050 Hz mono
    output) over the file's bits.

    A round trip adds measures a listener can read, all in dB between the input and what came back:
    `mel_distance_db`, the mean |difference| of the log-mel spectrograms (the original's 80-bin mel, through the
    vocoder; `mel_l1` is the same on the [0, 1] scale, 100 dB wide), `codes_mel_distance_db` the same for the
    decoder's mel before the vocoder (what the codes keep), and `lsd_db`, the log-spectral distance of the
    513-bin power spectra (per frame the RMS over frequency of the dB difference, averaged over frames). No sample
    SNR: the decoder generates its waveform from a mel, which keeps no phase, so its output is not sample-aligned
    with the input and an SNR is about 0 dB for a perfect-sounding result as for noise (`SNR_NOTE`)."""
    input: str
    output: str
    seconds: float
    n_samples: int
    windows: int
    tokens: int
    bits_per_code: int
    payload_bits: int
    bitrate_kbps: float
    file_bytes: int
    file_kbps: float
    source_rate: int
    source_channels: int
    compression_ratio: float
    overlap_frames: int = 0
    mel_l1: float | None = None
    mel_distance_db: float | None = None
    codes_mel_distance_db: float | None = None
    lsd_db: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        line = (f"{self.seconds:.2f} s ({self.source_rate} Hz, {self.source_channels} ch), {self.windows} window(s), "
                f"{self.tokens} tokens x {self.bits_per_code} bits = {self.bitrate_kbps:.3f} kbps (file "
                f"{self.file_bytes} B = {self.file_kbps:.3f} kbps), compression {self.compression_ratio:.0f}:1")
        if self.mel_distance_db is not None:
            line += (f"; round trip: mel distance {self.mel_distance_db:.1f} dB (codes alone "
                     f"{self.codes_mel_distance_db:.1f} dB), log-spectral distance {self.lsd_db:.1f} dB")
        return line


SNR_NOTE = ("mel distance: mean |difference| of the log-mel spectrograms; log-spectral distance: the same over the "
            "full spectrum (lower is closer, 0 dB identical). No waveform SNR: the decoder makes its own phase, so "
            "its output is not sample-aligned with the input and SNR reads about 0 dB however good it sounds.")


def _report(inp, out, header: Header, file_bytes: int, source: Source | None = None) -> Report:
    seconds = header.n_samples / header.sample_rate
    payload = header.n_tokens * header.bits
    source = source or Source(header.sample_rate, 1, header.n_samples)
    return Report(str(inp), str(out), seconds, header.n_samples, len(header.layout()), header.n_tokens, header.bits,
                  payload, payload / seconds / 1000, file_bytes, file_bytes * 8 / seconds / 1000, source.sample_rate,
                  source.channels, source.pcm16_bits / (file_bytes * 8), header.overlap_columns * header.factor)


MEL_DB_RANGE = 100.0  # dB spanned by the original's [0, 1] mel (pipeline.media.mel.mel_spectrogram)
LSD_RANGE_DB = 80.0  # power spectra are floored this far below the input's loudest bin: silence and dither are not -inf


def log_power_db(wave: np.ndarray) -> np.ndarray:
    """10 log10 of the STFT power (n_fft 1024, hop 256, reflect-padded: the mel's frames): (513, frames)."""
    import librosa

    stft = librosa.stft(np.asarray(wave, dtype=np.float32), n_fft=N_FFT, hop_length=HOP, window="hann",
                        center=True, pad_mode="reflect")
    return 10 * np.log10(np.maximum(np.abs(stft) ** 2, 1e-30))


def log_spectral_distance(reference: np.ndarray, decoded: np.ndarray) -> float:
    """The log-spectral distance in dB: per frame, the RMS over frequency bins of the dB difference of the power
    spectra (both floored LSD_RANGE_DB below the reference's loudest bin); the mean over frames. Phase-blind, so it
    judges a generative decoder by what is heard."""
    ref, out = log_power_db(reference), log_power_db(decoded)
    floor = ref.max() - LSD_RANGE_DB
    frames = min(ref.shape[1], out.shape[1])
    diff = np.maximum(ref[:, :frames], floor) - np.maximum(out[:, :frames], floor)
    return float(np.sqrt((diff ** 2).mean(axis=0)).mean())


def round_trip_measures(reference: np.ndarray, decoded: np.ndarray, decoded_mel: np.ndarray | None = None
                        ) -> dict[str, float]:
    """mel_l1 and mel_distance_db (the decoded wave's mel against the input's), codes_mel_distance_db (with
    `decoded_mel`: the decoder's mel before the vocoder) and lsd_db of a decoded 22050 Hz wave against its input."""

    n = min(reference.size, decoded.size)
    ref_mel = mel_spectrogram(reference[:n])
    frames = min(ref_mel.shape[1], math.ceil(n / HOP))
    out_mel = mel_spectrogram(decoded[:n])
    mel_l1 = float(np.abs(ref_mel[:, :frames] - out_mel[:, :frames]).mean())
    measures = {"mel_l1": mel_l1, "mel_distance_db": MEL_DB_RANGE * mel_l1}
    if decoded_mel is not None:
        measures["codes_mel_distance_db"] = MEL_DB_RANGE * float(
            np.abs(ref_mel[:, :frames] - decoded_mel[:, :frames]).mean())
    measures["lsd_db"] = log_spectral_distance(reference[:n], decoded[:n])
    return measures


def _device(model: VQModel) -> torch.device:
    return model.quantize.embedding.weight.device


@torch.no_grad()
def encode_wave(model: VQModel, wave: np.ndarray, window_frames: int = CROP_LEN, batch_size: int = 4,
                full_last_window: bool = False, identity: bytes | None = None,
                overlap_frames: int = DEFAULT_OVERLAP_FRAMES) -> tuple[bytes, Header]:
    """A mono 22050 Hz waveform -> (codec file bytes, header)."""

    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if wave.size == 0:
        raise ValueError("cannot encode an empty waveform")
    factor = model.downsample_factor
    if window_frames % factor:
        raise ValueError(f"window_frames {window_frames} must be a multiple of the codebook's {factor}")
    mel = mel_spectrogram(wave)  # (80, 1 + n // 256) in [0, 1]
    n_mels = mel.shape[0]
    layout = window_layout(wave.size, window_frames, factor, full_last_window, overlap_frames)
    padded = np.zeros((n_mels, max(s + w for s, w in layout)), dtype=np.float32)  # 0 = silence in the [0, 1] mel
    used = min(math.ceil(wave.size / HOP), mel.shape[1])  # the frames that cover real samples
    padded[:, :used] = mel[:, :used]
    x = torch.from_numpy(padded * 2 - 1)  # [-1, 1], the model's domain
    codes: list[np.ndarray] = []
    device = _device(model)
    # full windows share a shape and go in batches; the shorter last one goes alone
    groups: list[list[int]] = []
    for i, (_, w) in enumerate(layout):
        if groups and len(groups[-1]) < batch_size and layout[groups[-1][0]][1] == w:
            groups[-1].append(i)
        else:
            groups.append([i])
    for group in groups:
        w = layout[group[0]][1]
        batch = torch.stack([x[:, layout[i][0]:layout[i][0] + w] for i in group]).unsqueeze(1)  # (b, 1, 80, w)
        idx = model.encode_indices(batch.to(device))  # (b, F', w / factor)
        codes.extend(idx.cpu().numpy().reshape(len(group), -1))  # raster order per window
    flat = np.concatenate(codes)
    grid_f, grid_t = model.grid(n_mels, window_frames)
    header = Header(bits_per_code(model.n_embed), identity if identity is not None else codebook_identity(model),
                    model.n_embed, n_mels, window_frames, grid_f, grid_t, SR, int(wave.size), int(flat.size),
                    full_last_window, overlap_frames // factor)
    return header.to_bytes() + pack_codes(flat, header.bits), header


def read_codes(data: bytes, source: str = "input") -> tuple[Header, list[np.ndarray]]:
    """Codec file bytes -> (header, one (grid_f, width) int64 array per window). Every header field is checked
    before anything is allocated from it (`Header.check_fields`), and every code against the codebook's size."""
    header = Header.from_bytes(data, source)
    try:
        widths = [w for _, w in header.layout()]
    except ValueError as error:
        raise CodecError(f"{source}: damaged header ({error})") from None
    sizes = [header.grid_f * (w // header.factor) for w in widths]
    if sum(sizes) != header.n_tokens:
        raise CodecError(f"{source}: damaged codec header: n_tokens={header.n_tokens}, but n_samples="
                         f"{header.n_samples} in windows of {header.window_frames} frames imply {sum(sizes)} codes")
    flat = unpack_codes(data[_HEADER.size:], header.n_tokens, header.bits)
    beyond = np.flatnonzero(flat >= header.n_embed)
    if beyond.size:
        raise CodecError(f"{source}: damaged codes: {beyond.size} code(s) beyond the codebook's {header.n_embed} "
                         f"(the first, {int(flat[beyond[0]])}, at position {int(beyond[0])})")
    out, start = [], 0
    for w, n in zip(widths, sizes):
        out.append(flat[start:start + n].reshape(header.grid_f, w // header.factor))
        start += n
    return header, out


def check_codebook(header: Header, model: VQModel, source: str = "input", identity: bytes | None = None) -> None:
    """Refuse a file made by another codebook."""
    identity = identity if identity is not None else codebook_identity(model)
    if header.identity != identity or header.n_embed != model.n_embed:
        raise CodecError(f"{source} was made by another codebook (identity {header.identity.hex()[:16]}..., "
                         f"{header.n_embed} codes); the loaded one is {identity.hex()[:16]}... with "
                         f"{model.n_embed} codes: decode with the codebook.ckpt that encoded it")
    grid = model.grid(header.n_mels, header.window_frames)
    if header.n_mels != N_MELS or header.factor != model.downsample_factor or grid != (header.grid_f, header.grid_t):
        raise CodecError(f"{source}: damaged codec header: n_mels={header.n_mels}, window_frames="
                         f"{header.window_frames}, grid {header.grid_f} x {header.grid_t}; the codebook decodes "
                         f"{N_MELS} mel bins into a grid of 1/{model.downsample_factor} of them")


@torch.no_grad()
def decode_codes(model: VQModel, header: Header, windows: list[np.ndarray], vocoder, batch_size: int = 4
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Codes -> ([0, 1] mel (80, frames), waveform float32 of exactly header.n_samples samples)."""

    device = _device(model)
    mels: list[np.ndarray] = []
    i = 0
    while i < len(windows):
        group = [windows[i]]
        while len(group) < batch_size and i + len(group) < len(windows) and \
                windows[i + len(group)].shape == windows[i].shape:
            group.append(windows[i + len(group)])
        idx = torch.from_numpy(np.stack(group)).to(device)  # (b, F', T')
        rec = model.decode_code(idx).clamp(-1, 1)  # (b, 1, 80, 16 T'); clamped as the original's logger
        mels.extend(unit_mel(rec[:, 0]).float().cpu().numpy())
        i += len(group)
    mel = crossfade_join(mels, header.layout())  # (80, frames of the padded input)
    frames = math.ceil(header.n_samples / HOP)
    mel = mel[:, :max(frames, 1)]
    wave = np.asarray(vocoder(mel), dtype=np.float32).reshape(-1)
    return mel, fit_to_length(wave, header.n_samples)


def encode_file(model: VQModel, inp: str | os.PathLike, out: str | os.PathLike, **kwargs) -> Report:
    """Any audio file -> codec file (written atomically)."""

    wave, source = read_audio(inp)
    data, header = encode_wave(model, wave, **kwargs)
    save_bytes(out, data)
    return _report(inp, out, header, len(data), source)


def decode_file(model: VQModel, inp: str | os.PathLike, out: str | os.PathLike, vocoder,
                batch_size: int = 4, identity: bytes | None = None) -> Report:
    """Codec file -> 22050 Hz wav (PCM 16, written atomically); refuses files of another codebook."""

    data = Path(inp).read_bytes()
    header, windows = read_codes(data, str(inp))
    check_codebook(header, model, str(inp), identity)
    _, wave = decode_codes(model, header, windows, vocoder, batch_size)
    save_wav(out, np.clip(wave, -1, 1), header.sample_rate, subtype="PCM_16")
    return _report(inp, out, header, len(data))


def round_trip_file(model: VQModel, inp: str | os.PathLike, out: str | os.PathLike, vocoder, batch_size: int = 4,
                    identity: bytes | None = None, **kwargs) -> Report:
    """Any audio file -> `<out>.svqc` and `<out>.wav` (its decoding), with the round trip's measures."""

    out = Path(out)
    wave, source = read_audio(inp)
    data, header = encode_wave(model, wave, batch_size=batch_size, identity=identity, **kwargs)
    save_bytes(out.with_suffix(".svqc"), data)
    header, windows = read_codes(data, str(out.with_suffix(".svqc")))  # decode what was written, bit for bit
    mel, decoded = decode_codes(model, header, windows, vocoder, batch_size)
    decoded = np.clip(decoded, -1, 1)
    save_wav(out.with_suffix(".wav"), decoded, header.sample_rate, subtype="PCM_16")
    report = _report(inp, out.with_suffix(".wav"), header, len(data), source)
    for key, value in round_trip_measures(wave, decoded, mel).items():
        setattr(report, key, value)
    return report
