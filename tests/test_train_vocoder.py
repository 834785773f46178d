"""Vocoder training: the torch mel equals the original's numpy chain on real audio, the checkpoint layout loads
through load_vocoder, the tiny preset composes, and a short run lowers the validation mel L1 of the generated
audio (the honest measure: the GAN losses themselves do not fall monotonically) while its audio follows its mel:
each clip's vocoded mel is nearest to that clip's own mel."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pipeline.config.presets import preset, preset_dict
from pipeline.media.mel import MelTransform
from pipeline.train.loop import Trainer
from pipeline.train.train_vocoder import VocoderTask
from tests.helpers import demo_spec


def demo_like(root: Path, clips_per_class: int = 3, num_classes: int = 2) -> dict:
    """Demo-data waveforms (looped to 10 s, as extract_mels) in the VAS layout, without encoding videos."""
    from pipeline.demo.make_demo_data import clip_audio, plan
    from pipeline.media.audio import loop_to_length

    spec = demo_spec(num_classes=num_classes, clips_per_class=clips_per_class, seconds=2.0)
    rows = {"train": [], "valid": []}
    for p in plan(spec):
        last = p.id.endswith(f"{clips_per_class - 1:05d}")
        rows["valid" if last else "train"].append(p.id)
        label, name = p.id.split("/")
        folder = root / "features" / label / "melspec_10s_22050hz"
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{name}_audio.npy", loop_to_length(clip_audio(p, spec), 220500).astype(np.float32))
    splits = {}
    for split, ids in rows.items():
        splits[split] = str(root / f"{split}.txt")
        Path(splits[split]).write_text("".join(f"{i}\n" for i in ids))
    return {"name": "demo", "layout": "vas", "root": str(root), "features": str(root / "features"),
            "splits": splits, "classes": None}


def tiny_cfg(dataset: dict) -> OmegaConf:
    return OmegaConf.create({"dataset": dataset, "vocoder": preset("vocoder", "tiny"),
                             "data": {"train_split": "train", "val_split": "valid", "val_max_clips": 2}})


def test_torch_mel_equals_original_chain_on_real_audio(vas_dir):
    from pipeline.media.audio import load_audio, loop_to_length
    from pipeline.media.mel import mel_spectrogram

    video = sorted((vas_dir / "videos").rglob("*.mp4"))[0]
    wave = loop_to_length(load_audio(video), 220500)
    expected = mel_spectrogram(wave)  # (80, 862)
    got = MelTransform()(torch.from_numpy(wave)[None])[0].numpy()
    assert got.shape == expected.shape == (80, 862)
    assert np.abs(got - expected).max() < 1e-5
    # a training crop: 8192 samples -> 33 frames -> the first 32
    crop = torch.from_numpy(wave[:8192])[None, None]
    assert MelTransform()(crop).shape == (1, 80, 33)


def test_config_composes_with_paper_and_tiny_presets(compose):

    import pipeline.config  # noqa: F401

    paper = compose("train_vocoder", "dataset=vggsound")
    demo = compose("train_vocoder", "dataset=demo")
    assert paper.vocoder.model.netG.ngf == 32 and paper.vocoder.optim.batch_size == 64
    assert paper.vocoder.loss.lambda_feat == 10 and list(paper.vocoder.optim.betas) == [0.5, 0.9]
    assert paper.trainer.max_epochs == 3000
    assert demo.vocoder.name == "tiny" and demo.trainer.max_steps == demo.vocoder.schedule.max_steps


def test_short_run_lowers_mel_l1_and_checkpoint_loads(tmp_path, one_thread):
    from pipeline.build.vocoder import load_vocoder

    torch.manual_seed(0)
    cfg = tiny_cfg(demo_like(tmp_path / "data"))
    task = VocoderTask(cfg)
    task = task
    task.batch_size = 2
    trainer = Trainer(task, {**preset_dict("trainer", "cpu"), "max_steps": 32, "val_every": 0, "log_every": 100},
                      tmp_path / "run")
    train_loader, val_loader = trainer._prepare()
    before = trainer.validate(val_loader)["val/mel_l1"]
    trainer.best = None
    trainer._prepare = lambda: (train_loader, val_loader)  # already built: fit reuses the same modules
    after = trainer.fit()["val/mel_l1"]
    print(f"validation mel L1: untrained {before:.3f} -> after 32 steps {after:.3f}")
    assert after < 0.8 * before, (before, after)
    # the output follows the input: a constant waveform would be equally far from every clip's mel
    netG, mel_of = trainer.unwrap("netG").eval(), trainer.task._mel_of
    with torch.no_grad():
        waves = torch.cat([batch for batch in val_loader])  # (clips, 1, N), the classes' last clips
        waves = waves[..., : waves.shape[-1] // 256 * 256]
        mels = mel_of(waves)
        vocoded = netG(mels)
        distances = (mel_of(vocoded)[:, None] - mels[None]).abs().mean((2, 3))  # (vocoded i, real j)
    print(f"vocoded-vs-real mel L1 (rows: vocoded clip): {distances.numpy().round(3).tolist()}")
    assert torch.equal(distances.argmin(1), torch.arange(len(waves))), distances
    # and the two outputs differ as their inputs do (one waveform for every mel, the old preset: 0 apart)
    apart, inputs_apart = (mel_of(vocoded[:1]) - mel_of(vocoded[1:2])).abs().mean(), (mels[0] - mels[1]).abs().mean()
    print(f"vocoded mels {apart:.3f} apart, their input mels {inputs_apart:.3f}")
    assert apart > 0.25 * inputs_apart  # measured 0.058 vs 0.165 after 32 steps

    ckpt = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    keys = set(ckpt["state_dict"])
    assert "model.1.weight_g" in keys and "model.1.weight_v" in keys  # the original's bare netG layout
    assert any(k.startswith("netD.model.disc_0.") for k in keys)
    netG = load_vocoder(tmp_path / "run/checkpoints/last.pt")
    mel = torch.rand(1, 80, 4)
    assert torch.allclose(netG(mel), trainer.unwrap("netG").eval()(mel), atol=1e-6)


@pytest.mark.parametrize("bad", ["netD.model.disc_0.model.layer_0.1.bias"])
def test_loader_ignores_only_discriminator_keys(tmp_path, bad):
    from models.melgan import Generator, to_legacy_weight_norm
    from pipeline.build.vocoder import load_vocoder
    from pipeline.checkpoints.format import save_checkpoint

    g = Generator(ngf=4, n_residual_layers=1)
    state = to_legacy_weight_norm(dict(g.state_dict()))
    save_checkpoint(tmp_path / "ok.pt", {"kind": "vocoder", "model_args": {"netG": {"ngf": 4, "n_residual_layers": 1}},
                                         "state_dict": {**state, bad: torch.zeros(8)}})
    assert isinstance(load_vocoder(tmp_path / "ok.pt"), Generator)
    save_checkpoint(tmp_path / "bad.pt", {"kind": "vocoder", "model_args": {"netG": {"ngf": 4, "n_residual_layers": 1}},
                                          "state_dict": {**state, "model.99.bias": torch.zeros(1)}})
    with pytest.raises(ValueError, match="unexpected keys"):
        load_vocoder(tmp_path / "bad.pt")


def test_vocoded_level_is_the_rms_ratio_of_the_same_frames(tmp_path):
    """The level target's measure: 20 log10 of the vocoded audio's RMS over the real audio's, on the real audio's
    samples of the mel's centre crop (a half-gain copy of those samples reads -6.02 dB; the uncropped start would
    not), and a clear reason instead of a figure when the real audio is missing."""
    from pipeline.data.layout import audio_path, mel_path
    from pipeline.evaluate.model_checks import vocoded_level
    from pipeline.files.writes import save_npy
    from pipeline.media.mel import HOP

    dataset = {"name": "levels", "layout": "vas", "features": str(tmp_path / "features")}
    ids, crop, rng = ["a/one", "a/two"], 8, np.random.default_rng(0)
    waves = []
    for k, clip in enumerate(ids):
        wave = rng.standard_normal(12 * HOP).astype(np.float32) * np.linspace(0.1, 1, 12 * HOP) * (k + 1)
        save_npy(audio_path(dataset, clip), wave)
        save_npy(mel_path(dataset, clip), np.zeros((80, 12), np.float32))  # 12 frames: the crop starts at 2
        waves.append(wave[2 * HOP:(2 + crop) * HOP])
    half = 0.5 * np.stack(waves)
    level = vocoded_level(dataset, ids, crop, half, np.stack(waves)[:1])
    assert level["level_db"] == pytest.approx(-6.0206, abs=1e-3)
    assert level["clip_level_db"] == pytest.approx([-6.0206, -6.0206], abs=1e-3)
    assert level["griffinlim_level_db"] == pytest.approx(0.0, abs=1e-6)
    audio_path(dataset, ids[1]).unlink()
    assert "no real audio for 1 clip(s)" in vocoded_level(dataset, ids, crop, half, half[:1])["level_skipped"]
