"""Onset detection and synchrony (pipeline.evaluate.events) on mels of real waveforms with known events, and the
expansion of a short clip's events as the mel stage loops it."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate.events import clip_events, event_hits, onset_frames, read_events, synchrony
from pipeline.media.mel import mel_spectrogram
from tests.helpers import bursts, write_clip

SR, HOP = 22050, 256


def test_onsets_of_real_bursts_are_found_within_a_frame():
    events = [0.5, 1.7, 3.0, 6.25, 8.1]
    mel = mel_spectrogram(bursts(events))[:, :848]
    found = onset_frames(mel)
    expected = np.array(events) * SR / HOP
    assert len(found) == len(events)
    assert np.abs(found - expected).max() <= 1.5
    assert onset_frames(mel_spectrogram(bursts([]))[:, :848]).size == 0  # hiss alone has no onset


def test_synchrony_is_high_for_the_clip_own_events_and_low_for_other_events():
    events = np.array([0.5, 1.7, 3.0, 6.25, 8.1]) * SR / HOP
    other = np.array([1.1, 2.4, 4.6, 7.3]) * SR / HOP  # another clip's events: > 16 frames from every burst
    mel = mel_spectrogram(bursts([0.5, 1.7, 3.0, 6.25, 8.1]))[:, :848]
    assert synchrony([(events, mel)])["rate"] == 1.0
    result = synchrony([(other, mel)])
    assert result["rate"] == 0.0 and result["events"] == 4 and result["onsets_per_second"] > 0
    empty = synchrony([(np.array([]), mel)])
    assert empty["rate"] is None and "no events" in empty["reason"]


def test_event_hits_tolerance_is_one_codebook_column():
    assert event_hits(np.array([100.0, 200.0]), np.array([116.0, 230.0])).tolist() == [True, False]
    assert event_hits(np.array([100.0]), np.array([])).tolist() == [False]


def test_clip_events_repeat_every_loop_period_and_move_into_the_crop():
    # a 4-s clip looped with a period of 90112 samples (352 frames): onsets 0.2 s and 2.32 s
    frames = clip_events([2.32, 0.2], period_samples=90112)
    first = 0.2 * SR / HOP - 6  # the centre crop of 860 -> 848 starts at frame 6
    expected = sorted(f + r * 352 for f in (first, 2.32 * SR / HOP - 6) for r in range(3)
                      if 0 <= f + r * 352 < 848)
    assert np.allclose(frames, expected)
    assert np.allclose(clip_events([0.2], None), [first])  # not looped: once


def test_read_events_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="events.json does not exist.*make_demo_data"):
        read_events(tmp_path / "events.json")
    (tmp_path / "bad.json").write_text('{"fps": 25}')
    with pytest.raises(ValueError, match="bad.json holds no `onsets_s`"):
        read_events(tmp_path / "bad.json")


def test_loop_period_follows_the_mel_stage(tmp_path):
    from pipeline.evaluate.events import loop_period_samples

    short = loop_period_samples(write_clip(tmp_path / "short.mp4", 2.0))
    assert short is not None and 2.0 * SR <= short <= 2.0 * SR + 3 * 1024  # the clip and its AAC padding
    assert loop_period_samples(write_clip(tmp_path / "long.mp4", 10.2)) is None  # not looped


def _mel_of_energies(db: list[float]) -> np.ndarray:
    """A [0, 1] mel (80, T) whose frames have these energies (dB): one level across the 80 bins."""
    level = (np.asarray(db, dtype=np.float64) - 10 * np.log10(80) + 80) / 100
    return np.repeat(level[None], 80, axis=0)


def test_a_blurred_onset_counts_once_its_sound_is_loud_and_a_faint_blip_does_not():
    """A reconstruction's onset rises over several frames: its steepest rise (at -24 dB, like the demo codebook's
    chirps) comes before the sound is loud (-10 dB), and it is an onset; a rise that never reaches -20 dB is not."""
    silence = [-60.0] * 100
    blurred = _mel_of_energies(silence + [-45, -32, -24, -19, -12] + [-10] * 30 + silence)
    assert onset_frames(blurred).tolist() == [102]  # the steepest rise, 2 frames after the sound starts
    faint = _mel_of_energies(silence + [-45, -32, -28] + [-30] * 30 + silence)
    assert onset_frames(faint).size == 0
