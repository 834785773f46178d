"""A run folder belongs to one run: it records its config and git commit, a start with another config refuses
to resume there (naming the keys), and other data never shares a folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.files.writes import save_torch
from pipeline.runs.folders import run_name
from pipeline.runs.identity import RunFolderMismatch, check_run_folder, record_start
from tests.helpers import ROOT, make_codebook, make_dataset


def _train(outputs: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPECVQGAN_OUTPUTS": str(outputs), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "stages.train_transformer", "dataset=demo", "logger=none",
                           "trainer=cpu", "transformer.feat_sample_size=1", "transformer.roll_columns=false",
                           "trainer.val_every=2", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)


@pytest.mark.slow
def test_a_changed_config_refuses_to_resume_into_the_run_folder(outputs):
    make_dataset(outputs / "demo_data")
    codebook = make_codebook(outputs / "codebook.pt")
    first = _train(outputs, f"codebook.ckpt={codebook}", "trainer.max_steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    run = outputs / "train_transformer" / "demo" / "transformer.feat_sample_size-1+transformer.roll_columns-false"
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["trainer"]["grad_accum"] == 1
    assert len(record["starts"]) == 1 and {"commit", "dirty", "host"} <= set(record["starts"][0])
    before = {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()}

    other_codebook = make_codebook(outputs / "other" / "codebook.pt")  # codebook paths stay out of folder names
    refused = _train(outputs, f"codebook.ckpt={other_codebook}", "trainer.max_steps=4", "trainer.grad_accum=2")
    assert refused.returncode != 0
    message = next(line for line in refused.stderr.splitlines() if "holds a run started" in line)
    assert f"run folder {run} holds a run started with another configuration" in message
    assert "codebook.ckpt:" in message and "trainer.grad_accum: 1 there, 2 now" in message
    assert "force_resume=true" in message and "trainer.max_steps" not in message  # step limits may change
    assert {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()} == before
    assert len(json.loads((run / "run.json").read_text())["starts"]) == 1

    resumed = _train(outputs, f"codebook.ckpt={codebook}", "trainer.max_steps=4")  # only a step limit changed
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 2 (epoch" in (run / "train_transformer.log").read_text()
    assert len(json.loads((run / "run.json").read_text())["starts"]) == 2


def test_other_split_files_feature_kinds_or_data_roots_get_their_own_folders():
    base = run_name(["dataset=demo", "transformer.feat_sample_size=5"])
    names = {base}
    for data in ("dataset.splits.train=/data/a/demo_train.txt", "dataset.splits.train=/data/b/demo_train.txt",
                 "features=resnet50", "paths.data=/scratch/data", "dataset.root=/scratch/demo"):
        name = run_name(["dataset=demo", "transformer.feat_sample_size=5", data])
        assert name not in names, data
        names.add(name)
    assert "demo_train.txt" in run_name(["dataset.splits.train=/data/a/demo_train.txt"])
    assert run_name(["dataset=vas", "paths.outputs=/x", "force_resume=true"]) == "default"
    # a sweep job and a plain run of the same overrides share their folder (the sweeper writes `False`)
    assert run_name(["transformer.roll_columns=False"]) == run_name(["transformer.roll_columns=false"])


def test_the_check_reads_old_folders_from_last_pt_and_can_be_forced(tmp_path):
    config = {"seed": 1, "trainer": {"max_steps": 5, "grad_accum": 1}, "logger": {"name": "none"},
              "force_resume": False}
    assert check_run_folder(tmp_path, config) is None  # a fresh folder
    save_torch(tmp_path / "checkpoints" / "last.pt", {"format": "specvqgan-pipeline", "config": config})
    changed = {**config, "seed": 2, "trainer": {"max_steps": 9, "grad_accum": 1}, "logger": {"name": "wandb"}}
    with pytest.raises(RunFolderMismatch, match=r"last.pt\): seed: 1 there, 2 now\. Resuming"):
        check_run_folder(tmp_path, changed)
    forced = {**changed, "force_resume": True}
    assert check_run_folder(tmp_path, forced) is None
    record_start(tmp_path, forced, None)
    assert json.loads((tmp_path / "run.json").read_text())["config"]["seed"] == 2
    assert check_run_folder(tmp_path, {**changed, "trainer": {"max_steps": 20, "grad_accum": 1}}) is not None
