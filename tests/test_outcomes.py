"""Every stage says what it did, on the screen and in its log file alike: each item written, skipped (already there)
or failed, and a summary (pipeline/runs/outcomes.py). A rerun of sound for a video says what it skipped, in
sample.log too (before: nothing, and sample.log stayed empty)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from pipeline.runs.outcomes import Outcomes
from tests.helpers import ROOT, features_preset, make_codebook, make_transformer, write_clip


def test_each_item_and_the_summary_go_to_the_screen_and_the_log_file(tmp_path, capsys):
    handler = logging.FileHandler(tmp_path / "stage.log")
    logging.getLogger().addHandler(handler)
    try:
        done = Outcomes("stage")
        done.written(tmp_path / "a.wav")
        done.skipped(tmp_path / "b.wav")
        done.failed("c.mp4", ValueError("truncated"))
        line = done.finish(tmp_path)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    said = [f"[stage] written: {tmp_path / 'a.wav'}", f"[stage] skipped (already there): {tmp_path / 'b.wav'}",
            "[stage] failed: c.mp4: ValueError: truncated",
            f"[stage] 1 written, 1 skipped (already there), 1 failed; in {tmp_path}"]
    assert line == said[-1] and done.any_failed
    assert capsys.readouterr().out.splitlines() == said  # once each on the screen
    assert (tmp_path / "stage.log").read_text().splitlines() == said  # and in the log file


@pytest.mark.slow
def test_a_rerun_for_a_video_says_what_it_skipped_in_its_log(outputs, tmp_path):
    codebook = make_codebook(tmp_path / "codebook.pt")
    transformer = make_transformer(tmp_path / "t.pt", codebook, features_preset("resnet50_tiny"), 1)
    video = write_clip(tmp_path / "clip.mp4", 1.5)
    env = {**os.environ, "SPECVQGAN_OUTPUTS": str(outputs), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "stages.sample", "dataset=demo", "logger=none", "device=cpu", f"video={video}",
               f"transformer.ckpt={transformer}", "feature_weights=random", "samples_per_clip=2"]
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert first.returncode == 0, first.stderr[-3000:]
    (log,) = (outputs / "sample" / "demo").rglob("sample.log")
    assert "written: " in first.stdout and "2 written, 0 skipped (already there), 0 failed" in first.stdout
    assert "2 written, 0 skipped (already there), 0 failed" in log.read_text()
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    mp4s = [log.parent / f"clip_sample_{k}.mp4" for k in (0, 1)]
    for text in (again.stdout, log.read_text()):
        assert all(f"[sample] skipped (already there): {mp4}" in text for mp4 in mp4s), text[-2000:]
        assert "0 written, 2 skipped (already there), 0 failed" in text
