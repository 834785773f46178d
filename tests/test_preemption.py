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

NO_ROLL = ("transformer.feat_sample_size=1", "transformer.roll_columns=false")


def _start(outputs: Path, codebook: Path, max_steps: int, model: tuple[str, ...] = NO_ROLL,
           logger: tuple[str, ...] = ("logger=wandb", "logger.media_every=0")) -> subprocess.Popen:
    env = {**os.environ, "SPECVQGAN_OUTPUTS": str(outputs), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "stages.train_transformer", "dataset=demo", "trainer=cpu",
                             *logger, f"codebook.ckpt={codebook}", *model, f"trainer.max_steps={max_steps}",
                             "trainer.val_every=0", "trainer.ckpt_every=100000", "trainer.log_every=1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop_after(proc: subprocess.Popen, log: Path, step: int) -> None:
    """SIGTERM once `log` shows `step`; the process saves and exits with 128 + SIGTERM."""
    try:
        deadline = time.monotonic() + 240
        while not _logged_steps(log) or _logged_steps(log)[-1] < step:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"no step {step} in {log}: {proc.communicate()[1][-3000:]}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]


def _logged_steps(log: Path) -> list[int]:
    return [int(s) for s in re.findall(r"\] - step (\d+) ", log.read_text())] if log.exists() else []


@pytest.mark.slow
def test_sigterm_between_checkpoints_loses_no_step_and_the_rerun_resumes_there(outputs):
    make_dataset(outputs / "demo_data")
    codebook = make_codebook(outputs / "codebook.pt")
    run = outputs / "train_transformer" / "demo" / "transformer.feat_sample_size-1+transformer.roll_columns-false"
    log = run / "train_transformer.log"
    _stop_after(_start(outputs, codebook, max_steps=100000), log, 3)
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


def test_sigterm_mid_epoch_with_rolled_columns_resumes_to_the_weights_of_an_uninterrupted_run(outputs):
    """The tiny preset shifts each clip by random columns while the loader fetches a batch ahead (issue 24): a run
    stopped by SIGTERM inside an epoch and rerun ends where a run that was never stopped ends, tensor by tensor."""
    make_dataset(outputs / "demo_data")  # 6 training clips at batch 2: 3 steps an epoch
    codebook = make_codebook(outputs / "codebook.pt")
    rolled, total = ("transformer.roll_columns=true",), 14
    stopped = outputs / "train_transformer" / "demo" / "transformer.roll_columns-true"
    _stop_after(_start(outputs, codebook, 100000, rolled, ("logger=none",)), stopped / "train_transformer.log", 4)
    at = torch.load(stopped / "checkpoints" / "last.pt", weights_only=True)["train_state"]
    assert 4 <= at["step"] < total, at["step"]
    proc = _start(outputs, codebook, total, rolled, ("logger=none",))
    assert proc.wait(timeout=240) == 0, proc.communicate()[1][-3000:]
    through = make_dataset(outputs / "through" / "demo_data").parent  # the same clips (seed 0), another run folder
    proc = _start(through, codebook, total, rolled, ("logger=none",))
    assert proc.wait(timeout=240) == 0, proc.communicate()[1][-3000:]
    a = torch.load(stopped / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(through / "train_transformer" / "demo" / "transformer.roll_columns-true" / "checkpoints" / "last.pt",
                   weights_only=True)
    assert a["train_state"]["step"] == b["train_state"]["step"] == total
    for key, tensor in b["state_dict"].items():
        assert torch.equal(a["state_dict"][key], tensor), key
    for name, state in b["train_state"]["optimizers"]["transformer"]["state"].items():
        for key, tensor in state.items():
            assert torch.equal(a["train_state"]["optimizers"]["transformer"]["state"][name][key], tensor), (name, key)
