"""Hydra launchers `specvqgan_slurm` and `specvqgan_local`: hydra-submitit-launcher's, plus what
pipeline/cluster/launcher.py adds (required keys, dry run, never-starting jobs, one-line sbatch errors, a sweep summary,
torch.distributed in multi-task jobs). Hydra only loads launcher plugins from the `hydra_plugins` package."""

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import MISSING

from pipeline.cluster import launcher as cluster
from pipeline.cluster.launcher import export_torch_distributed

log = logging.getLogger(__name__)


class _Launcher(BaseSubmititLauncher):
    """Submits a sweep as one submitit array, waits watching SLURM's reasons, writes the sweep summary."""

    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: dict) -> JobReturn:
        """One job (one task of it): hydra-submitit-launcher's, plus torch.distributed for multi-task jobs, where
        only task 0 writes Hydra's files and the run's log (the others log to their own submitit output)."""
        import submitit
        from hydra.core.singleton import Singleton
        from hydra.core.utils import run_job, setup_globals
        from omegaconf import open_dict


        rank = export_torch_distributed()
        Singleton.set_state(singleton_state)
        setup_globals()
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, sweep_overrides)
        with open_dict(sweep_config.hydra):
            sweep_config.hydra.job.id = submitit.JobEnvironment().job_id
            sweep_config.hydra.job.num = job_num
            if rank:
                sweep_config.hydra.output_subdir = None
                if "root" in sweep_config.hydra.job_logging:
                    sweep_config.hydra.job_logging.root.handlers = ["console"]
        ret = run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=sweep_config,
                      job_dir_key=job_dir_key, job_subdir_key="hydra.sweep.subdir")
        if ret.status.name == "FAILED":  # Hydra keeps the error in the return value: the job's log gets it too
            error = ret._return_value
            print(f"job failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return ret

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit


        params = dict(self.params)
        dry_run = bool(params.pop("dry_run", False))
        init = {"folder": params.pop("submitit_folder")}
        if "max_num_timeout" in params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = params.pop("max_num_timeout")
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        base_keys = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
                     "stderr_to_stdout"}
        executor.update_parameters(**{k if k in base_keys else f"{self._EXECUTOR}_{k}": v
                                      for k, v in params.items()})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        if dry_run:
            if self._EXECUTOR == "slurm":
                print(cluster.dry_run_script(executor, len(job_overrides)))
            for idx, overrides in enumerate(job_overrides, initial_job_idx):
                print(f"# job {idx}: {' '.join(filter_overrides(overrides))}")
            raise SystemExit(0)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        job_params = []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", _singletons()))
        try:
            jobs = executor.map_array(self, *zip(*job_params))
        except Exception as error:  # submitit wraps sbatch's stderr in a FailedJobError
            raise SystemExit(cluster.sbatch_refusal(error)) from None
        log.info("submitted %s; submitit's logs: %s", " ".join(str(j.job_id) for j in jobs),
                 Path(cluster.job_log(jobs[0])).parent)
        cluster.wait_for_jobs(jobs, slurm=self._EXECUTOR == "slurm")
        rows, returns = [], []
        for job, overrides in zip(jobs, job_overrides):
            row, ret = cluster.summary_row(job, filter_overrides(overrides), None)
            rows.append(row)
            returns.append(ret)
        summary = cluster.write_summary(sweep_dir, rows, str(jobs[0].job_id))
        failed = [r for r in rows if r["state"] != "COMPLETED"]
        if failed:
            raise SystemExit(f"{len(failed)} of {len(rows)} sweep jobs failed; first: job {failed[0]['job_id']} "
                             f"({failed[0]['overrides']}): {failed[0].get('error')}; its log: {failed[0]['log']} "
                             f"(every job's: {summary})")
        return returns


def _singletons():
    from hydra.core.singleton import Singleton

    return Singleton.get_state()


class SlurmLauncher(_Launcher):
    _EXECUTOR = "slurm"


class LocalLauncher(_Launcher):
    _EXECUTOR = "local"


@dataclass
class SpecvqganSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.specvqgan_launcher.SlurmLauncher"
    # required (checked by pipeline.cluster.launcher.RequiredLauncherKeys): a YAML `???` merged onto None stays None
    partition: Optional[str] = MISSING
    dry_run: bool = False     # print the sbatch script and the jobs, submit nothing


@dataclass
class SpecvqganLocalConf(LocalQueueConf):
    _target_: str = "hydra_plugins.specvqgan_launcher.LocalLauncher"
    dry_run: bool = False


ConfigStore.instance().store(group="hydra/launcher", name="specvqgan_slurm", node=SpecvqganSlurmConf,
                             provider="specvqgan")
ConfigStore.instance().store(group="hydra/launcher", name="specvqgan_local", node=SpecvqganLocalConf,
                             provider="specvqgan")
