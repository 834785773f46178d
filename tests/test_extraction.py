"""Extraction at data-set scale: missing vs corrupt sources, truncated mp4s with an intact header, one failure
manifest per run with a record per attempt, and an unwritable output folder failing at start."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.extract.extract_mels import run
from pipeline.media.source import ClipError, check_source
from tests.helpers import compose, faststart_truncated, write_clip


def _cfg(*overrides: str):
    return compose("extract_mels", "dataset=demo", "logger=none", "chain=direct", *overrides)


def test_truncated_with_intact_header_is_corrupt_not_looped(tmp_path):
    clip = faststart_truncated(tmp_path / "cut.mp4")
    import av

    with av.open(str(clip)) as container:  # the header still promises the whole clip
        assert container.duration / 1e6 == pytest.approx(10.0, abs=0.2)
    with pytest.raises(ClipError, match=r"truncated, its header declares 10.\d+ s but its data ends at [3-6]\.") as e:
        check_source(clip)
    assert e.value.kind == "corrupt"
    check_source(write_clip(tmp_path / "short.mp4", 2.0, audio="chirp"))  # a short clip is fine (it is looped)
    with pytest.raises(ClipError, match="missing: .*absent.mp4 is listed but does not exist") as e:
        check_source(tmp_path / "absent.mp4")
    assert e.value.kind == "missing"


def test_failures_are_kept_per_attempt_and_a_rerun_does_only_what_is_missing(outputs, tmp_path):
    data = outputs / "demo_data"
    write_clip(data / "videos" / "dog" / "good.mp4", 2.0, audio="chirp")
    faststart_truncated(data / "videos" / "dog" / "cut.mp4")
    (data / "demo_train.txt").write_text("dog/good\ndog/cut\ndog/gone\n")
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit, match=r"1 written, 0 skipped.*2 failed \(1 corrupt, 1 missing\)"):
        run(_cfg("split=train"), run_dir=run_dir)
    mel = data / "features" / "dog" / "melspec_10s_22050hz" / "good_mel.npy"
    assert np.load(mel).shape == (80, 860) and not (mel.parent / "cut_mel.npy").exists()
    stamp = mel.stat().st_mtime_ns

    with pytest.raises(SystemExit, match=r"0 written, 1 skipped.*2 failed"):
        run(_cfg("split=train"), run_dir=run_dir)
    assert mel.stat().st_mtime_ns == stamp
    records = [json.loads(line) for line in (run_dir / "failures.jsonl").read_text().splitlines()]
    assert sorted((r["item"], r["kind"]) for r in records) == [("dog/cut", "corrupt"), ("dog/cut", "corrupt"),
                                                               ("dog/gone", "missing"), ("dog/gone", "missing")]
    attempts = {json.dumps(r["attempt"], sort_keys=True) for r in records}
    assert len(attempts) == 2  # one record per clip and attempt, each attempt told apart
    assert all({"id", "started", "host", "pid", "slurm_job"} <= set(r["attempt"]) for r in records)


def test_an_unwritable_output_folder_fails_before_any_clip(outputs, tmp_path):
    write_clip(outputs / "demo_data" / "videos" / "dog" / "good.mp4", 2.0, audio="chirp")
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the features folder should be")
    with pytest.raises(PermissionError, match=f"output folder {blocker}/dog/melspec_10s_22050hz cannot be written"):
        run(_cfg(f"features_dir={blocker}"), run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "failures.jsonl").exists()
