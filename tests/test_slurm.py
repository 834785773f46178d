"""Sweeps, requeues and multi-task jobs on a real local SLURM cluster (tests/slurm_cluster.py), through
`--multirun hydra/launcher=slurm` exactly as a user submits them, on the tiny generated data set."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import CHAIN_FEW_STEPS, ROOT, make_codebook, make_dataset, video_folder, write_clip

pytestmark = pytest.mark.slurm  # a real SLURM cluster: `make test` only, not the fast lane

# what one CPU of the test node can always give; the presets' GPUs, 8 CPUs and 64 GB would never start here
TINY = ["hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=30"]
TRAIN = ["dataset=demo", "logger=none", "trainer=cpu", "trainer.log_every=1", "transformer.roll_columns=false"]
RUN = "transformer.feat_sample_size-{}+transformer.roll_columns-false"  # the run folder of a sweep job


def _env(outputs: Path) -> dict[str, str]:
    return {**os.environ, "SPECVQGAN_OUTPUTS": str(outputs), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def _sweep_cmd(*overrides: str, launcher: tuple[str, ...] = tuple(TINY)) -> list[str]:
    return [sys.executable, "-m", "stages.train_transformer", "--multirun", "hydra/launcher=slurm", *launcher,
            *TRAIN, *overrides]


def _sweep(outputs: Path, *overrides: str, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(_sweep_cmd(*overrides, **kwargs), cwd=ROOT, env=_env(outputs), capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture
def demo(outputs: Path) -> Path:
    make_dataset(outputs / "demo_data")
    return make_codebook(outputs / "codebook.pt")


def _summaries(sweep_dir: Path) -> list[Path]:
    """The sweeps' own summaries in a sweep folder, oldest first."""
    return sorted(sweep_dir.glob("sweep_summary_*.json"))


def _jobs(sweep_dir: Path) -> list[dict]:
    """The jobs of the latest sweep's summary."""
    return json.loads(_summaries(sweep_dir)[-1].read_text())["jobs"]


def _queue(cluster) -> list[str]:
    return (cluster.run_ok("squeue", "-h", "-o", "%i") or "").split()


def _wait_for(predicate, what: str, timeout: float, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the sweep ended while waiting for {what}: {out[-2000:]} {err[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_two_job_sweep_runs_each_job_in_its_own_folder_and_writes_a_summary(slurm_cluster, demo, outputs):
    tic = time.monotonic()
    result = _sweep(outputs, "transformer.feat_sample_size=1,5", f"codebook.ckpt={demo}", "trainer.max_steps=10",
                    "trainer.val_every=5")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + slurm_cluster.log_tail()
    print(f"two-job sweep on the local cluster: {time.monotonic() - tic:.1f} s")
    sweep_dir = outputs / "train_transformer" / "demo"
    jobs = _jobs(sweep_dir)
    assert [j["state"] for j in jobs] == ["COMPLETED", "COMPLETED"]
    assert [Path(j["run_dir"]).name for j in jobs] == [RUN.format(1), RUN.format(5)]
    for job in jobs:
        assert job["step"] == 10 and math.isfinite(job["metrics"]["val/loss"])
        assert Path(job["best"]).is_file() and Path(job["last"]).is_file()
        record = json.loads((Path(job["run_dir"]) / "run.json").read_text())
        assert record["starts"][0]["slurm_job_id"] and "commit" in record["starts"][0]
    # SLURM ran them (accounting knows both array tasks)
    array_id = jobs[0]["job_id"].split("_")[0]
    _wait_for(lambda: (slurm_cluster.run_ok("sacct", "-n", "-X", "-j", array_id, "-o", "State") or "").split()
              == ["COMPLETED", "COMPLETED"], "sacct to list both array tasks COMPLETED", 60)

    # the same folder with a setting that changes what is computed: the job refuses, naming the key
    result = _sweep(outputs, "transformer.feat_sample_size=5", f"codebook.ckpt={demo}", "trainer.max_steps=12",
                    "trainer.grad_accum=2")
    assert result.returncode != 0
    assert "1 of 1 sweep jobs failed" in result.stderr and "trainer.grad_accum: 1 there, 2 now" in result.stderr
    assert torch.load(Path(jobs[1]["last"]), weights_only=True)["train_state"]["step"] == 10  # untouched
    # the failed job's own log, by its real path; the second sweep's summary beside the first's, which stays
    log = Path(result.stderr.split("its log: ")[1].split(" (every job's")[0])
    assert log.is_file() and "%j" not in str(log) and "grad_accum" in log.read_text()
    first, second = _summaries(sweep_dir)
    assert json.loads(first.read_text())["jobs"] == jobs
    assert [j["state"] for j in json.loads(second.read_text())["jobs"]] == ["FAILED"]


def test_the_launcher_stops_bad_sweeps_before_or_at_submission(slurm_cluster, demo, outputs):
    def submitted() -> int:
        """The newest job id the cluster knows: the controller's (squeue -t all: jobs of the last MinJobAge
        seconds, at once) and the accounting's (sacct, which records a job late and splits an array as it starts)."""
        ids = (slurm_cluster.run_ok("squeue", "-h", "-t", "all", "-o", "%A") or "").split()
        ids += (slurm_cluster.run_ok("sacct", "-n", "-X", "-o", "JobIDRaw") or "").split()
        return max((int(i) for i in ids if i.isdigit()), default=0)

    before = submitted()
    launcher = tuple(t for t in TINY if "partition" not in t)
    result = _sweep(outputs, "transformer.feat_sample_size=1,5", launcher=launcher)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(
        "sweep not submitted: hydra.launcher.partition must be set"), result.stderr[-2000:]

    result = _sweep(outputs, "transformer.feat_sample_size=1,5", "hydra.launcher.dry_run=true")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "#SBATCH --array=0-1%2" in result.stdout and "#SBATCH --partition=debug" in result.stdout
    assert "# job 1: " in result.stdout and "transformer.feat_sample_size=5" in result.stdout
    assert submitted() == before  # neither the unset partition nor the dry run submitted anything

    result = _sweep(outputs, "transformer.feat_sample_size=1", "hydra.launcher.gpus_per_node=1")
    assert result.returncode != 0  # no GRES on this cluster
    assert result.stderr.strip().splitlines()[-1] == (
        "sbatch refused the sweep: sbatch: error: Invalid generic resource (gres) specification")

    tic = time.monotonic()
    result = _sweep(outputs, "transformer.feat_sample_size=1", "hydra.launcher.cpus_per_task=64")
    assert result.returncode != 0 and time.monotonic() - tic < 60
    last = result.stderr.strip().splitlines()[-1]
    assert "can never start job" in last and "reason PartitionConfig" in last and "cpus_per_task" in last
    assert not slurm_cluster.run_ok("squeue", "-h", "-t", "PENDING", "-o", "%i")  # the stuck job was cancelled


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGUSR2"])
def test_a_requeued_job_resumes_at_its_saved_step(slurm_cluster, demo, outputs, signal_name):
    """SIGTERM: `scontrol requeue` of a running job (as preemption does): last.pt at once, SLURM requeues.
    SIGUSR2: submitit's early warning before a time limit: last.pt at once, then submitit requeues the job.
    Either way the requeued job resumes at the saved step."""
    max_steps = 100
    proc = subprocess.Popen(_sweep_cmd("transformer.feat_sample_size=1", f"codebook.ckpt={demo}",
                                       f"trainer.max_steps={max_steps}", "trainer.val_every=0",
                                       "trainer.ckpt_every=100000"),
                            cwd=ROOT, env=_env(outputs), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run = outputs / "train_transformer" / "demo" / RUN.format(1)
        log_file = run / "train_transformer.log"
        _wait_for(lambda: log_file.exists() and " - step 2 " in log_file.read_text(), "step 2", 180, proc)
        job_id = _queue(slurm_cluster)[0]
        if signal_name == "SIGTERM":
            assert slurm_cluster.run_ok("scontrol", "requeue", job_id) is not None
        else:
            assert slurm_cluster.run_ok("scancel", "--signal=USR2", job_id) is not None
        _wait_for(lambda: slurm_cluster.job_field(job_id, "Reason") == "BeginTime"
                  or slurm_cluster.job_field(job_id, "JobState") == "RUNNING"
                  and slurm_cluster.job_field(job_id, "Restarts") == "1", "the requeue", 60, proc)
        slurm_cluster.release(job_id)  # SLURM holds a requeued job ~121 s
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    text = log_file.read_text()
    saved = int(text.split(f"stopped by {signal_name} at step ")[1].split(";")[0])
    assert 2 <= saved < max_steps
    assert f"at step {saved} (epoch" in text.split(f"stopped by {signal_name}")[1]  # "resumed from ... at step"
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["train_state"]["step"] == max_steps
    starts = json.loads((run / "run.json").read_text())["starts"]
    assert [s["slurm_job_id"] for s in starts] == [job_id, job_id]
    assert [s["slurm_restart"] for s in starts] == [0, 1]


def test_a_two_task_job_trains_as_two_ranks_into_one_folder(slurm_cluster, demo, outputs):
    result = _sweep(outputs, "transformer.feat_sample_size=2", f"codebook.ckpt={demo}", "trainer.max_steps=6",
                    "trainer.val_every=3", "hydra.launcher.tasks_per_node=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = _jobs(outputs / "train_transformer" / "demo")
    run = Path(jobs[0]["run_dir"])
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["train_state"]["num_processes"] == 2 and ckpt["train_state"]["step"] == 6
    logs = sorted((outputs / "train_transformer" / "demo" / ".submitit" / jobs[0]["job_id"]).glob("*_log.out"))
    assert [p.name.split("_")[1] for p in logs] == ["0", "1"]
    assert "task 0 of 2" in logs[0].read_text() and "task 1 of 2" in logs[1].read_text()
    # one task writes the run's log: one line per step, not two
    steps = [line for line in (run / "train_transformer.log").read_text().splitlines() if " - step 6 " in line]
    assert len(steps) == 1


def test_an_array_job_fills_in_a_half_done_extraction(slurm_cluster, outputs, compose):
    from pipeline.extract.extract_mels import run

    data = outputs / "demo_data"
    for k in range(4):
        write_clip(data / "videos" / "dog" / f"clip{k}.mp4", 1.0, audio="chirp")
    cfg = compose("extract_mels", "dataset=demo", "chain=direct", "shard=0", "num_shards=2")
    run(cfg, run_dir=outputs / "half")  # shard 0 of 2 done before: clip0, clip2
    mels = data / "features" / "dog" / "melspec_10s_22050hz"
    done = {p.name: p.stat().st_mtime_ns for p in mels.glob("*_mel.npy")}
    assert sorted(done) == ["clip0_mel.npy", "clip2_mel.npy"]

    result = subprocess.run([sys.executable, "-m", "stages.extract_mels", "--multirun",
                             "hydra/launcher=slurm_cpu_array", *TINY, "dataset=demo", "chain=direct", "num_shards=2",
                             "shard=0,1"],
                            cwd=ROOT, env=_env(outputs), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep = outputs / "extract_mels" / "demo"
    jobs = _jobs(sweep)
    assert [j["state"] for j in jobs] == ["COMPLETED", "COMPLETED"] and "_" in jobs[0]["job_id"]  # an array
    assert len({j["run_dir"] for j in jobs}) == 1  # the shards of one run share its folder
    said = [(sweep / ".submitit" / j["job_id"] / f"{j['job_id']}_0_log.out").read_text() for j in jobs]
    assert "0 written, 2 skipped (already there), 0 failed" in said[0]
    assert "2 written, 0 skipped (already there), 0 failed" in said[1]
    assert sorted(p.name for p in mels.glob("*_mel.npy")) == [f"clip{k}_mel.npy" for k in range(4)]
    assert {name: (mels / name).stat().st_mtime_ns for name in done} == done


# the chain (pipeline/chain/slurm.py): every step a job after the jobs it needs, on the tiny presets with few steps
CHAIN_ON_SLURM = ["submit=slurm", "slurm.partition=debug", "slurm.gpus_per_node=0", "slurm.cpus_per_task=1",
                  "slurm.mem_gb=1", "slurm.timeout_min=30", "slurm.cpu.cpus_per_task=1", "slurm.cpu.mem_gb=1",
                  "slurm.shards=2"]


def _chain(outputs: Path, root: Path, *extra: str) -> subprocess.CompletedProcess:
    from pipeline.chain.graph import quoted

    command = [sys.executable, "-m", "stages.chain", "dataset=folder", quoted("dataset.root", root), "models=tiny",
               *CHAIN_FEW_STEPS, *CHAIN_ON_SLURM, *extra]
    return subprocess.run(command, cwd=ROOT, env=_env(outputs), capture_output=True, text=True, timeout=300,
                          check=False)


def _chain_settles(outputs: Path, root: Path, *extra: str, timeout: float = 900) -> str:
    """The chain's `action=status` once no job of it is queued or running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = _chain(outputs, root, *extra, "action=status")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        states = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("  ")
                  and len(line.split()) > 1]
        if not any(s in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING") for s in states):
            return result.stdout
        time.sleep(3)
    raise AssertionError(f"the chain's jobs did not finish in {timeout} s: {result.stdout[-3000:]}")


def test_the_chain_runs_every_step_as_a_dependent_job(slurm_cluster, outputs, tmp_path):
    root = video_folder(tmp_path / "my videos")
    tic = time.monotonic()
    result = _chain(outputs, root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert time.monotonic() - tic < 60 and "11 job(s) submitted" in result.stdout  # it submits and returns
    (run,) = (outputs / "chain" / "folder").iterdir()
    jobs = json.loads((run / "slurm" / "jobs.json").read_text())["jobs"]
    # models=tiny: the transformer's best.pt is judged by the classifier, so it waits for that job too
    assert jobs["train_transformer"]["after"] == [jobs[s]["job_id"] for s in ("splits", "train_codebook",
                                                                             "train_classifier")]
    assert jobs["splits"]["after"] == [jobs["extract_mels"]["job_id"], jobs["extract_features"]["job_id"]]
    said = _chain_settles(outputs, root)
    assert "FAILED" not in said and "[chain] targets, each beside its baseline" in said, said
    samples = run / "sample" / "samples" / "valid"
    assert (samples / "report.html").is_file() and json.loads((samples / "metrics.json").read_text())["num_fakes"] == 4
    print(f"the chain on the local cluster: {time.monotonic() - tic:.1f} s")
    # SLURM ran them: the extraction as arrays of 2 tasks, each step after the ones it needs
    accounted = slurm_cluster.run_ok("sacct", "-n", "-X", "-P", "-o", "JobID,JobName,State") or ""
    mels = [line for line in accounted.splitlines() if line.startswith(f"{jobs['extract_mels']['job_id']}_")]
    assert len(mels) == 2 and all(line.endswith("|chain-extract_mels|COMPLETED") for line in mels)
    # again: every step's outputs exist, nothing is submitted
    again = _chain(outputs, root)
    assert again.returncode == 0 and "nothing to submit" in again.stdout, again.stdout + again.stderr

    # a step that fails: the steps that need it are cancelled, the reason printed; the others are not submitted
    trained = {g: run / f"train_{g}" / "checkpoints" / "best.pt" for g in ("vocoder", "classifier")}
    failing = ("codebook.optim.batch_size=1000", f"vocoder.ckpt={trained['vocoder']}",
               f"classifier.ckpt={trained['classifier']}")
    result = _chain(outputs, root, *failing)
    assert result.returncode == 0 and "5 job(s) submitted" in result.stdout, result.stdout + result.stderr
    said = _chain_settles(outputs, root, *failing)
    rows = {line.split()[0]: line.split()[1] for line in said.splitlines() if line.startswith("  ")}
    assert rows["train_codebook"] == "FAILED" and rows["index"] == "COMPLETED"
    assert {rows[s] for s in ("train_transformer", "sample", "sample_shuffled", "evaluate")} == {"CANCELLED"}
    assert "[chain] step train_codebook failed: job " in said and "fewer than one batch" in said
