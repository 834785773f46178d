"""The interactive sampler (pipeline/app/app.py) on tiny models made on the spot: the processing function for an
uploaded video (samples + mp4s + spectrograms + the codebook reconstruction) and for a data set clip (its stored
features), its input errors, and the Gradio page (built when gradio is installed, else the error names the extra)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from pipeline.app.app import Sampler, build_app, import_gradio
from tests.helpers import compose, features_preset, make_codebook, make_dataset, make_transformer, write_clip


@pytest.fixture(scope="module")
def sampler(tmp_path_factory, original_fixtures) -> Sampler:
    tmp = tmp_path_factory.mktemp("app")
    codebook = make_codebook(tmp / "codebook.pt")
    ckpt = make_transformer(tmp / "t_rn50.pt", codebook, features_preset("resnet50_tiny"), 1)
    cfg = compose("app", "dataset=demo", "logger=none", "device=cpu", f"transformer.ckpt={ckpt}",
                  f"vocoder.ckpt={original_fixtures / 'melgan_netG_small.pt'}")
    return Sampler(cfg, tmp / "run")


def test_an_uploaded_video_gives_sounds_videos_spectrograms_and_a_reconstruction(sampler, tmp_path):
    video = write_clip(tmp_path / "clip.mp4", 2.0)
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
    from pipeline.files.writes import save_pickle

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


def test_the_page_builds_and_without_gradio_the_error_names_the_extra(sampler, monkeypatch):
    app = build_app(sampler.cfg, sampler.run_dir, sampler)  # gradio is in `make install` (the app extra)
    assert type(app).__name__ == "Blocks"
    ids = {getattr(block, "elem_id", None) for block in app.blocks.values()}
    assert {"generate", "video_in", "live", "status", "codec_in", "codec_go"} <= ids, ids
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install -e \.\[app\]"):
        import_gradio()
    with pytest.raises(ImportError, match=r"pip install -e \.\[app\]"):
        build_app(sampler.cfg, sampler.run_dir, sampler)


# --------------------------------------------------------------------- streaming, attention, classes, codec
def test_streamed_sampling_fills_the_spectrogram_and_ends_as_the_sample_stage(sampler, tmp_path):
    from pipeline.app.app import Progress
    from pipeline.generate.user_clip import sample_user_clip

    video = write_clip(tmp_path / "clip.mp4", 2.0)
    items = list(sampler.stream(str(video), samples=2, seed=5, top_k=8, preview_columns=10))
    progress, result = items[:-1], items[-1]
    assert all(isinstance(p, Progress) for p in progress) and len(result.waves) == 2
    for k in (0, 1):
        steps = [p for p in progress if p.sample == k]
        assert [p.done for p in steps] == [0, 50, 100, 150, 200, 250, 265]  # every 10 columns of 5 tokens, the end
        dark = [int((p.image[:, :, 0].max(axis=0) == 0).sum()) for p in steps]  # image columns not sampled yet
        assert dark[0] == 848 and dark[-1] < 848 and all(a > b for a, b in zip(dark, dark[1:-1]))
        assert all(p.image.shape == (160, 848, 3) for p in steps)
    # the same condition, seeds and files as `stages.sample video=...`
    expected = sample_user_clip(sampler.models, video, [tmp_path / "stage" / f"s_{k}" for k in (0, 1)],
                                {"mode": "nopix", "temperature": 1.0, "top_k": 8, "top_p": None}, seed=5)
    for k in (0, 1):
        assert np.array_equal(result.mels[k], expected[k]["mel"])
        assert np.array_equal(result.waves[k], expected[k]["wave"])
        att = result.attention[k]
        S = int(sampler.models.args["feat_sample_size"])  # the condition's frames
        assert att.shape == (S,) and (att >= 0).all() and 0 < att.sum() <= 1 + 1e-5
    assert result.top5 == [None, None]  # no classifier configured


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory) -> tuple:
    """A narrow random Melception with three named classes, saved as our checkpoint."""
    import torch

    from models.melception import Melception
    from pipeline.checkpoints.format import save_checkpoint

    torch.manual_seed(0)
    args = {"arch": "melception", "num_classes": 7, "aux_logits": False, "width": 0.0625}
    model = Melception(**{k: v for k, v in args.items() if k != "arch"}).eval()
    classes = [f"sound {i}" for i in range(7)]
    path = tmp_path_factory.mktemp("melception") / "melception.pt"
    save_checkpoint(path, {"kind": "classifier", "model_args": args, "state_dict": model.state_dict(),
                           "classes": classes,
                           "normalization": {"mean": torch.full((80,), 0.5), "std": torch.full((80,), 0.2)}})
    return path, model, classes


def test_the_classifier_gives_the_top_five_classes(sampler, classifier_ckpt, tmp_path):
    import torch

    path, model, classes = classifier_ckpt
    with_classifier = Sampler(OmegaConf.merge(sampler.cfg, {"classifier": {"ckpt": str(path)}}), sampler.run_dir,
                              models=sampler.models)
    result = with_classifier.generate(str(write_clip(tmp_path / "clip.mp4", 2.0)), seed=1)
    [top5] = result.top5
    with torch.no_grad():
        x = (torch.from_numpy(result.mels[0])[None] - 0.5) / 0.2
        probs = torch.softmax(model(x), dim=-1)[0]
    order = probs.argsort(descending=True)[:5]
    assert list(top5) == [classes[i] for i in order]
    assert list(top5.values()) == pytest.approx(probs[order].tolist(), abs=1e-5)


def test_the_codec_tab_round_trips_any_audio(sampler, tmp_path):
    import soundfile

    sr = 44100
    t = np.arange(int(sr * 2.5)) / sr
    soundfile.write(str(tmp_path / "stereo.wav"), np.stack([np.sin(2 * np.pi * 300 * t),
                                                            np.sin(2 * np.pi * 500 * t)], 1) * 0.3, sr)
    report = sampler.codec_round_trip(str(tmp_path / "stereo.wav"))
    out, out_sr = soundfile.read(report.output)
    assert out_sr == 22050 and abs(out.size - 2.5 * 22050) <= 1
    assert (report.source_rate, report.source_channels) == (44100, 2) and report.bitrate_kbps > 0
    assert report.mel_l1 is not None and np.isfinite(report.snr_db)
    with pytest.raises(ValueError, match="upload an audio file"):
        sampler.codec_round_trip(None)


def test_errors_keep_their_reason():
    gr = pytest.importorskip("gradio", reason="gradio is the app extra: make install")
    from pipeline.app.app import page_error

    assert page_error(gr, ValueError("upload a video or pick a clip")).message == "upload a video or pick a clip"
    assert page_error(gr, KeyError("model_args")).message == "KeyError: 'model_args'"


# ------------------------------------------------------------------------------- the page in a real browser
CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright drives it, downloading no browser of its own
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
def test_the_page_in_headless_chromium(sampler, classifier_ckpt, tmp_path):
    """Load the page, upload a video, sample (the spectrogram streams in), get the audio, the mp4, the attention
    and the top-5; round-trip a wav in the codec tab; an error shows its reason. A screenshot per step."""
    pytest.importorskip("gradio", reason="gradio is the app extra: make install")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev extra: make install")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Debian's chromium is not installed ({CHROMIUM}): `make test` installs it as root "
                    f"(launch/apt_install.sh chromium)")
    import soundfile

    from pipeline.app.app import launch

    cfg = OmegaConf.merge(sampler.cfg, {"classifier": {"ckpt": str(classifier_ckpt[0])}, "port": _free_port(),
                                        "preview_columns": 2})
    page_sampler = Sampler(cfg, tmp_path / "run", models=sampler.models)
    app = build_app(cfg, tmp_path / "run", page_sampler)
    launch(app, cfg, tmp_path / "run", block=False)
    shots = tmp_path / "screenshots"
    print(f"screenshots in {shots}")
    video = write_clip(tmp_path / "upload.mp4", 2.0)
    sr = 48000
    wav = tmp_path / "speech.wav"
    soundfile.write(str(wav), 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(sr * 1.5)) / sr), sr)
    try:
        with sync_api.sync_playwright() as p:
            context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                           headless=True, args=FLAGS,
                                                           viewport={"width": 1400, "height": 1800})
            try:
                page = context.new_page()
                page.goto(app.local_url, wait_until="load", timeout=60_000)
                page.get_by_role("button", name="Generate").wait_for(timeout=60_000)
                assert page.title() == "SpecVQGAN sampler"
                page.screenshot(path=str(shots / "1_loaded.png"), full_page=True)
                # an error reaches the page with its reason
                page.locator("#generate").click()
                toast = page.get_by_text("upload a video or pick a clip of the data set").first
                toast.wait_for(state="visible", timeout=60_000)
                page.wait_for_timeout(500)  # the toast slides in
                page.screenshot(path=str(shots / "2_error.png"), full_page=True)
                # ... and API clients, with the same reason
                from gradio_client import Client

                with pytest.raises(Exception, match="upload a video or pick a clip"):
                    Client(app.local_url, verbose=False).predict(
                        None, None, "nopix", 1.0, 0, 1.0, 1, 2.0, False, 0, False, 0, api_name="/generate")
                page.locator("#video_in input[type=file]").set_input_files(str(video))
                page.locator("#video_in video").wait_for(timeout=60_000)
                page.screenshot(path=str(shots / "3_uploaded.png"), full_page=True)
                # record every spectrogram the page shows while the tokens arrive
                page.evaluate("""() => { window.__live = new Set();
                    new MutationObserver(() => document.querySelectorAll('#live img').forEach(
                        i => window.__live.add(i.src))).observe(document.body,
                        {subtree: true, childList: true, attributes: true}); }""")
                page.locator("#generate").click()
                page.locator("#video_0 video").wait_for(timeout=180_000)
                page.locator("#audio_0 audio").first.wait_for(state="attached", timeout=60_000)
                page.locator("#top5_0").get_by_text("sound").first.wait_for(timeout=60_000)
                page.screenshot(path=str(shots / "4_sampled.png"), full_page=True)
                assert page.evaluate("() => window.__live.size") >= 3  # streamed: the spectrogram grew
                assert page.locator("#video_0 video").get_attribute("src").split("?")[0].endswith(".mp4")
                for element in ("#spec_0 img", "#attention_0 img"):
                    assert page.locator(element).evaluate("i => i.complete && i.naturalWidth > 0"), element
                assert "attended most" in page.locator("#status").inner_text()
                # the codec tab
                page.get_by_role("tab", name="codec").click()
                page.locator("#codec_in input[type=file]").set_input_files(str(wav))
                page.locator("#codec_in audio").first.wait_for(state="attached", timeout=60_000)
                page.locator("#codec_go").click()
                page.locator("#codec_report").get_by_text("kbps").wait_for(timeout=120_000)
                page.locator("#codec_out audio").first.wait_for(state="attached", timeout=60_000)
                report = page.locator("#codec_report").inner_text()
                assert "48000 Hz" in report and "compression" in report and "SNR" in report
                page.screenshot(path=str(shots / "5_codec.png"), full_page=True)
            finally:
                context.close()
    finally:
        app.close()
    written = sorted((tmp_path / "run" / "requests").glob("*/*_sample_0.mp4"))
    assert written and sorted(p.name for p in shots.iterdir()) == [
        "1_loaded.png", "2_error.png", "3_uploaded.png", "4_sampled.png", "5_codec.png"]
