"""The neural audio codec of the paper's demo (spec §9.3): audio -> codebook indices in a compact file -> audio.

Encoding: decode any audio file at 22050 Hz mono, take the original's mel (80 bins, hop 256), map it to [-1, 1]
and cut it into consecutive windows of `window_frames` (848 = the training crop) mel frames; each window becomes
a 5 x 53 grid of codes. The last window is padded with silence (0 in the [0, 1] mel) to a multiple of 16 frames
(or to the whole window with `full_last_window`), and the true sample count is recorded so decoding returns
exactly the input's duration. Decoding looks the codes up, runs the decoder and a vocoder (MelGAN, or
Griffin-Lim without one).

File layout (little-endian), header then payload:
    magic b"SVQC" | version u8 | flags u8 (bit 0: full_last_window) | bits per code u8 | reserved u8 |
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

log = logging.getLogger(__name__)

MAGIC = b"SVQC"
VERSION = 1
SR = 22050   # the codebook's (and vocoder's) sample rate
HOP = 256    # samples per mel frame
_HEADER = struct.Struct("<4sBBBB32sIHHHHIQI")
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

    def to_bytes(self) -> bytes:
        return _HEADER.pack(MAGIC, VERSION, int(self.full_last_window), self.bits, 0, self.identity, self.n_embed,
                            self.n_mels, self.window_frames, self.grid_f, self.grid_t, self.sample_rate,
                            self.n_samples, self.n_tokens)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "input") -> Header:
        if len(data) < _HEADER.size or data[:4] != MAGIC:
            raise CodecError(f"{source} is not a SpecVQGAN codec file (no {MAGIC!r} header); "
                             f"encode audio with `mode=encode` first")
        (_, version, flags, bits, _, identity, n_embed, n_mels, window_frames, grid_f, grid_t, sample_rate,
         n_samples, n_tokens) = _HEADER.unpack_from(data)
        if version != VERSION:
            raise CodecError(f"{source} has codec version {version}; this code reads version {VERSION}")
        return cls(bits, identity, n_embed, n_mels, window_frames, grid_f, grid_t, sample_rate, n_samples,
                   n_tokens, bool(flags & 1))

    @property
    def factor(self) -> int:
        """Mel frames per code column."""
        return self.window_frames // self.grid_t


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


def window_widths(n_samples: int, window_frames: int, factor: int, full_last_window: bool) -> list[int]:
    """Mel frames of each window: full windows, then the remainder rounded up to `factor` (or a full window)."""
    frames = max(1, math.ceil(n_samples / HOP))  # frames needed to cover every sample
    full, rest = divmod(frames, window_frames)
    widths = [window_frames] * full
    if rest:
        widths.append(window_frames if full_last_window else factor * math.ceil(rest / factor))
    return widths


@dataclass
class Report:
    """What one encode or decode did; `bitrate_kbps` counts payload bits only, `file_kbps` the whole file."""
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

    def as_dict(self) -> dict:
        return asdict(self)


def _report(inp, out, header: Header, windows: int, file_bytes: int) -> Report:
    seconds = header.n_samples / header.sample_rate
    payload = header.n_tokens * header.bits
    return Report(str(inp), str(out), seconds, header.n_samples, windows, header.n_tokens, header.bits, payload,
                  payload / seconds / 1000, file_bytes, file_bytes * 8 / seconds / 1000)


def _device(model: VQModel) -> torch.device:
    return model.quantize.embedding.weight.device


@torch.no_grad()
def encode_wave(model: VQModel, wave: np.ndarray, window_frames: int = 848, batch_size: int = 4,
                full_last_window: bool = False, identity: bytes | None = None) -> tuple[bytes, Header]:
    """A mono 22050 Hz waveform -> (codec file bytes, header)."""
    from pipeline.mel import mel_spectrogram

    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if wave.size == 0:
        raise ValueError("cannot encode an empty waveform")
    factor = model.downsample_factor
    if window_frames % factor:
        raise ValueError(f"window_frames {window_frames} must be a multiple of the codebook's {factor}")
    mel = mel_spectrogram(wave)  # (80, 1 + n // 256) in [0, 1]
    n_mels = mel.shape[0]
    widths = window_widths(wave.size, window_frames, factor, full_last_window)
    padded = np.zeros((n_mels, sum(widths)), dtype=np.float32)  # 0 = silence in the [0, 1] mel
    used = min(math.ceil(wave.size / HOP), mel.shape[1])  # the frames that cover real samples
    padded[:, :used] = mel[:, :used]
    x = torch.from_numpy(padded * 2 - 1)  # [-1, 1], the model's domain
    codes: list[np.ndarray] = []
    starts = np.cumsum([0] + widths[:-1])
    device = _device(model)
    # full windows share a shape and go in batches; the shorter last one goes alone
    groups: list[list[int]] = []
    for i, w in enumerate(widths):
        if groups and len(groups[-1]) < batch_size and widths[groups[-1][0]] == w:
            groups[-1].append(i)
        else:
            groups.append([i])
    for group in groups:
        w = widths[group[0]]
        batch = torch.stack([x[:, starts[i]:starts[i] + w] for i in group]).unsqueeze(1)  # (b, 1, 80, w)
        idx = model.encode_indices(batch.to(device))  # (b, F', w / factor)
        codes.extend(idx.cpu().numpy().reshape(len(group), -1))  # raster order per window
    flat = np.concatenate(codes)
    grid_f, grid_t = model.grid(n_mels, window_frames)
    header = Header(bits_per_code(model.n_embed), identity if identity is not None else codebook_identity(model),
                    model.n_embed, n_mels, window_frames, grid_f, grid_t, SR, int(wave.size), int(flat.size),
                    full_last_window)
    return header.to_bytes() + pack_codes(flat, header.bits), header


def read_codes(data: bytes, source: str = "input") -> tuple[Header, list[np.ndarray]]:
    """Codec file bytes -> (header, one (grid_f, width) int64 array per window)."""
    header = Header.from_bytes(data, source)
    flat = unpack_codes(data[_HEADER.size:], header.n_tokens, header.bits)
    widths = window_widths(header.n_samples, header.window_frames, header.factor, header.full_last_window)
    sizes = [header.grid_f * (w // header.factor) for w in widths]
    if sum(sizes) != header.n_tokens:
        raise CodecError(f"{source}: header says {header.n_tokens} codes, its length implies {sum(sizes)}")
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


@torch.no_grad()
def decode_codes(model: VQModel, header: Header, windows: list[np.ndarray], vocoder, batch_size: int = 4
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Codes -> ([0, 1] mel (80, frames), waveform float32 of exactly header.n_samples samples)."""
    from pipeline.audio import fit_to_length

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
        mels.extend(((rec[:, 0] + 1) / 2).float().cpu().numpy())
        i += len(group)
    mel = np.concatenate(mels, axis=1)  # (80, sum of widths)
    frames = math.ceil(header.n_samples / HOP)
    mel = mel[:, :max(frames, 1)]
    wave = np.asarray(vocoder(mel), dtype=np.float32).reshape(-1)
    return mel, fit_to_length(wave, header.n_samples)


def encode_file(model: VQModel, inp: str | os.PathLike, out: str | os.PathLike, **kwargs) -> Report:
    """Any audio file -> codec file (written atomically)."""
    from pipeline.audio import load_audio
    from pipeline.io import save_bytes

    wave = load_audio(inp, sr=SR)
    data, header = encode_wave(model, wave, **kwargs)
    save_bytes(out, data)
    windows = len(window_widths(header.n_samples, header.window_frames, header.factor, header.full_last_window))
    return _report(inp, out, header, windows, len(data))


def decode_file(model: VQModel, inp: str | os.PathLike, out: str | os.PathLike, vocoder,
                batch_size: int = 4, identity: bytes | None = None) -> Report:
    """Codec file -> 22050 Hz wav (PCM 16, written atomically); refuses files of another codebook."""
    from pipeline.audio import save_wav

    data = Path(inp).read_bytes()
    header, windows = read_codes(data, str(inp))
    check_codebook(header, model, str(inp), identity)
    _, wave = decode_codes(model, header, windows, vocoder, batch_size)
    save_wav(out, np.clip(wave, -1, 1), header.sample_rate, subtype="PCM_16")
    return _report(inp, out, header, len(windows), len(data))


def _pairs(inp: Path, out: Path, mode: str) -> list[tuple[Path, Path]]:
    """(input, output) files: one file, or every matching file of a folder into an output folder."""
    if not inp.exists():
        raise FileNotFoundError(f"codec input {inp} does not exist")
    if inp.is_file():
        return [(inp, out)]
    if mode == "encode":
        files = sorted(p for p in inp.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        return [(p, out / p.relative_to(inp).with_suffix(".svqc")) for p in files]
    return [(p, out / p.relative_to(inp).with_suffix(".wav")) for p in sorted(inp.rglob("*.svqc"))]


def run(cfg, run_dir: str | os.PathLike | None = None) -> list[Report]:
    """The codec stage: `mode` encode or decode, `input` a file or folder, `output` a file or folder."""
    from pipeline.io import save_json

    if cfg.mode not in ("encode", "decode"):
        raise ValueError(f"mode must be 'encode' or 'decode', not {cfg.mode!r}")
    if run_dir is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            run_dir = HydraConfig.get().runtime.output_dir
        except ValueError:  # not under @hydra.main
            run_dir = None
    torch.set_num_threads(max(1, int(cfg.get("num_threads") or torch.get_num_threads())))
    device = cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    from pipeline.pretrained import load_codebook

    model = load_codebook(cfg.codebook.ckpt, map_location=device)
    identity = codebook_identity(model)
    vocoder = None
    if cfg.mode == "decode":
        from pipeline.vocoder import load_vocoder_or_griffinlim

        vocoder = load_vocoder_or_griffinlim(cfg.vocoder.ckpt, device=device)
    reports = []
    for inp, out in _pairs(Path(cfg.input), Path(cfg.output), cfg.mode):
        if cfg.mode == "encode":
            r = encode_file(model, inp, out, window_frames=int(cfg.window_frames), batch_size=int(cfg.batch_size),
                            full_last_window=bool(cfg.full_last_window), identity=identity)
        else:
            r = decode_file(model, inp, out, vocoder, batch_size=int(cfg.batch_size), identity=identity)
        log.info("%s %s -> %s: %.2f s, %d tokens x %d bits = %.3f kbps payload, file %d bytes (%.3f kbps)",
                 cfg.mode, inp, out, r.seconds, r.tokens, r.bits_per_code, r.bitrate_kbps, r.file_bytes,
                 r.file_kbps)
        print(f"{cfg.mode}: {inp} -> {out}  {r.seconds:.2f} s, {r.tokens} tokens x {r.bits_per_code} bits = "
              f"{r.bitrate_kbps:.3f} kbps (file {r.file_bytes} B = {r.file_kbps:.3f} kbps)", flush=True)
        reports.append(r)
    if not reports:
        raise FileNotFoundError(f"no {'audio' if cfg.mode == 'encode' else '.svqc'} files under {cfg.input}")
    if run_dir is not None:
        save_json(Path(run_dir) / "codec_report.json", [r.as_dict() for r in reports])
    return reports
