"""The neural audio codec on the real clips of the paper's demo, with a tiny random codebook."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipeline.audio import load_audio
from pipeline.codec import (
    CodecError,
    Header,
    bits_per_code,
    check_codebook,
    codebook_identity,
    decode_file,
    encode_file,
    pack_codes,
    read_codes,
    run,
    unpack_codes,
)
from pipeline.mel import mel_spectrogram
from pipeline.pretrained.codebook import build_codebook, codebook_checkpoint, load_codebook
from pipeline.vocoder import Vocoder

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ["noisy_speech2", "music1"]  # speech and music; the other clips go through the other tests


def _save_tiny(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = build_codebook(OmegaConf.load(ROOT / "conf" / "codebook" / "tiny.yaml").model)
    torch.save(codebook_checkpoint(model), path)
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("codebook") / "last.pt", seed=0)


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    return load_codebook(tiny_ckpt)


@pytest.fixture(scope="module")
def fast_vocoder():
    return Vocoder(None, n_iter=2)  # Griffin-Lim with 2 iterations: lengths, not quality


@pytest.mark.parametrize("bits", [1, 5, 7, 10, 11])
def test_pack_unpack_round_trip(bits):
    codes = np.random.default_rng(bits).integers(0, 2 ** bits, size=1001)
    data = pack_codes(codes, bits)
    assert len(data) == math.ceil(1001 * bits / 8)
    assert np.array_equal(unpack_codes(data, 1001, bits), codes)
    with pytest.raises(ValueError, match="codes must lie"):
        pack_codes(np.array([2 ** bits]), bits)


def test_bits_per_code_of_the_paper_codebooks():
    assert (bits_per_code(128), bits_per_code(1024), bits_per_code(32), bits_per_code(1000)) == (7, 10, 5, 10)


@pytest.mark.parametrize("clip", CLIPS)
def test_round_trip_on_real_clips(shared_dir, model, fast_vocoder, tmp_path, clip):
    src = shared_dir / "data" / "neural_audio_codec" / clip / "original.wav"
    info = soundfile.info(str(src))
    assert info.samplerate == 24000
    report = encode_file(model, src, tmp_path / "x.svqc")
    header, windows = read_codes((tmp_path / "x.svqc").read_bytes())
    # the file holds exactly the model's codes for the (padded) mel
    wave = load_audio(src, sr=22050)
    frames = math.ceil(wave.size / 256)
    width = 16 * math.ceil(frames / 16)
    mel = np.zeros((80, width), dtype=np.float32)
    mel[:, :frames] = mel_spectrogram(wave)[:, :frames]
    with torch.no_grad():
        expected = model.encode_indices(torch.from_numpy(mel * 2 - 1)[None, None])[0].numpy()
    assert len(windows) == 1 and np.array_equal(windows[0], expected)
    assert header.n_samples == wave.size and abs(wave.size - info.frames / 24000 * 22050) <= 1
    # the bitrate is ceil(log2 n_e) bits per token over the clip's duration
    seconds = info.frames / info.samplerate
    assert report.tokens == 5 * width // 16
    assert report.seconds == pytest.approx(seconds, abs=1 / 22050)
    assert report.bitrate_kbps == pytest.approx(5 * report.tokens / seconds / 1000, rel=1e-4)
    assert report.file_bytes == (tmp_path / "x.svqc").stat().st_size == 68 + math.ceil(5 * report.tokens / 8)
    decoded = decode_file(model, tmp_path / "x.svqc", tmp_path / "x.wav", fast_vocoder)
    out, sr = soundfile.read(str(tmp_path / "x.wav"))
    assert sr == 22050 and out.shape == (wave.size,)
    expected = {**report.as_dict(), "input": str(tmp_path / "x.svqc"), "output": str(tmp_path / "x.wav")}
    assert decoded.as_dict() == expected


def test_file_from_another_codebook_is_refused(shared_dir, model, fast_vocoder, tmp_path):
    other = load_codebook(_save_tiny(tmp_path / "other.pt", seed=1))
    assert codebook_identity(other) != codebook_identity(model)
    src = shared_dir / "data" / "neural_audio_codec" / "music2" / "original.wav"
    encode_file(other, src, tmp_path / "x.svqc")
    with pytest.raises(CodecError, match="another codebook"):
        decode_file(model, tmp_path / "x.svqc", tmp_path / "x.wav", fast_vocoder)
    assert not (tmp_path / "x.wav").exists()
    header, _ = read_codes((tmp_path / "x.svqc").read_bytes())
    check_codebook(header, other)  # its own codebook accepts it


def test_long_input_is_windowed(model, fast_vocoder, tmp_path):
    sr_in, seconds = 16000, 25.0
    t = np.arange(int(sr_in * seconds)) / sr_in
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2).astype(np.float32)
    soundfile.write(str(tmp_path / "long.flac"), wave, sr_in)
    report = encode_file(model, tmp_path / "long.flac", tmp_path / "long.svqc", batch_size=2)
    header, windows = read_codes((tmp_path / "long.svqc").read_bytes())
    n = int(seconds * 22050)
    assert header.n_samples == n
    frames = math.ceil(n / 256)  # 2154 = 848 + 848 + 458 -> last window padded to 464 frames = 29 columns
    assert [w.shape for w in windows] == [(5, 53), (5, 53), (5, 29)] and frames - 2 * 848 == 458
    assert report.windows == 3 and report.tokens == 5 * (53 + 53 + 29)
    # windows equal encoding each 848-frame slice on its own
    mel = mel_spectrogram(load_audio(tmp_path / "long.flac", sr=22050))
    with torch.no_grad():
        second = model.encode_indices(torch.from_numpy(mel[:, 848:1696] * 2 - 1)[None, None])[0].numpy()
    assert np.array_equal(windows[1], second)
    decode_file(model, tmp_path / "long.svqc", tmp_path / "long.wav", fast_vocoder)
    out, sr = soundfile.read(str(tmp_path / "long.wav"))
    assert sr == 22050 and out.shape == (n,)


def test_damaged_or_foreign_files_are_refused(model, tmp_path, shared_dir):
    (tmp_path / "a.svqc").write_bytes(b"RIFF0000WAVE")
    with pytest.raises(CodecError, match="not a SpecVQGAN codec file"):
        read_codes((tmp_path / "a.svqc").read_bytes())
    encode_file(model, shared_dir / "data" / "neural_audio_codec" / "clean_speech2" / "original.wav",
                tmp_path / "b.svqc")
    data = (tmp_path / "b.svqc").read_bytes()
    with pytest.raises(CodecError, match="truncated"):
        read_codes(data[:-5])
    assert Header.from_bytes(data).bits == 5
    # full_last_window pads a short input to a whole 848-frame window instead of a multiple of 16 frames
    full = encode_file(model, shared_dir / "data" / "neural_audio_codec" / "clean_speech2" / "original.wav",
                       tmp_path / "full.svqc", full_last_window=True)
    assert full.tokens == 265 and [w.shape for w in read_codes((tmp_path / "full.svqc").read_bytes())[1]] == [(5, 53)]


def test_stage_encode_then_decode(shared_dir, tiny_ckpt, tmp_path, capsys):
    src = shared_dir / "data" / "neural_audio_codec" / "noisy_speech1" / "original.wav"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        enc = compose("codec", overrides=["mode=encode", f"input={src}", f"output={tmp_path / 'c.svqc'}",
                                          f"codebook.ckpt={tiny_ckpt}", "logger=none"])
        dec = compose("codec", overrides=["mode=decode", f"input={tmp_path / 'c.svqc'}",
                                          f"output={tmp_path / 'c.wav'}", f"codebook.ckpt={tiny_ckpt}",
                                          "logger=none"])
    [r] = run(enc, run_dir=tmp_path / "run")
    assert "kbps" in capsys.readouterr().out and (tmp_path / "run" / "codec_report.json").is_file()
    assert r.bits_per_code == 5 and 0.1 < r.bitrate_kbps < 0.3
    [d] = run(dec, run_dir=tmp_path / "run")
    assert soundfile.info(str(tmp_path / "c.wav")).frames == d.n_samples == r.n_samples
