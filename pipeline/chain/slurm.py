"""submit=slurm: every unfinished step of the chain as a SLURM job through submitit, each after the jobs of the
steps it needs (`--dependency=afterok:<ids>`), the extraction steps as array jobs over `slurm.shards` shards.
`submit` prints the job ids and returns; `status` says each step's state.

Every job asks for `--kill-on-invalid-dep=yes`: when a job fails, SLURM cancels the jobs that need it (and
`status` names the failed step and its reason, which the job wrote into `<step run folder>/step.failed`; a job
left waiting on a dependency that can never be met is cancelled by `status`). A finished step (its marker: see
pipeline/chain/graph.py) is not submitted again, nor is a step whose job is still queued or running (its dependents
wait on that job). A job runs its stage in its own process, as `python -m stages.NAME ...` would (the same Hydra
app, so its log and run folder are the stage's): preemption, `scontrol requeue` and time limits requeue it and the
stage resumes from its last checkpoint, as the sweep launcher's jobs do (pipeline/cluster/launcher.py).
Resources: `slurm.*` as the sweep launcher's keys, with `slurm.cpu` / `slurm.gpu` over them for each kind of step.
"""
from __future__ import annotations

import collections
import json
import os
import re
import runpy
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from pipeline.chain.graph import ChainSpec, Graph, Step, shell_line
from pipeline.cluster.launcher import sbatch_refusal
from pipeline.files.writes import save_json

JOBS = "slurm/jobs.json"             # under the chain's run folder: each step's job id
FAILED = "step.failed"               # under a step's run folder: why its job failed
ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED")
REASON = re.compile(r"^([\w.]+(Error|Exception|Mismatch|Exit)\b|`[^`]+` is not a key)")  # a stderr line that says why
LAUNCHER_KEYS = ("timeout_min", "cpus_per_task", "gpus_per_node", "mem_gb")  # submitit's own names
SLURM_KEYS = ("partition", "account", "qos", "constraint", "setup", "signal_delay_s", "array_parallelism")


# ------------------------------------------------------------------------------------------------- the job
class _Tail:
    """Writes through to a stream and keeps its last lines (the reason a stage failed, for `step.failed`)."""

    def __init__(self, stream, lines: int = 30):
        self.stream, self.lines, self.partial = stream, collections.deque(maxlen=lines), ""

    def write(self, text: str) -> int:
        self.partial += text
        *whole, self.partial = self.partial.split("\n")
        self.lines.extend(whole)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def text(self) -> str:
        return "\n".join([*self.lines, self.partial]).strip()


def run_stage_here(stage: str, args: list[str]) -> str:
    """Run `python -m stages.<stage> ARGS` in this process (a job's: one stage per process). Returns what the stage
    printed last to stderr when it failed, '' when it succeeded."""
    argv, stderr = sys.argv, sys.stderr
    sys.argv, sys.stderr = [f"stages/{stage}.py", *args], _Tail(sys.stderr)
    try:
        runpy.run_module(f"stages.{stage}", run_name="__main__", alter_sys=False)
        return ""
    except SystemExit as exit_:
        if isinstance(exit_.code, int) and (exit_.code == -1 or exit_.code >= 128):
            raise  # stopped by a signal (preemption, requeue, time limit) after saving: SLURM / submitit requeue it
        return "" if exit_.code in (0, None) else sys.stderr.text() or f"exit {exit_.code}"
    except Exception as error:  # noqa: BLE001 - the job records every failure's reason, then fails
        return f"{sys.stderr.text()}\n{type(error).__name__}: {error}".strip()
    finally:
        sys.argv, sys.stderr = argv, stderr


def failure_reason(text: str) -> str:
    """The line of a failed stage's stderr that says why: the exception, or the project's hint on a misspelt key."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    for line in reversed(lines):
        if REASON.match(line):
            return line
    return lines[-1] if lines else "no message"


class StepJob:
    """What a SLURM job runs: one step of a graph (one shard of an array step), the graph built again from the
    request by `build` (a module-level function). Picklable; submitit requeues it after a time limit (`checkpoint`)
    or a preemption, and the stage resumes."""

    def __init__(self, spec: ChainSpec, name: str, build: Callable[[ChainSpec], Graph]):
        self.spec, self.name, self.build = spec, name, build

    def __call__(self, shard: int | None = None, num_shards: int | None = None) -> str:
        step = self.build(self.spec)[self.name]
        extra = [] if shard is None else [f"shard={shard}", f"num_shards={num_shards}"]
        print(f"[chain] {self.name}: {shell_line([*step.command(), *extra])}", flush=True)
        failed = run_stage_here(step.stage, [*step.arguments(), *extra])
        job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
        if failed:
            reason = failure_reason(failed)
            text = f"job {job}{'' if shard is None else f' shard {shard}'}: {reason}\n\n{failed}\n"
            (step.run_dir / FAILED).parent.mkdir(parents=True, exist_ok=True)
            (step.run_dir / FAILED).write_text(text)
            raise RuntimeError(f"step {self.name} failed: {reason}")
        step.mark_done(shard, num_shards, slurm_job=job)
        (step.run_dir / FAILED).unlink(missing_ok=True)
        return str(step.run_dir)

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


# ---------------------------------------------------------------------------------------------- submission
def resources(step: Step, slurm: dict[str, Any]) -> dict[str, Any]:
    """`slurm.*` with `slurm.<cpu|gpu>` over it, for this step."""
    over = {k: v for k, v in (slurm.get(step.resources) or {}).items() if v is not None}
    return {**{k: v for k, v in slurm.items() if k not in ("cpu", "gpu")}, **over}


def executor_for(step: Step, spec: ChainSpec, after: list[str]):
    import submitit

    settings = resources(step, spec.cfg["slurm"])
    executor = submitit.AutoExecutor(folder=spec.run_dir / "slurm" / "%j", cluster="slurm",
                                     slurm_max_num_timeout=int(settings["max_num_timeout"]))
    executor.update_parameters(
        name=f"chain-{step.name}", **{k: settings[k] for k in LAUNCHER_KEYS},
        **{f"slurm_{k}": settings[k] for k in SLURM_KEYS if settings.get(k) not in (None, [])},
        slurm_additional_parameters={"kill-on-invalid-dep": "yes",
                                     **({"dependency": f"afterok:{':'.join(after)}"} if after else {})})
    return executor


def job_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """{job id (array tasks as <id>_<i>): (state, reason)} from squeue (queued) and sacct (finished)."""
    if not job_ids:
        return {}
    bases = sorted({str(j).split("_")[0] for j in job_ids})
    states: dict[str, tuple[str, str]] = {}
    done = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(bases), "-o", "JobID,State,Reason"],
                          capture_output=True, text=True, check=False, timeout=60)
    for line in done.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2:
            states[parts[0]] = (parts[1].split()[0], parts[2] if len(parts) > 2 else "")
    queued = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(bases), "-o", "%i|%T|%r"],
                            capture_output=True, text=True, check=False, timeout=60)
    for line in queued.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def step_state(job: dict[str, Any], states: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """One state for a step's job (an array's: the worst of its tasks)."""
    base = str(job["job_id"])
    found = [v for k, v in states.items() if k == base or k.startswith(f"{base}_")]
    if not found:
        return "UNKNOWN", "not known to squeue or sacct"
    order = ("FAILED", "OUT_OF_MEMORY", "TIMEOUT", "NODE_FAIL", "CANCELLED", "RUNNING", "REQUEUED", "PENDING",
             "COMPLETED")
    return min(found, key=lambda v: order.index(v[0]) if v[0] in order else len(order))


def read_jobs(spec: ChainSpec) -> dict[str, Any]:
    path = spec.run_dir / JOBS
    return json.loads(path.read_text()) if path.is_file() else {"jobs": {}}


def submit(graph: Graph, spec: ChainSpec, build: Callable[[ChainSpec], Graph]) -> dict[str, Any]:
    """Submit every unfinished step (not already queued or running) after the jobs of the steps it needs; each job
    builds the graph again with `build`."""
    record = read_jobs(spec)
    old = record.get("jobs", {})
    states = job_states([str(j["job_id"]) for j in old.values()])
    ids: dict[str, str] = {}
    lines = []
    for step in graph:
        if step.done() and not any(d in ids for d in step.deps):  # after a step that runs again, it runs again
            lines.append(f"  {step.name:<18} finished        -")
            continue
        previous = old.get(step.name)
        if previous and step_state(previous, states)[0] in ACTIVE:
            ids[step.name] = str(previous["job_id"])
            lines.append(f"  {step.name:<18} already queued  {ids[step.name]}")
            continue
        after = [ids[d] for d in step.deps if d in ids]
        executor = executor_for(step, spec, after)
        job = StepJob(spec, step.name, build)
        try:
            if step.shards > 1:
                n = step.shards
                executor.update_parameters(slurm_array_parallelism=int(resources(step, spec.cfg["slurm"])
                                                                       ["array_parallelism"]))
                jobs = executor.map_array(job, list(range(n)), [n] * n)
                job_id = str(jobs[0].job_id).split("_")[0]
            else:
                job_id = str(executor.submit(job).job_id)
        except Exception as error:  # submitit wraps sbatch's refusal
            raise SystemExit(f"[chain] step {step.name} not submitted: {sbatch_refusal(error)}"
                             + (f" ({len(ids)} earlier step(s) were: python -m stages.chain ... action=status)"
                                if ids else "")) from None
        ids[step.name] = job_id
        (step.run_dir / FAILED).unlink(missing_ok=True)
        old[step.name] = {"job_id": job_id, "shards": step.shards, "after": after,
                          "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        save_json(spec.run_dir / JOBS, {"jobs": old})
        lines.append(f"  {step.name:<18} submitted       {job_id}" + (f" (array of {step.shards})"
                                                                     if step.shards > 1 else "")
                     + (f" after {', '.join(after)}" if after else ""))
    submitted = [name for name, line in zip([s.name for s in graph], lines) if "submitted" in line]
    print("\n".join([f"[chain] {spec.run_dir}: {len(submitted)} job(s) submitted" if submitted else
                     f"[chain] {spec.run_dir}: nothing to submit", *lines]), flush=True)
    print(f"[chain] logs: {spec.run_dir / 'slurm'}/<job id>/ and each step's run folder; each step's state: the "
          f"same command with action=status", flush=True)
    return {"jobs": ids, "submitted": submitted}


# -------------------------------------------------------------------------------------------------- status
def status(graph: Graph, spec: ChainSpec, report: Callable[[Graph, ChainSpec], dict[str, Any]] | None = None
           ) -> dict[str, Any]:
    """Each step's state: finished, its job's SLURM state, or not submitted. A failed step's reason is printed; jobs
    still waiting on it are cancelled (SLURM cancels them itself when it can: --kill-on-invalid-dep). When every
    step is finished, `report` says what they made."""
    jobs = read_jobs(spec)["jobs"]
    states = job_states([str(j["job_id"]) for j in jobs.values()])
    rows: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    for step in graph:
        job = jobs.get(step.name)
        if step.done():
            rows[step.name] = {"state": "COMPLETED", "job_id": job and job["job_id"], "reason": ""}
            continue
        if job is None:
            rows[step.name] = {"state": "NOT SUBMITTED", "job_id": None, "reason": ""}
            continue
        state, reason = step_state(job, states)
        note = step.run_dir / FAILED
        if state in ("FAILED", "OUT_OF_MEMORY", "TIMEOUT", "NODE_FAIL") or (state == "COMPLETED" and note.is_file()):
            state = "FAILED" if state == "COMPLETED" else state
            reason = note.read_text().splitlines()[0] if note.is_file() else f"{state}: see the job's log " \
                f"{spec.run_dir / 'slurm' / str(job['job_id'])}/"
            failed.append(step.name)
        rows[step.name] = {"state": state, "job_id": job["job_id"], "reason": reason}
    for name in failed:  # what still waits on a failed step can never start
        for dependent in graph.dependents(name):
            row = rows[dependent]
            if row["state"] in ("PENDING", "CANCELLED", "UNKNOWN") and row["job_id"]:
                if row["state"] == "PENDING":
                    subprocess.run(["scancel", str(row["job_id"])], check=False, capture_output=True, timeout=60)
                row["state"], row["reason"] = "CANCELLED", f"step {name} failed"
    print(f"[chain] {spec.run_dir}:")
    for name, row in rows.items():
        print(f"  {name:<18} {row['state']:<13} {row['job_id'] or '-':<10} {row['reason']}")
    for name in failed:
        step = graph[name]
        logs = [step.run_dir / f"{step.stage}.log",
                *sorted((spec.run_dir / "slurm").glob(f"{rows[name]['job_id']}*/*_log.err"))]
        print(f"[chain] step {name} failed: {rows[name]['reason']}\n  its logs: "
              f"{', '.join(str(p) for p in logs if p.is_file())}\n  fix the cause and submit the same command again "
              f"(finished steps are not submitted again)")
    result: dict[str, Any] = {"steps": rows, "failed": failed}
    if report is not None and all(r["state"] == "COMPLETED" for r in rows.values()):
        result.update(report(graph, spec))
    return result
