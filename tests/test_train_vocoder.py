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


def demo_like(root: Path, clips_per_class: int = 3, num_classes: int = 2) -> dict:
    """Demo-data waveforms (looped to 10 s, as extract_mels) in the VAS layout, without encoding videos."""
    from pipeline.demo.make_demo_data import DemoSpec, clip_audio, plan
    from pipeline.media.audio import loop_to_length

    spec = DemoSpec(num_classes=num_classes, clips_per_class=clips_per_class, seconds=2.0)
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


def real_vas_waveforms(vas_dir: Path, root: Path) -> dict:
    """The real VAS clips as a vocoder data set: each clip's 10-s audio (the mel stage's chain) beside the original's
    mel, train = valid = every clip."""
    from pipeline.data.layout import audio_path, mel_path
    from pipeline.files.writes import save_npy
    from pipeline.media.mel import extract_mel_and_audio

    ids = sorted(f"{p.parent.name}/{p.stem}" for p in (vas_dir / "videos").rglob("*.mp4"))
    split = root / "clips.txt"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text("".join(f"{i}\n" for i in ids))
    dataset = {"name": "vas_real", "layout": "vas", "root": str(root), "features": str(root / "features"),
               "splits": {"train": str(split), "valid": str(split)}, "classes": None}
    shipped = {"name": "vas", "layout": "vas", "features": str(vas_dir / "features")}
    for clip in ids:
        _, wave, _ = extract_mel_and_audio(vas_dir / "videos" / f"{clip}.mp4", chain="direct")
        save_npy(audio_path(dataset, clip), wave)
        save_npy(mel_path(dataset, clip), np.load(mel_path(shipped, clip)))  # the original's mel of the clip
    return dataset


def test_vocoded_level_follows_the_real_audio(vas_dir, tmp_path, one_thread):
    """The tiny preset, trained briefly on the real VAS clips, vocodes the original's mels of those clips at the
    level of their real audio (RMS within 3 dB, the demo's vocoder target), as Griffin-Lim does; the paper's
    settings left a tiny MelGAN 20-30 dB too quiet and offset (DC) after as many steps."""
    from pipeline.evaluate.model_checks import LEVEL_TOLERANCE_DB, vocoded_level
    from pipeline.media.mel import inverse_mel

    dataset = real_vas_waveforms(vas_dir, tmp_path / "data")
    cfg = tiny_cfg(dataset)
    cfg.data.val_max_clips = 2
    task = VocoderTask(cfg)
    trainer = Trainer(task, {**preset_dict("trainer", "cpu"), "max_steps": 300, "val_every": 0, "log_every": 100},
                      tmp_path / "run", seed=0)
    trainer.fit()  # reconstruction terms only (the tiny preset's warm-up)
    ids = Path(dataset["splits"]["valid"]).read_text().split()
    mels = np.stack([np.load(Path(dataset["features"]) / c.split("/")[0] / "melspec_10s_22050hz" /
                             f"{c.split('/')[1]}_mel.npy")[:, 6:854] for c in ids])
    netG = trainer.unwrap("netG").eval()
    with torch.no_grad():
        vocoded = np.concatenate([netG(torch.from_numpy(m[None]).float())[:, 0].numpy() for m in mels])
    griffinlim = np.stack([inverse_mel(m, n_iter=8)[: vocoded.shape[1]] for m in mels[:2]])
    level = vocoded_level(dataset, ids, vocoded, np.pad(griffinlim, ((0, 0), (0, vocoded.shape[1] - griffinlim.shape[1]))))
    print(f"vocoded level {level['level_db']:+.1f} dB (clips {level['clip_level_db']}), Griffin-Lim "
          f"{level['griffinlim_level_db']:+.1f} dB")
    assert abs(level["level_db"]) <= LEVEL_TOLERANCE_DB, level
    assert abs(level["griffinlim_level_db"]) <= LEVEL_TOLERANCE_DB, level
    assert abs(vocoded.mean()) < 0.01  # no DC offset
