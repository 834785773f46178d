"""report.html (pipeline.evaluate.report) rendered by a real headless Chromium (Debian's `chromium`, driven by
Playwright
without a browser download of its own): the page renders, its spectrograms load, its audio and video elements
are there and their files decode, and every src/href is a relative link to a file that exists."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluate.events import onset_frames
from pipeline.evaluate.report import ASSETS, ClipView, local_links, write_report
from pipeline.media.audio import save_wav
from pipeline.media.mel import mel_spectrogram
from tests.helpers import bursts, write_clip

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SR, HOP = 22050, 256


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A report of two clips: mels of real waveforms with known events, their wavs and a small mp4."""
    folder = tmp_path_factory.mktemp("report")
    clips = []
    for i, (events_s, label) in enumerate([([0.5, 2.0, 4.1], "chirp"), ([1.2, 3.3], "noise")]):
        real = bursts(events_s, seed=i)
        fake = bursts([t + 0.05 for t in events_s], seed=10 + i)
        real_mel, fake_mel = mel_spectrogram(real)[:, :848], mel_spectrogram(fake)[:, :848]
        save_wav(folder / ASSETS / f"real_{i}.wav", real, SR)
        save_wav(folder / "cls_0" / f"video_{i}_mel_sample_0.wav", fake, SR)
        video = write_clip(folder / ASSETS / f"video_{i}.mp4", 2.0, fps=10, size=32)
        clips.append(ClipView(f"{label}/video_{i}", label, real_mel, fake_mel, np.array(events_s) * SR / HOP,
                              onset_frames(real_mel), onset_frames(fake_mel), f"{ASSETS}/real_{i}.wav",
                              f"cls_0/video_{i}_mel_sample_0.wav", video.relative_to(folder).as_posix(), label))
    (folder / "metrics.json").write_text("{}")
    metrics = {"samples_dir": str(folder), "dataset": "demo", "split": "valid", "num_fakes": 2, "num_reals": 2,
               "class_match_rate": 1.0, "frechet_inception_distance": None,
               "notes": {"frechet_inception_distance": "too few samples"},
               "targets": [{"measure": "class match", "value": 1.0, "baseline": 0.25, "baseline_is": "chance",
                            "target": ">= 0.9", "met": True, "note": ""},
                           {"measure": "synchrony", "value": 0.5, "baseline": 0.3, "baseline_is": "shuffled",
                            "target": ">= 0.7", "met": False, "note": ""}]}
    return write_report(folder, metrics, clips)


def test_every_link_is_relative_and_exists(report):
    links = local_links(report)
    assert len(links) == 2 * 2 + 2 * 2 + 2 + 1  # PNGs, wavs, mp4s, metrics.json
    for link in links:
        assert not link.startswith(("/", "http:", "https:", "file:")), link
        assert (report.parent / link).is_file(), link
    text = report.read_text()
    assert "too few samples" in text and "class='met'" in text and "class='missed'" in text


@pytest.mark.browser
def test_report_renders_in_headless_chromium(report, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev extra: make install")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Debian's chromium is not installed ({CHROMIUM}): `make test` installs it as root "
                    f"(launch/apt_install.sh chromium)")
    from PIL import Image

    failed: list[str] = []
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                       headless=True, args=FLAGS, viewport={"width": 1400,
                                                                                            "height": 900})
        try:
            page = context.new_page()
            # a media element aborts its own request once it has what it needs (ERR_ABORTED); anything else fails
            page.on("requestfailed", lambda request: request.failure == "net::ERR_ABORTED"
                    or failed.append(f"{request.url}: {request.failure}"))
            page.goto(report.as_uri(), wait_until="load", timeout=60_000)
            assert page.title() == "SpecVQGAN evaluation"
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.naturalWidth])")
            assert len(images) == 4 and all(width == 848 for _, width in images), images
            assert page.locator("audio").count() == 4 and page.locator("video").count() == 2
            # every audio and video file loads and decodes: its duration becomes known
            durations = page.evaluate("""() => Promise.all([...document.querySelectorAll('audio, video')].map(
                el => new Promise(resolve => {
                    el.addEventListener('loadedmetadata', () => resolve([el.getAttribute('src'), el.duration]));
                    el.addEventListener('error', () => resolve([el.getAttribute('src'), -1]));
                    el.preload = 'metadata'; el.load();
                })))""")
            for src, duration in durations:
                assert duration > 1.0, (src, duration)
            links = page.eval_on_selector_all("[src], [href]",
                                              "els => els.map(e => e.getAttribute('src') || e.getAttribute('href'))")
            assert sorted(links) == sorted(local_links(report))
            shot = page.screenshot(full_page=True)
        finally:
            context.close()
    assert not failed, failed
    image = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), dtype=np.float64)
    assert image.shape[0] > 900 and image.std() > 20  # spectrograms and tables, not a blank page
    assert (np.abs(image - [0, 230, 255]).sum(axis=2) < 60).sum() > 100  # the cyan event markers are drawn
