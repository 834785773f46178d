"""Sound for a whole video (pipeline/generate/long_video.py) with tiny models made here: frames decoded only as needed,
the condition following the picture window by window, 25 s of sound for a 25 s video in its mp4."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from models.cond_transformer import Net2NetTransformer
from models.gpt import GPTFeats
from models.permuter import ColumnMajor
from pipeline.build.codebook import build_codebook
from pipeline.build.vocoder import Vocoder
from pipeline.config.presets import preset
from pipeline.extract.visual import Preprocessing, extract_streams
from pipeline.extract.visual import load_model as load_feature_model
from pipeline.generate import long_video
from pipeline.generate.decoding import TokenSampler
from pipeline.generate.loading import UserModels
from pipeline.generate.long_video import decode_long, frame_features, long_condition, streamed_condition
from pipeline.generate.sampling import _window_cond
from pipeline.generate.settings import SamplingSettings
from pipeline.generate.user_clip import sample_user_clip
from pipeline.media.mel import CROP_LEN, FRAMES_PER_COLUMN
from pipeline.media.video import frame_times, write_video
from tests.helpers import features_preset

W = CROP_LEN // FRAMES_PER_COLUMN  # code columns of one window (53)
S = 212  # condition frames per window: the paper's 212-feature models, 4 frames per code column
SETTINGS = {"mode": "nopix", "temperature": 1.0, "top_k": 8, "top_p": None}


def _fcfg() -> dict:
    """conf/features/resnet50_tiny.yaml over resnet50.yaml: the real pipeline with an 8x narrower random net."""
    return features_preset("resnet50_tiny")


def _video(path: Path, seconds: float, fps: float = 10.0) -> Path:
    """A 32 x 32 video whose brightness and colour change every frame (so frame features differ)."""
    n = int(round(seconds * fps))
    i = np.arange(n)[:, None, None, None]
    frames = np.broadcast_to((i * np.array([7, 13, 29]) % 256), (n, 32, 32, 3)).astype(np.uint8)
    write_video(path, np.ascontiguousarray(frames), fps)
    return path


@pytest.fixture(scope="module")
def models() -> UserModels:
    fcfg = _fcfg()
    torch.manual_seed(0)
    codebook = build_codebook(preset("codebook", "tiny").model)
    gpt = GPTFeats(vocab_size=codebook.n_embed, block_size=S + 265, feat_depth=256, n_layer=1, n_head=2, n_embd=32)
    model = Net2NetTransformer(codebook, gpt, ColumnMajor()).eval()
    args = {"feat_depth": 256, "feat_sample_size": S, "vocab_size": codebook.n_embed, "condition": "features"}
    return UserModels(model, TokenSampler(model, "fp32", False), {"model_args": args}, fcfg, Vocoder(None, n_iter=2),
                      torch.device("cpu"), "tiny")


def test_frame_features_are_the_extractions_frames_without_holding_the_video(models, tmp_path, monkeypatch):
    fcfg, prep = models.fcfg, Preprocessing.from_cfg(models.fcfg)
    net = load_feature_model("resnet50", "random", width=8)
    short = _video(tmp_path / "short.mp4", 6.0)
    feats = frame_features(short, "resnet50", net, prep, batch_size=16)
    expected = extract_streams(short, "resnet50", net, prep)["rgb"]  # tiled to 215 rows from round(6 * 21.5)
    assert feats.shape == (129, int(fcfg["depth"])) and np.allclose(feats, expected[:129], atol=1e-5)
    # a 25 s video, its first 5 s: only the frames on screen at 21.5 fps up to 5 s are decoded and kept
    long = _video(tmp_path / "long.mp4", 25.0, fps=30.0)
    asked, converted = [], []
    stream, resize = long_video.stream_frames, long_video.resize_short_side
    monkeypatch.setattr(long_video, "stream_frames", lambda path, indices, *a: (asked.append(indices), stream(
        path, indices, *a))[1])
    monkeypatch.setattr(long_video, "resize_short_side", lambda *a: (converted.append(1), resize(*a))[1])
    feats = frame_features(long, "resnet50", net, prep, seconds=5.0, batch_size=16)
    assert feats.shape[0] == round(5 * 21.5) and len(asked) == 1 and asked[0].size == feats.shape[0]
    assert len(set(asked[0].tolist())) == len(converted) == 108 and asked[0].max() < 150  # each frame once
    assert len(frame_times(long)) == 750
    with pytest.raises(ValueError, match="bninception loops every clip"):
        frame_features(long, "bninception", net, prep)


def test_the_condition_follows_the_picture():
    cols = 135  # 25 s
    feats = np.arange(600, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)  # row t holds t: its time
    cond, per_window = long_condition(feats, cols, {"feat_depth": 3, "feat_sample_size": S}, {"feat_crop_len": 212}, W)
    assert per_window == S and cond.shape == (1, 3, 540)  # 4 frames per column over all 135 columns
    for js in (0, 1, 40, 82):  # the windows' first columns (82 = 135 - 53, the last)
        window = _window_cond(cond, js, cols=cols, S=S, slide_cond=True)[0, 0].numpy()
        assert np.array_equal(window, np.arange(4 * js, 4 * js + 212))  # the frames under columns js .. js + 52
    short, _ = long_condition(feats[:100], cols, {"feat_depth": 3, "feat_sample_size": 5}, {"feat_crop_len": 212}, W)
    assert short.shape == (1, 3, 13) and short[0, 0, -1] == 0  # past the video's end: zero rows, as in training


def test_long_tokens_decode_window_by_window(models):
    model = models.model
    tokens = torch.randint(0, 16, (1, 5 * 53))
    with torch.no_grad():
        assert np.allclose(decode_long(model, tokens), ((model.decode_to_spec(tokens)[0, 0] + 1) / 2).numpy())
    long = torch.randint(0, 16, (1, 5 * 120))
    mel = decode_long(model, long)
    assert mel.shape == (80, 16 * 120)
    with torch.no_grad():  # the first window's interior is its own decoding
        first = ((model.decode_to_spec(long[:, :5 * 53])[0, 0] + 1) / 2).numpy()
    assert np.allclose(mel[:, :600], first[:, :600], atol=1e-6)


def test_a_25_s_video_gets_25_s_of_sound(models, tmp_path, capsys):
    video = _video(tmp_path / "clip.mp4", 25.0)
    made = sample_user_clip(models, video, [tmp_path / "out" / "clip_sample_0"], SETTINGS, seed=3, max_seconds=None)[0]
    assert made["mel"].shape == (80, 16 * 135) and abs(made["wave"].size - 25.0 * 22050) <= 0.11 * 22050
    assert made["clip"].window == {"slide_cond": True, "cond_frames": S}  # the condition follows the picture
    assert "sound for clip.mp4" in capsys.readouterr().err  # the progress bar, in seconds of audio
    with av.open(str(made["mp4"])) as mp4, av.open(str(video)) as src:
        assert float(mp4.streams.audio[0].duration * mp4.streams.audio[0].time_base) == pytest.approx(25.0, abs=0.15)
        assert mp4.streams.video[0].frames == src.streams.video[0].frames  # the picture untouched
    again = sample_user_clip(models, video, [tmp_path / "again" / "clip"], SETTINGS, seed=3, max_seconds=12.0)[0]
    assert again["mel"].shape == (80, 16 * 65) and again["wave"].size == round(12.0 * 22050)
    with pytest.raises(ValueError, match="mode=half primes with the video's own sound"):
        sample_user_clip(models, video, [tmp_path / "x"], {**SETTINGS, "mode": "half"}, seed=3, max_seconds=None)


def test_a_long_video_is_sampled_window_by_window_with_its_own_frames(models, tmp_path):
    """The stage's path for a 12-s video is: the streamed condition, the sampler's sliding window over it (each
    window its own frames), the windows decoded one by one; and max_seconds caps it."""
    video = _video(tmp_path / "long.mp4", 12.0)
    made = sample_user_clip(models, video, [tmp_path / "stage" / "long_sample_0"], SETTINGS, seed=5,
                            max_seconds=None)[0]
    assert made["wave"].size == round(12.0 * 22050) and made["mp4"].exists()  # no max_seconds: the whole video
    cols = 65  # ceil(12 s * 86.13 / 16)
    cond, window = streamed_condition(models, video, cols, 12.0)
    tokens = models.sampler.sample(cond, SamplingSettings.coerce(SETTINGS), 5 * cols,
                                   generator=torch.Generator().manual_seed(5 * 1_000_003), **window)
    assert torch.equal(made["tokens"], tokens)
    assert np.array_equal(made["mel"], decode_long(models.model, tokens))
    capped = sample_user_clip(models, video, [tmp_path / "capped" / "long_sample_0"], SETTINGS, seed=5,
                              max_seconds=4.0)[0]
    assert capped["wave"].size == round(4.0 * 22050) and capped["clip"].window == {}  # one window: no sliding
