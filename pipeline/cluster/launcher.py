"""What our Hydra launchers (hydra_plugins/specvqgan_launcher) add to hydra-submitit-launcher's.

Before anything is submitted: required launcher keys (`???`) are named, and a dry run prints the sbatch
script. While waiting: a line every 30 s says how many jobs are done, and a job SLURM can never start (reason
PartitionConfig and the like) is cancelled and reported at once. After: this sweep's own summary
(`<sweep dir>/sweep_summary_<when>_<first job id>.json`) lists each job's state, run folder, log file, final
validation metrics and checkpoints (from the `result.json` every training run writes). Inside a job with
several tasks, each task exports the torch.distributed environment from submitit's job environment before
Accelerate starts. Errors reach the user as one line (SystemExit), not as a
submitit traceback.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.files.writes import save_json
from pipeline.runs.folders import RESULT_FILE

log = logging.getLogger(__name__)

# squeue reasons of a pending job that no amount of waiting fixes (the request exceeds what the partition,
# account or QOS allows); waiting on them would hang the sweep. Passing states (nodes down, a partition in
# maintenance, a busy queue) are not here: such jobs are waited on.
NEVER_STARTS = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints",
                "InvalidAccount", "InvalidQOS", "QOSMaxCpuPerJobLimit", "QOSMaxGRESPerJob", "QOSMaxMemoryPerJob",
                "QOSMaxWallDurationPerJobLimit", "QOSMaxNodePerJobLimit", "AssocMaxWallDurationPerJobLimit",
                "AssocMaxCpuPerJobLimit", "AssocMaxNodePerJobLimit")
SUMMARY_STEM = "sweep_summary"  # <sweep dir>/sweep_summary_<when>_<first job id>.json (summary_path)


class RequiredLauncherKeys(Callback):
    """Hydra callback (conf/base.yaml): a sweep whose launcher preset still has a `???` key stops before the
    launcher is even built (instantiating it would fail with an OmegaConf traceback)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_required(config.hydra.launcher)


def check_required(launcher_cfg: DictConfig) -> None:
    """Stop before submission when a `???` key of the launcher preset is still unset, naming it."""
    missing = sorted(k if k.startswith("hydra.") else f"hydra.launcher.{k}"
                     for k in OmegaConf.missing_keys(launcher_cfg))
    if missing:
        raise SystemExit(f"sweep not submitted: {', '.join(missing)} must be set (on the command line, e.g. "
                         f"{missing[0]}=..., or in conf/hydra/launcher/site/local.yaml)")


def sbatch_refusal(error: BaseException) -> str:
    """sbatch's own reason for refusing a submission, as one line."""
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if "error" in line.lower()]
    line = lines[-1] if lines else (text.strip().splitlines() or [type(error).__name__])[-1]
    return f"sbatch refused the sweep: {line}"


def dry_run_script(executor, num_jobs: int) -> str:
    """The sbatch script submitit would submit for `num_jobs` jobs (one job or an array)."""
    from submitit.slurm.slurm import _make_sbatch_string

    inner = executor._executor
    params = dict(inner.parameters)
    if num_jobs > 1:
        params["map_count"] = num_jobs
    return _make_sbatch_string(command=inner._submitit_command_str, folder=inner.folder, **params)


def squeue_reasons(job_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """{job id: (state, reason)} for the jobs squeue still lists (array tasks as `<id>_<index>`)."""
    if not job_ids:
        return {}
    base_ids = sorted({str(j).split("_")[0] for j in job_ids})
    result = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(base_ids), "-o", "%i|%T|%r"],
                            capture_output=True, text=True, check=False, timeout=60)
    reasons = {}
    for line in result.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            reasons[parts[0]] = (parts[1], parts[2])
    return reasons


def wait_for_jobs(jobs: Sequence[Any], slurm: bool, poll_s: float = 2.0, report_s: float = 30.0) -> None:
    """Wait until every job is done, saying every `report_s` how many are; on SLURM a job pending for a reason
    that never clears is cancelled and reported."""
    start = last = time.monotonic()
    while not all(job.done() for job in jobs):
        if time.monotonic() - last >= report_s:
            last = time.monotonic()
            done = sum(job.done() for job in jobs)
            log.info("sweep: %d of %d jobs done after %.0f s (each job's log: its run folder)", done, len(jobs),
                     last - start)
        if not slurm:
            time.sleep(min(poll_s, 0.5))  # local processes: no queue to ask, only their end to notice
            continue
        reasons = squeue_reasons([job.job_id for job in jobs])
        stuck = {j: r for j, (state, r) in reasons.items() if state == "PENDING" and r in NEVER_STARTS}
        if stuck:
            subprocess.run(["scancel", *sorted({j.split("_")[0] for j in stuck})], check=False,
                           capture_output=True, timeout=60)
            job_id, reason = sorted(stuck.items())[0]
            raise SystemExit(f"SLURM can never start job {job_id}: reason {reason} (it asks for more CPUs, memory, "
                             f"GPUs, nodes or time than the partition/account allows); cancelled {len(stuck)} "
                             f"job(s). Lower hydra.launcher.cpus_per_task / mem_gb / gpus_per_node / nodes / "
                             f"timeout_min or pick another partition (`sinfo -o '%P %c %m %G %l'`).")
        time.sleep(poll_s)


def summary_path(sweep_dir: Path, first_job_id: str) -> Path:
    """`<sweep dir>/sweep_summary_<date>T<time>_<first job id>.json`: each sweep its own (sweeps of one stage and data
    set share the sweep folder), in the order they ended."""
    return Path(sweep_dir) / f"{SUMMARY_STEM}_{time.strftime('%Y%m%dT%H%M%S')}_{str(first_job_id).split('_')[0]}.json"


def write_summary(sweep_dir: Path, rows: list[dict[str, Any]], first_job_id: str) -> Path:
    """This sweep's summary (`summary_path`) plus a short table on stdout, with each failed job's log."""
    path = summary_path(sweep_dir, first_job_id)
    save_json(path, {"jobs": rows})
    print(f"sweep summary: {path}")
    for row in rows:
        loss = row.get("metrics", {}).get("val/loss")
        print(f"  {row['state']:<10} {row.get('job_id', '-'):<10} {Path(row.get('run_dir', '-')).name:<40} "
              f"val/loss={'-' if loss is None else f'{loss:.4g}'} {row.get('best') or row.get('last') or ''}")
        if row["state"] != "COMPLETED" and row.get("log"):
            print(f"    its log: {row['log']}")
    return path


def job_log(job) -> str:
    """A submitit job's own log file (stderr, where a failure's traceback goes), with its real job id."""
    return str(job.paths.stderr)


def summary_row(job, overrides: Sequence[str], run_dir: Path | None) -> tuple[dict[str, Any], Any]:
    """One job's summary row and its Hydra JobReturn (None when the job failed)."""
    row: dict[str, Any] = {"overrides": " ".join(overrides), "job_id": str(job.job_id), "log": job_log(job)}
    ret = None
    try:
        ret = job.results()[0]
        row["state"] = "COMPLETED"
        if ret.hydra_cfg is not None:
            run_dir = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
        if ret.status.name == "FAILED":
            row["state"], row["error"] = "FAILED", f"{type(ret._return_value).__name__}: {ret._return_value}"
    except Exception as error:  # the job died: submitit's exception holds the job's traceback
        lines = str(error).strip().splitlines()
        row["state"], row["error"] = "FAILED", lines[-1] if lines else repr(error)
    if run_dir is not None:
        row["run_dir"] = str(run_dir)
        result = Path(run_dir) / RESULT_FILE
        if result.exists():
            row.update(json.loads(result.read_text()))
    return row, ret


def export_torch_distributed() -> int:
    """In a job with several tasks (tasks_per_node x nodes), set MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK
    from submitit's job environment, so Accelerate starts one process per task; returns this task's rank.
    Each task keeps seeing all of the node's GPUs and picks cuda:LOCAL_RANK."""
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks <= 1:
        return 0
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    print(f"task {env.global_rank} of {env.num_tasks} (local rank {env.local_rank}) on {env.hostname}, "
          f"master {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}", flush=True)
    return env.global_rank
