"""The extract_mels stage on tiny generated clips: layout, looping, failures, skipping, Hydra entry point."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.extract.extract_mels import run
from tests.helpers import ROOT, SR, compose, write_clip


@pytest.fixture
def demo_set(outputs: Path) -> Path:
    """A demo-layout data set under paths.outputs: good, short, silent, video-only and truncated clips."""
    videos = outputs / "demo_data" / "videos"
    write_clip(videos / "dog" / "good.mp4", 10.2, audio="chirp")
    write_clip(videos / "dog" / "short.mp4", 2.0, audio="chirp")
    write_clip(videos / "cat" / "silent.mp4", 3.0, audio="silent")
    write_clip(videos / "cat" / "mute.mp4", 1.0, audio=None)
    truncated = write_clip(videos / "cat" / "truncated.mp4", 3.0, audio="chirp")
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    return outputs / "demo_data"


def _cfg(*overrides: str):
    return compose("extract_mels", "dataset=demo", "logger=none", *overrides)


def test_stage_layout_failures_looping_and_skip(demo_set, tmp_path, caplog):
    run_dir = tmp_path / "run"
    caplog.set_level(logging.WARNING, logger="pipeline.extract.extract_mels")
    with pytest.raises(SystemExit, match="2 written, 0 skipped.*3 failed"):
        run(_cfg("chain=direct"), run_dir=run_dir)

    mels = demo_set / "features" / "dog" / "melspec_10s_22050hz"
    for name in ("good", "short"):
        mel, wave = np.load(mels / f"{name}_mel.npy"), np.load(mels / f"{name}_audio.npy")
        assert mel.shape == (80, 860) and mel.dtype == np.float32 and 0 <= mel.min() and mel.max() <= 1
        assert wave.shape == (220500,) and wave.dtype == np.float32
    assert not list(demo_set.rglob("*.tmp")) and not (demo_set / "features" / "cat").exists()

    # the 2-s clip is cycled, not zero-padded: its mel repeats with a period of about 2 s (172 frames)
    mel = np.load(mels / "short_mel.npy")
    errors = {lag: np.abs(mel[:, 20:600] - mel[:, 20 + lag:600 + lag]).mean() for lag in range(120, 240)}
    lag = min(errors, key=errors.get)
    assert errors[lag] < 2e-3 and abs(lag - 2 * SR / 256) < 12 and mel[:, 800:].mean() > 0.1
    assert any("dog/short" in r.getMessage() and "2.0" in r.getMessage() and "looped" in r.getMessage()
               for r in caplog.records)
    assert not any("dog/good" in r.getMessage() for r in caplog.records)

    lines = (run_dir / "failures.jsonl").read_text().splitlines()
    reasons = {r["item"]: r["reason"] for r in map(json.loads, lines)}
    assert set(reasons) == {"cat/silent", "cat/mute", "cat/truncated"}
    assert reasons["cat/silent"].startswith("silent")
    assert reasons["cat/mute"].startswith("no audio stream") and "mute.mp4" in reasons["cat/mute"]
    assert reasons["cat/truncated"].startswith("corrupt file") and "truncated.mp4" in reasons["cat/truncated"]

    # a second run skips the finished clips and retries the failed ones
    stamp = (mels / "good_mel.npy").stat().st_mtime_ns
    with pytest.raises(SystemExit, match="0 written, 2 skipped.*3 failed"):
        run(_cfg("chain=direct"), run_dir=run_dir)
    assert (mels / "good_mel.npy").stat().st_mtime_ns == stamp


def test_stage_original_chain_split_and_shards(demo_set, tmp_path):
    (demo_set / "demo_train.txt").write_text("dog/short\ndog/good\n")
    run(_cfg("chain=original", "split=train", "shard=1", "num_shards=2"), run_dir=tmp_path)  # dog/good only
    mels = demo_set / "features" / "dog" / "melspec_10s_22050hz"
    assert sorted(p.name for p in mels.iterdir()) == ["good_audio.npy", "good_mel.npy"]
    from pipeline.media.mel import extract_mel

    assert _cfg().features_dir == str(demo_set / "features")  # the mels live beside the demo's features
    direct = extract_mel(demo_set / "videos/dog/good.mp4", chain="direct")
    assert np.abs(np.load(mels / "good_mel.npy") - direct).mean() < 0.03
    with pytest.raises(ValueError, match="split='test' is not in dataset.splits"):
        run(_cfg("split=test"), run_dir=tmp_path)
    with pytest.raises(ValueError, match="chain='fast' is unknown"):
        run(_cfg("chain=fast"), run_dir=tmp_path)


@pytest.mark.slow
def test_stage_through_hydra(outputs):
    write_clip(outputs / "demo_data" / "videos" / "dog" / "a.mp4", 2.5, audio="chirp")
    env = {**os.environ, "SPECVQGAN_OUTPUTS": str(outputs), "WANDB_MODE": "disabled"}
    result = subprocess.run([sys.executable, "-m", "stages.extract_mels", "dataset=demo", "logger=none",
                             "chain=direct", "num_workers=1"], check=False, cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 written, 0 skipped (already there), 0 failed" in result.stdout
    assert np.load(outputs / "demo_data/features/dog/melspec_10s_22050hz/a_mel.npy").shape == (80, 860)
    run_dir = outputs / "extract_mels" / "demo" / "chain-direct"
    assert (run_dir / ".hydra" / "config.yaml").exists() and not (run_dir / "failures.jsonl").exists()
