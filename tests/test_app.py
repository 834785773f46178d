"""The interactive sampler (pipeline/app/) on tiny models made on the spot: what the page calls for an uploaded video
(samples + mp4s + spectrograms + the codebook reconstruction), a data set clip (its stored features) and a long video
(the sample stage's own sampling, equal files), its input errors, the attention plot and the plain-language status,
the stage printing its address, and the page in headless Chromium."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from pipeline.app.app import build_app, done_status, import_gradio, page_settings, progress_status
from pipeline.app.figures import attention_plot
from pipeline.app.session import AppSampler, Preview
from pipeline.generate.loading import load_user_models
from pipeline.generate.settings import SamplingSettings
from pipeline.generate.user_clip import sample_user_clip
from tests.helpers import ROOT, compose, features_preset, make_codebook, make_dataset, make_transformer, write_clip

SETTINGS = SamplingSettings("nopix", 1.0, 8, None)
PRESS = dict(samples=1, max_seconds=None, seed=0, class_id=None, reconstruct=False)  # one press of the button


def _app_cfg(ckpt: Path, melgan: Path, *overrides: str):
    return compose("app", "dataset=demo", "logger=none", "device=cpu", f"transformer.ckpt={ckpt}",
                   f"vocoder.ckpt={melgan}", *overrides)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("app")
    return make_transformer(tmp / "t_rn50.pt", make_codebook(tmp / "codebook.pt"), features_preset("resnet50_tiny"))


@pytest.fixture(scope="module")
def sampler(tmp_path_factory, checkpoint, original_fixtures) -> AppSampler:
    cfg = _app_cfg(checkpoint, original_fixtures / "melgan_netG_small.pt")
    return AppSampler(cfg, tmp_path_factory.mktemp("app_run"), load_user_models(cfg))


def press(sampler: AppSampler, video, clip_id, settings: SamplingSettings, **options):
    """One press of "Generate" to its end: the Result (the stream's last item)."""
    return list(sampler.stream(video, clip_id, settings, **{**PRESS, **options}))[-1]


def _with(sampler: AppSampler, **changes) -> AppSampler:
    """The same models under another config (its run folder, classifier, ...)."""
    run_dir = changes.pop("run_dir", sampler.run_dir)
    return AppSampler(OmegaConf.merge(sampler.cfg, changes), run_dir, sampler.models)


def test_an_uploaded_video_gives_sounds_videos_spectrograms_and_a_reconstruction(sampler, tmp_path):
    video = write_clip(tmp_path / "clip.mp4", 2.0)
    result = press(sampler, str(video), None, SamplingSettings("half", 0.9, 8, 0.9), samples=2, seed=3,
                   reconstruct=True)
    assert len(result.waves) == len(result.mels) == len(result.mp4s) == 2
    for wave, mel, mp4, wav in zip(result.waves, result.mels, result.mp4s, result.wavs):
        assert wave.dtype == np.float32 and abs(len(wave) / 22050 - 2.0) < 0.05  # cut to the video's length
        assert mel.shape == (80, 848)
        assert mp4.exists() and wav.exists() and mp4.parent == result.folder
    assert not np.array_equal(result.waves[0], result.waves[1])  # each sample its own seed
    recon = result.reconstruction
    assert recon["mel"].shape == (80, 848) and abs(len(recon["wave"]) / 22050 - 2.0) < 0.05
    assert recon["wav"].exists()
    again = press(sampler, str(video), None, SETTINGS, seed=3, max_seconds=1.5)
    assert again.folder != result.folder and abs(len(again.waves[0]) / 22050 - 1.5) < 0.05  # a folder per press


def test_a_data_set_clip_uses_its_stored_features(sampler, outputs):
    root = make_dataset(outputs / "demo_data", train=1, valid=1)
    from pipeline.files.writes import save_pickle

    for label in ("chirp", "noise"):  # features of the checkpoint's kind (resnet50_tiny, 256 dims)
        save_pickle(root / "features" / label / "feature_resnet50_tiny_dim256_21.5fps" / "video_00001.pkl",
                    np.zeros((215, 256), np.float32))
    here = _with(sampler, dataset={"root": str(root)})  # the same models, the data set made here
    assert here.clips() == ["chirp/video_00001", "noise/video_00001"]
    result = press(here, None, "noise/video_00001", SETTINGS)
    assert result.mp4s == [None] and result.mels[0].shape == (80, 848) and result.video_seconds is None
    with pytest.raises(ValueError, match="needs the clip's video"):
        press(here, None, "noise/video_00001", SETTINGS, reconstruct=True)
    with pytest.raises(ValueError, match="upload a video or pick a clip"):
        press(here, None, None, SETTINGS)


def test_the_page_builds_and_without_gradio_the_error_names_the_extra(sampler, monkeypatch):
    app = build_app(sampler)  # gradio is in `make install` (the app extra)
    assert type(app).__name__ == "Blocks"
    ids = {getattr(block, "elem_id", None) for block in app.blocks.values()}
    assert {"generate", "video_in", "live", "status", "seconds", "attention_0", "codec_in", "codec_go"} <= ids, ids
    lengths = [b for b in app.blocks.values() if "second" in str(getattr(b, "label", "")).lower()]
    assert [b.elem_id for b in lengths] == ["seconds"]  # one control for the length
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install -e \.\[app\]"):
        import_gradio()
    with pytest.raises(ImportError, match=r"pip install -e \.\[app\]"):
        build_app(sampler)


# --------------------------------------------------------------- streaming, the stage's sampling, attention
def test_streamed_sampling_fills_the_spectrogram_and_ends_as_the_sample_stage(sampler, tmp_path):
    video = write_clip(tmp_path / "clip.mp4", 2.0)
    items = list(_with(sampler, preview_columns=10).stream(str(video), None, SETTINGS,
                                                            **{**PRESS, "samples": 2, "seed": 5}))
    previews, result = items[:-1], items[-1]
    assert all(isinstance(p, Preview) for p in previews) and len(result.waves) == 2
    for k in (0, 1):
        steps = [p for p in previews if p.sample == k]
        assert [p.done for p in steps] == [0, 50, 100, 150, 200, 250, 265]  # every 10 columns of 5 tokens, the end
        dark = [int((p.mel.max(axis=0) == 0).sum()) for p in steps]  # mel columns not sampled yet
        assert dark[0] == 848 and dark[-1] < 848 and all(a > b for a, b in zip(dark, dark[1:-1]))
        assert steps[-1].seconds == pytest.approx(53 * 16 / (22050 / 256))
    # the same condition, seeds, sampler and files as `stages.sample video=...`
    expected = sample_user_clip(sampler.models, video, [tmp_path / "stage" / f"s_{k}" for k in (0, 1)], SETTINGS,
                                seed=5, max_seconds=None)
    for k in (0, 1):
        assert np.array_equal(result.mels[k], expected[k]["mel"])
        assert np.array_equal(result.waves[k], expected[k]["wave"])
        att, times = result.attention[k], result.attention_seconds[k]
        S = int(sampler.models.args["feat_sample_size"])  # the condition's frames
        assert att.shape == times.shape == (S,) and (att >= 0).all() and 0 < att.sum() <= 1 + 1e-5
        assert 0 < times[0] < times[-1] < 9.9  # the frames over the model's 9.85-s window
    assert result.top5 == [None, None]  # no classifier configured


def test_a_long_video_sounds_on_the_page_as_from_the_stage(sampler, tmp_path):
    """A 12-s video: the page samples it as `stages.sample` does (the sliding window, the condition following the
    picture), the same tokens and files, and its attention plot covers the last window's frames."""
    video = write_clip(tmp_path / "long.mp4", 12.0)
    result = press(sampler, str(video), None, SETTINGS, seed=7)
    expected = sample_user_clip(sampler.models, video, [tmp_path / "stage" / "long_sample_0"], SETTINGS, seed=7,
                                max_seconds=None)[0]
    assert expected["clip"].window["slide_cond"]  # the stage's long-video path
    assert result.mels[0].shape == expected["mel"].shape == (80, 16 * 65)
    assert np.array_equal(result.mels[0], expected["mel"]) and np.array_equal(result.waves[0], expected["wave"])
    assert abs(len(result.waves[0]) / 22050 - 12.0) < 0.05
    times = result.attention_seconds[0]
    assert times[0] > 2.0 and times[-1] < 12.2  # the last window: its frames from 12 - 9.85 s on


def test_the_attention_plot_is_readable():
    weights = np.array([0.05, 0.4, 0.1, 0.02, 0.01])
    seconds = (np.arange(5) + 0.5) * 9.85 / 5
    image = attention_plot(weights, seconds, video_seconds=4.0)
    assert image.shape == (280, 900, 3) and image.dtype == np.uint8
    bars = np.all(image == (0xE0, 0x78, 0x14), axis=-1)  # the bars' colour
    columns = np.flatnonzero(bars.any(axis=0))
    assert 0.5 < columns.size / 900 < 0.9  # five bars, each most of its frame's width
    heights = [int(bars[:, c].sum()) for c in columns]
    assert max(heights) > 150 and min(heights) >= 1  # the largest weight fills most of the height
    tallest = int(columns[np.argmax(heights)])
    assert 180 < tallest < 450  # the second frame (about 3 s) on the time axis
    assert np.any(np.all(image == (224, 224, 224), axis=-1))  # past the video's end: shaded


def test_the_status_speaks_plainly(sampler, tmp_path):
    from pipeline.app.session import Result

    assert progress_status(Preview(0, 120, 265, np.zeros((80, 848)), 4.27), 2) == (
        "Sample 1 of 2: 120 of 265 sound tokens (45%), the first 4.3 s of sound")
    result = Result(tmp_path, 2.0, waves=[np.zeros(44100, np.float32)], attention=[np.array([0.1, 0.5, 0.2])],
                    attention_seconds=[np.array([1.0, 3.0, 5.0])])
    text = done_status(result)
    assert text.startswith(f"Done: 1 sound of 2.0 s, saved in `{tmp_path}`.")
    assert "looked most at the video around 3.0 s, past the video's end (where its features are padding)." in text
    assert "position" not in text and "condition" not in text
    result.video_seconds = 4.0
    assert "around 3.0 s. The plot below each sample shows where it looked." in done_status(result)
    assert page_settings("nopix", 0.8, 0, 1.0) == SamplingSettings("nopix", 0.8, None, None)  # 0 and 1 mean off


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
    result = press(_with(sampler, classifier={"ckpt": str(path)}), str(write_clip(tmp_path / "clip.mp4", 2.0)), None,
                   SETTINGS, seed=1)
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
    assert report.mel_l1 is not None and np.isfinite(report.lsd_db)
    with pytest.raises(ValueError, match="upload an audio file"):
        sampler.codec_round_trip(None)


def test_errors_keep_their_reason():
    gr = pytest.importorskip("gradio", reason="gradio is the app extra: make install")
    from pipeline.app.app import page_error

    assert page_error(gr, ValueError("upload a video or pick a clip")).message == "upload a video or pick a clip"
    assert page_error(gr, KeyError("model_args")).message == "KeyError: 'model_args'"


@pytest.mark.slow
def test_the_stage_prints_its_address(checkpoint, original_fixtures, outputs):
    """`python -m stages.app port=0`: the page comes up on a free port and the stage says where."""
    pytest.importorskip("gradio", reason="gradio is the app extra: make install")
    import httpx

    env = {**os.environ, "SPECVQGAN_OUTPUTS": str(outputs), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "stages.app", "dataset=demo", "logger=none", "device=cpu",
                                f"transformer.ckpt={checkpoint}", "port=0"], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, lines, url = time.monotonic() + 180, [], None
        while url is None and time.monotonic() < deadline and process.poll() is None:
            line = process.stdout.readline()
            lines.append(line)
            if line.startswith("[app] the page is up at "):
                url = line.split(" at ", 1)[1].split()[0]
        assert url is not None, "".join(lines)[-3000:]
        assert url.startswith("http://127.0.0.1:")
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and "SpecVQGAN sampler" in page.text
    finally:
        process.terminate()
        process.wait(timeout=60)
        process.stdout.close()


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
    plot (readable: at its drawn size) and the top-5; round-trip a wav in the codec tab; an error shows its
    reason. A screenshot per step (SPECVQGAN_SCREENSHOTS=DIR keeps them)."""
    pytest.importorskip("gradio", reason="gradio is the app extra: make install")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev extra: make install")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Debian's chromium is not installed ({CHROMIUM}): `make test` installs it as root "
                    f"(launch/apt_install.sh chromium)")
    import soundfile

    from pipeline.app.app import launch

    page_sampler = _with(sampler, classifier={"ckpt": str(classifier_ckpt[0])}, port=_free_port(),
                         preview_columns=2, run_dir=tmp_path / "run")
    app = build_app(page_sampler)
    launch(app, page_sampler)
    shots = Path(os.environ.get("SPECVQGAN_SCREENSHOTS") or tmp_path / "screenshots")
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
                        None, None, "nopix", 1.0, 0, 1.0, 1, 2.0, 0, False, 0, api_name="/generate")
                page.locator("#video_in input[type=file]").set_input_files(str(video))
                page.locator("#video_in video").wait_for(timeout=60_000)
                page.screenshot(path=str(shots / "3_uploaded.png"), full_page=True)
                # record every spectrogram and status the page shows while the tokens arrive
                page.evaluate("""() => { window.__live = new Set(); window.__status = new Set();
                    new MutationObserver(() => {
                        document.querySelectorAll('#live img').forEach(i => window.__live.add(i.src));
                        const s = document.querySelector('#status'); if (s) window.__status.add(s.innerText);
                    }).observe(document.body, {subtree: true, childList: true, attributes: true,
                                               characterData: true}); }""")
                page.locator("#generate").click()
                page.locator("#video_0 video").wait_for(timeout=180_000)
                page.locator("#audio_0 audio").first.wait_for(state="attached", timeout=60_000)
                page.locator("#top5_0").get_by_text("sound").first.wait_for(timeout=60_000)
                page.locator("#attention_0 img").wait_for(timeout=60_000)
                page.locator("#attention_0").scroll_into_view_if_needed()
                page.screenshot(path=str(shots / "4_sampled.png"), full_page=True)
                assert page.evaluate("() => window.__live.size") >= 3  # streamed: the spectrogram grew
                statuses = page.evaluate("() => [...window.__status]")
                assert any(s.startswith("Sample 1 of 1:") and "sound tokens" in s for s in statuses), statuses
                assert page.locator("#video_0 video").get_attribute("src").split("?")[0].endswith(".mp4")
                assert page.locator("#spec_0 img").evaluate("i => i.complete && i.naturalWidth > 0")
                plot = page.locator("#attention_0 img")
                natural = plot.evaluate("i => [i.naturalWidth, i.naturalHeight]")
                shown = plot.bounding_box()
                assert natural == [900, 280], natural  # the plot as drawn: axes, labels, bars
                assert shown["width"] >= 600 and shown["height"] >= 180, shown  # shown large enough to read
                plot.screenshot(path=str(shots / "4_attention.png"))
                status = page.locator("#status").inner_text()
                assert status.startswith("Done: 1 sound of 2.0 s") and "the model looked most at the video" in status
                # the codec tab
                page.get_by_role("tab", name="codec").click()
                page.locator("#codec_in input[type=file]").set_input_files(str(wav))
                page.locator("#codec_in audio").first.wait_for(state="attached", timeout=60_000)
                page.locator("#codec_go").click()
                page.locator("#codec_report").get_by_text("kbps").wait_for(timeout=120_000)
                page.locator("#codec_out audio").first.wait_for(state="attached", timeout=60_000)
                report = page.locator("#codec_report").inner_text()
                assert "48000 Hz" in report and "compression" in report and "log-spectral distance" in report
                page.screenshot(path=str(shots / "5_codec.png"), full_page=True)
            finally:
                context.close()
    finally:
        app.close()
    written = sorted((tmp_path / "run" / "requests").glob("*/*_sample_0.mp4"))
    assert written and sorted(p.name for p in shots.iterdir()) == [
        "1_loaded.png", "2_error.png", "3_uploaded.png", "4_attention.png", "4_sampled.png", "5_codec.png"]
