"""The sample stage on tiny models made on the spot: a data set split in the original's layout (skip on rerun,
settings guard, half mode), a user's video through the Hydra entry point (wav + mp4 with sound of the video's
length), the errors for a video without frames, a too short one and features of the wrong depth, the settings a
rerun is checked against (another vocoder), and the one sampler behind every entry point."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from omegaconf import OmegaConf

from pipeline.files.writes import save_pickle
from pipeline.generate.sample import run
from pipeline.media.source import ClipError
from tests.helpers import ROOT, features_preset, make_codebook, make_dataset, make_transformer, write_clip

SAMPLE = ("sample", "dataset=demo", "logger=none", "device=cpu")  # the stage's config, on CPU, no logger


@pytest.fixture
def models(outputs: Path, tmp_path: Path) -> dict[str, Path]:
    make_dataset(outputs / "demo_data", train=1, valid=1)
    codebook = make_codebook(tmp_path / "codebook.pt")
    return {"split": make_transformer(tmp_path / "t_effnet.pt", codebook, features_preset("efficientnet_lite0")),
            "video": make_transformer(tmp_path / "t_rn50.pt", codebook, features_preset("resnet50_tiny"), 1),
            "codebook": codebook}


@pytest.fixture
def melgan(original_fixtures) -> str:
    """The original's small MelGAN generator: a real vocoder much faster than Griffin-Lim on CPU."""
    return f"vocoder.ckpt={original_fixtures / 'melgan_netG_small.pt'}"


def test_split_layout_manifest_skip_and_settings_guard(models, melgan, tmp_path, compose):
    cfg = compose(*SAMPLE, f"transformer.ckpt={models['split']}", "batch_size=2", melgan)
    result = run(cfg, run_dir=tmp_path / "run")
    out = tmp_path / "run" / "samples" / "valid"
    assert result["written"] == 2 and result["skipped"] == 0
    for target in (0, 1):
        for k in (0,):
            mel = np.load(out / f"cls_{target}" / f"video_00001_mel_sample_{k}.npy")
            assert mel.shape == (80, 848) and mel.dtype == np.float32
            wave, sr = sf.read(out / f"cls_{target}" / f"video_00001_mel_sample_{k}.wav")
            assert sr == 22050 and wave.shape == (848 * 256,)
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert len(rows) == 2 and {r["clip_id"] for r in rows} == {"chirp/video_00001", "noise/video_00001"}
    assert rows[0]["npy"] == "cls_0/video_00001_mel_sample_0.npy" and rows[0]["label"] == "chirp"

    stamp = (out / "cls_0" / "video_00001_mel_sample_0.npy").stat().st_mtime_ns
    assert run(cfg, run_dir=tmp_path / "run") == {"written": 0, "skipped": 2, "out": out}
    assert (out / "cls_0" / "video_00001_mel_sample_0.npy").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other settings.*temperature"):
        run(compose(*SAMPLE, f"transformer.ckpt={models['split']}", "sampling.temperature=0.5"),
            run_dir=tmp_path / "run")

    half = run(compose(*SAMPLE, f"transformer.ckpt={models['split']}", "sampling.mode=half", "write_wav=false",
                       "samples_per_clip=2"), run_dir=tmp_path / "h")
    assert half["written"] == 4 and not list((tmp_path / "h").rglob("*.wav"))
    assert (tmp_path / "h" / "samples" / "valid" / "cls_1" / "video_00001_mel_sample_1.npy").exists()


def _audio_seconds(path: Path) -> float:
    import av

    with av.open(str(path)) as container:
        assert container.streams.video, f"{path} lost its picture"
        stream = container.streams.audio[0]
        return sum(frame.samples for frame in container.decode(stream)) / stream.rate


def test_user_video_through_the_stage_gives_a_wav_and_an_mp4(models, melgan, outputs, tmp_path):
    video = write_clip(tmp_path / "in" / "clip.mp4", 2.0)
    env = {**os.environ, "SPECVQGAN_OUTPUTS": str(outputs), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "stages.sample", "dataset=demo", "logger=none", "device=cpu",
                             f"video={video}", f"transformer.ckpt={models['video']}", melgan], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    (wav,) = (outputs / "sample" / "demo").rglob("clip_sample_0.wav")
    wave, sr = sf.read(wav)
    assert sr == 22050 and abs(len(wave) / sr - 2.0) < 0.05  # cut to the video's length
    assert abs(_audio_seconds(wav.with_suffix(".mp4")) - 2.0) < 0.1
    assert wav.with_suffix(".npy").exists()


def test_user_input_errors(models, tmp_path, compose):
    cfg = compose(*SAMPLE, f"transformer.ckpt={models['video']}")
    no_frames = write_clip(tmp_path / "sound_only.mp4", 1.0, picture=False)
    with pytest.raises(ClipError, match="sound_only.mp4 has no video stream"):
        run(OmegaConf.merge(cfg, {"video": str(no_frames)}), run_dir=tmp_path / "run")
    short = write_clip(tmp_path / "short.mp4", 0.5)
    with pytest.raises(ValueError, match="0.50 s long.*at least 1 s"):
        run(OmegaConf.merge(cfg, {"video": str(short)}), run_dir=tmp_path / "run")
    save_pickle(tmp_path / "wrong.pkl", np.zeros((215, 2048), np.float32))
    with pytest.raises(ValueError, match=r"wrong.pkl: features of shape \(215, 2048\).*\(frames, 256\) resnet50"):
        run(OmegaConf.merge(cfg, {"features_file": str(tmp_path / "wrong.pkl")}), run_dir=tmp_path / "run")


def test_condition_derangement_gives_no_clip_its_own_condition():
    from pipeline.generate.sample import condition_derangement

    for n in (2, 3, 8, 25):
        cond_of = condition_derangement(n, seed=1337)
        assert sorted(cond_of) == list(range(n)) and all(c != i for i, c in enumerate(cond_of))
        seen, i = set(), 0  # one cycle through every clip
        while i not in seen:
            seen.add(i)
            i = cond_of[i]
        assert len(seen) == n
    assert condition_derangement(8, 1) == condition_derangement(8, 1) != condition_derangement(8, 2)
    with pytest.raises(ValueError, match="at least 2 clips"):
        condition_derangement(1, 0)


def test_condition_shuffle_and_the_av_benchmark_layout(models, melgan, outputs, tmp_path, compose):
    from pipeline.files.writes import save_npy

    root = outputs / "demo_data"
    write_clip(root / "videos" / "chirp" / "video_00001.mp4", 2.0)  # one clip with its video ...
    save_npy(root / "features" / "noise" / "melspec_10s_22050hz" / "video_00001_audio.npy",  # ... one without
             (0.1 * np.sin(np.arange(220500) / 10)).astype(np.float32))
    common = [f"transformer.ckpt={models['split']}", "batch_size=2", "samples_per_clip=2"]
    run(compose(*SAMPLE, *common, melgan, "av_benchmark=true"), run_dir=tmp_path / "run")
    run(compose(*SAMPLE, *common, "condition_shuffle=true", "write_wav=false"), run_dir=tmp_path / "shuffled")

    plain = list(csv.DictReader((tmp_path / "run" / "samples" / "valid" / "manifest.csv").open()))
    shuffled = list(csv.DictReader((tmp_path / "shuffled" / "samples" / "valid" / "manifest.csv").open()))
    assert all(r["condition_clip"] == r["clip_id"] for r in plain)
    assert len(shuffled) == 4 and all(r["condition_clip"] != r["clip_id"] for r in shuffled)
    a = np.load(tmp_path / "run" / "samples" / "valid" / plain[0]["npy"])
    b = np.load(tmp_path / "shuffled" / "samples" / "valid" / shuffled[0]["npy"])
    assert shuffled[0]["npy"] == plain[0]["npy"] and not np.array_equal(a, b)  # same file, other condition

    bench = tmp_path / "run" / "av_benchmark" / "valid"
    names = ["chirp__video_00001.wav", "noise__video_00001.wav"]
    assert sorted(p.name for p in (bench / "gt_audio").iterdir()) == names
    for k in (0, 1):
        assert sorted(p.name for p in (bench / "pred_audio" / f"sample_{k}").iterdir()) == names
        wave, sr = sf.read(bench / "pred_audio" / f"sample_{k}" / names[0])
        assert sr == 22050 and wave.shape == (848 * 256,)
    assert [p.name for p in (bench / "videos").iterdir()] == ["chirp__video_00001.mp4"]
    gt_chirp, sr = sf.read(bench / "gt_audio" / names[0])
    assert sr == 22050 and abs(len(gt_chirp) / sr - 2.0) < 0.1  # the clip's own sound, from its video
    assert len(sf.read(bench / "gt_audio" / names[1])[0]) == 220500  # the stored waveform
    readme = (bench / "README.md").read_text()
    assert "evaluate.py --gt_audio" in readme and "extract_video.py" in readme and "1 clip(s) have no video" in readme
    with pytest.raises(ValueError, match="av_benchmark=true needs the samples' wavs"):
        run(compose(*SAMPLE, *common, "write_wav=false", "av_benchmark=true"), run_dir=tmp_path / "nowav")


# ------------------------------------------------------------------ the settings a rerun is checked against
def test_a_rerun_with_another_vocoder_is_refused_not_skipped(models, melgan, tmp_path, compose):
    """The wav of a video sampled with MelGAN is not kept when the rerun asks for Griffin-Lim (or another MelGAN):
    the rerun refuses, naming the key, and `overwrite=true` makes the wav again."""
    video = write_clip(tmp_path / "clip.mp4", 2.0)
    common = (*SAMPLE, f"transformer.ckpt={models['video']}", f"video={video}")
    run(compose(*common, melgan), run_dir=tmp_path / "run")
    wav = tmp_path / "run" / "clip_sample_0.wav"
    with_melgan = sf.read(wav)[0]
    record = json.loads((tmp_path / "run" / "sampling.json").read_text())
    assert record["vocoder.ckpt"].endswith("melgan_netG_small.pt") and record["sampler"] == "fp32 KV cache (exact)"
    assert run(compose(*common, melgan), run_dir=tmp_path / "run")["skipped"] == 1  # the same settings: skipped
    with pytest.raises(ValueError, match=r"other settings \(vocoder.ckpt: .*melgan_netG_small.pt' -> 'griffinlim'\)"
                                         r".*overwrite=true"):
        run(compose(*common), run_dir=tmp_path / "run")
    assert np.array_equal(sf.read(wav)[0], with_melgan)  # nothing touched
    with pytest.raises(ValueError, match="precision: 'fp32' -> 'bf16'"):  # the fast path makes other tokens
        run(compose(*common, melgan, "sampling.precision=bf16"), run_dir=tmp_path / "run")
    assert run(compose(*common, "overwrite=true"), run_dir=tmp_path / "run")["written"] == 1
    assert not np.array_equal(sf.read(wav)[0], with_melgan)  # Griffin-Lim's now
    split = (*SAMPLE, f"transformer.ckpt={models['split']}", "write_wav=false")
    run(compose(*split), run_dir=tmp_path / "split")
    with pytest.raises(ValueError, match="vocoder.ckpt"):  # a split likewise
        run(compose(*split, melgan), run_dir=tmp_path / "split")


# ------------------------------------------------------------------------------- one sampler behind them all
@pytest.fixture
def sampler_calls(monkeypatch) -> list[tuple[str, int, bool]]:
    """Every `TokenSampler.steps` call from here on: (the sampler's path in words, tokens, sliding condition)."""
    from pipeline.generate.decoding import TokenSampler

    calls, steps = [], TokenSampler.steps

    def recording(self, cond, settings, num_tokens=None, **options):
        calls.append((str(self), num_tokens, bool(options.get("slide_cond"))))
        return steps(self, cond, settings, num_tokens, **options)

    monkeypatch.setattr(TokenSampler, "steps", recording)
    return calls


@pytest.mark.slow  # trains a step and samples five times
def test_every_entry_point_samples_through_the_stages_sampler(models, outputs, tmp_path, compose, sampler_calls):
    """The sample stage (a split, a video, a long video), the app and the training stage's logged samples take
    their tokens from the one `TokenSampler`, built from the `sampling` group: `sampling.precision=bf16` puts every
    one of them on the fast path (what `auto` does on a GPU: tests/test_sampling.py)."""
    from pipeline.app.session import AppSampler
    from pipeline.generate.loading import load_user_models
    from pipeline.generate.settings import SamplingSettings
    from pipeline.train.loop import Trainer
    from pipeline.train.train_transformer import TransformerTask
    from tests.helpers import tiny_transformer_cfg

    fast = "bf16 static KV cache, eager"  # on a CPU; on a GPU a CUDA graph (and the batch-1 step compiled)
    run(compose(*SAMPLE, f"transformer.ckpt={models['split']}", "sampling.precision=bf16", "write_wav=false"),
        run_dir=tmp_path / "split")
    assert sampler_calls == [(fast, 265, False)]  # one batch of the split's 2 clips
    assert json.loads((tmp_path / "split" / "samples" / "valid" / "sampling.json").read_text())["sampler"] == fast
    video, long = write_clip(tmp_path / "clip.mp4", 2.0), write_clip(tmp_path / "long.mp4", 12.0)
    for clip, expected in ((video, (fast, 265, False)), (long, (fast, 5 * 65, True))):
        sampler_calls.clear()
        run(compose(*SAMPLE, f"transformer.ckpt={models['video']}", "sampling.precision=bf16", f"video={clip}"),
            run_dir=tmp_path / clip.stem)
        assert sampler_calls == [expected], clip.name  # the long video: the sliding window, its own frames

    cfg = compose("app", "dataset=demo", "logger=none", "device=cpu", f"transformer.ckpt={models['video']}",
                  "sampling.precision=bf16")
    page = AppSampler(cfg, tmp_path / "app", load_user_models(cfg))
    sampler_calls.clear()
    list(page.stream(str(long), None, SamplingSettings("nopix", 1.0, 8, None), samples=1, max_seconds=None, seed=0,
                     class_id=None, reconstruct=False))
    assert sampler_calls == [(fast, 5 * 65, True)]

    make_dataset(outputs / "demo_data", train=1, valid=1)  # the training stage's logged samples
    cfg = tiny_transformer_cfg(5)
    cfg.codebook.ckpt, cfg.transformer.roll_columns, cfg.transformer.init = str(models["codebook"]), False, "original"
    cfg.transformer.sampling.precision = "bf16"
    task = TransformerTask(cfg)
    task.batch_size = 2
    trainer = Trainer(task, {**cfg.trainer, "max_steps": 1, "val_every": 0, "log_every": 100}, tmp_path / "train",
                      logger_cfg={"name": "none", "media_every": 1}, seed=0)
    sampler_calls.clear()
    trainer.fit()
    assert sampler_calls and set(sampler_calls) == {(fast, 265, False)} and str(task.sampler) == fast
    assert list((tmp_path / "train" / "media").glob("*samples_nopix_0*"))
