"""The interactive sampler (pipeline/app.py) on tiny models made on the spot: the processing function for an
uploaded video (samples + mp4s + spectrograms + the codebook reconstruction) and for a data set clip (its stored
features), its input errors, and the Gradio page (built when gradio is installed, else the error names the extra)."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipeline.app import Sampler, build_app, import_gradio
from tests.test_sample_stage import features_preset  # noqa: F401  (the fixture)
from tests.test_train_transformer import ROOT, make_codebook, make_dataset, make_transformer, write_video


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("app", overrides=["dataset=demo", "logger=none", "device=cpu", *overrides])


@pytest.fixture(scope="module")
def sampler(tmp_path_factory, original_fixtures) -> Sampler:
    tmp = tmp_path_factory.mktemp("app")
    codebook = make_codebook(tmp / "codebook.pt")
    ckpt = make_transformer(tmp / "t_rn50.pt", codebook, features_preset("resnet50_tiny"), 1)
    cfg = _cfg(f"transformer_ckpt={ckpt}", f"vocoder_ckpt={original_fixtures / 'melgan_netG_small.pt'}")
    return Sampler(cfg, tmp / "run")


def test_an_uploaded_video_gives_sounds_videos_spectrograms_and_a_reconstruction(sampler, tmp_path):
    video = write_video(tmp_path / "clip.mp4", 2.0)
    result = sampler.generate(str(video), mode="half", temperature=0.9, top_k=8, top_p=0.9, samples=2, seed=3,
                              reconstruct=True)
    assert len(result.waves) == len(result.images) == len(result.mp4s) == 2
    for wave, image, mp4, wav in zip(result.waves, result.images, result.mp4s, result.wavs):
        assert wave.dtype == np.float32 and abs(len(wave) / 22050 - 2.0) < 0.05  # cut to the video's length
        assert image.shape == (160, 848, 3) and image.dtype == np.uint8
        assert mp4.exists() and wav.exists() and mp4.parent == result.folder
    assert not np.array_equal(result.waves[0], result.waves[1])  # each sample its own seed
    recon = result.reconstruction
    assert recon["mel"].shape == (80, 848) and abs(len(recon["wave"]) / 22050 - 2.0) < 0.05
    assert recon["wav"].exists()
    again = sampler.generate(str(video), samples=1, seed=3, max_seconds=1.5)  # a new folder per press
    assert again.folder != result.folder and abs(len(again.waves[0]) / 22050 - 1.5) < 0.05


def test_a_data_set_clip_uses_its_stored_features(sampler, outputs):
    root = make_dataset(outputs / "demo_data", train=1, valid=1)
    from pipeline.io import save_pickle

    for label in ("chirp", "noise"):  # features of the checkpoint's kind (resnet50_tiny, 256 dims)
        save_pickle(root / "features" / label / "feature_resnet50_tiny_dim256_21.5fps" / "video_00001.pkl",
                    np.zeros((215, 256), np.float32))
    sampler = Sampler(OmegaConf.merge(sampler.cfg, {"dataset": {"root": str(root)}}), sampler.run_dir,
                      models=sampler.models)  # the same models, the data set made here
    assert sampler.clips() == ["chirp/video_00001", "noise/video_00001"]
    result = sampler.generate(None, "noise/video_00001", samples=1)
    assert result.mp4s == [None] and result.images[0].shape == (160, 848, 3)
    with pytest.raises(ValueError, match="needs the clip's video"):
        sampler.generate(None, "noise/video_00001", reconstruct=True)
    with pytest.raises(ValueError, match="upload a video or pick a clip"):
        sampler.generate(None, None)


def test_the_page_builds_or_names_the_extra(sampler, monkeypatch):
    try:
        import gradio  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install -e \.\[app\]"):
            build_app(sampler.cfg, sampler.run_dir, sampler)
        return
    app = build_app(sampler.cfg, sampler.run_dir, sampler)
    assert type(app).__name__ == "Blocks"
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install -e \.\[app\]"):
        import_gradio()
