"""Preemption without SLURM: SIGTERM between checkpoints saves the step the run is at and exits; a rerun resumes
there (same optimiser state, same W&B run) after removing what a killed checkpoint write left behind."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, make_codebook, make_dataset


def _start(outputs: Path, codebook: Path, max_steps: int) -> subprocess.Popen:
    env = {**os.environ, "SPECVQGAN_OUTPUTS": str(outputs), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "stages.train_transformer", "dataset=demo", "trainer=cpu",
                             "logger=wandb", "logger.media_every=0", f"codebook.ckpt={codebook}",
                             "transformer.feat_sample_size=1", "transformer.roll_columns=false",
                             f"trainer.max_steps={max_steps}",
                             "trainer.val_every=0", "trainer.ckpt_every=100000", "trainer.log_every=1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _logged_steps(log: Path) -> list[int]:
    return [int(s) for s in re.findall(r"\] - step (\d+) ", log.read_text())] if log.exists() else []


@pytest.mark.slow
def test_sigterm_between_checkpoints_loses_no_step_and_the_rerun_resumes_there(outputs):
    make_dataset(outputs / "demo_data")
    codebook = make_codebook(outputs / "codebook.pt")
    run = outputs / "train_transformer" / "demo" / "transformer.feat_sample_size-1+transformer.roll_columns-false"
    log = run / "train_transformer.log"
    proc = _start(outputs, codebook, max_steps=100000)
    try:
        deadline = time.monotonic() + 240
        while not _logged_steps(log) or _logged_steps(log)[-1] < 3:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"no step 3 in {log}: {proc.communicate()[1][-3000:]}")
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    last_logged = _logged_steps(log)[-1]
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["train_state"]["step"] == last_logged  # every step that ran is in the checkpoint
    run_id = (run / "wandb_id.txt").read_text().strip()

    stale = run / "checkpoints" / ".last.pt.killed.tmp"  # what a SIGKILL during a checkpoint write leaves
    stale.write_bytes(b"partial")
    proc = _start(outputs, codebook, max_steps=last_logged + 2)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    text = log.read_text()
    assert f"at step {last_logged} (epoch" in text.split("stopped by SIGTERM")[1]
    assert not stale.exists()
    resumed = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["train_state"]["step"] == last_logged + 2
    # the optimiser went on from its saved state: Adam's own step count runs through both starts
    assert int(resumed["train_state"]["optimizers"]["transformer"]["state"][0]["step"]) == last_logged + 2
    # the same W&B run continued: one id, two offline segments of it
    assert (run / "wandb_id.txt").read_text().strip() == run_id
    segments = sorted(p.name for p in (run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(segments) == 2, segments
