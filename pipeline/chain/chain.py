"""The `chain` stage: a folder of videos to trained models, samples, metrics.json and report.html, in one command.

    python -m stages.chain dataset.root=DIR models=tiny          here, step after step
    python -m stages.chain dataset.root=DIR models=paper submit=slurm slurm.partition=gpu    as SLURM jobs
    python -m stages.chain dataset.root=DIR ... action=status    each step's state

The steps (pipeline/chain/steps.py) are the existing stages with derived paths. A rerun skips every finished step
(its marker records the same arguments and data: pipeline/chain/graph.py) and reruns the others, which resume
what they had done (extraction skips written clips, training continues from last.pt, sampling from its files).
Locally each step runs as `python -m stages.NAME ...` (printed first); with submit=slurm each is a job
(pipeline/chain/slurm.py). Other code runs it as `run_chain(compose_chain(["dataset.root=DIR", "models=tiny", ...]))`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from pipeline.chain import slurm
from pipeline.chain.graph import ChainSpec, Graph, Step, plan_lines, shell_line
from pipeline.chain.report import summary
from pipeline.chain.steps import folder_graph
from pipeline.config.presets import compose_stage
from pipeline.data.folder import FolderSettings, list_files, listing_digest

MODEL_STEPS = ("train_", "sample", "evaluate")  # steps whose work depends on the data they were given
ACTIONS = ("run", "status")
SUBMITS = ("local", "slurm")


def run(cfg: DictConfig) -> dict[str, Any]:
    """`python -m stages.chain`."""
    if cfg.action not in ACTIONS:
        raise ValueError(f"action={cfg.action!r}: use one of {ACTIONS}")
    if cfg.submit not in SUBMITS:
        raise ValueError(f"submit={cfg.submit!r}: use one of {SUBMITS}")
    check_required(cfg)
    return run_chain(ChainSpec.from_hydra(cfg))


def compose_chain(overrides: Sequence[str]) -> ChainSpec:
    """The request `python -m stages.chain OVERRIDES` makes, for other code: `run_chain(compose_chain([...]))` runs
    it in the same run folder (the demo once per seed, for example)."""
    cfg = compose_stage("chain", [*overrides, "hydra.job.name=chain"], return_hydra_config=True)
    check_required(cfg)
    hydra = cfg.hydra
    spec = ChainSpec({}, list(hydra.overrides.task), {k: str(v) for k, v in hydra.runtime.choices.items()
                                                     if v is not None}, Path(str(hydra.run.dir)).absolute())
    with open_dict(cfg):
        del cfg["hydra"]
    spec.cfg = OmegaConf.to_container(cfg, resolve=True)
    return spec


def check_request(spec: ChainSpec) -> None:
    """What can be checked before any step runs: the data set is a folder that exists, every required key is set."""
    dataset, clip = spec.cfg["dataset"], spec.cfg["clip"]
    if not dataset.get("clips"):
        raise ValueError(f"dataset={dataset.get('name')}: the chain takes a folder of videos, "
                         f"dataset=folder dataset.root=DIR")
    FolderSettings.from_cfg(dataset, int(clip["length"]) / int(clip["sample_rate"]))


def _missing(tree: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is `???`, without resolving anything (an interpolation to one would fail)."""
    if isinstance(tree, dict):
        return [k for key, value in tree.items() for k in _missing(value, f"{prefix}{key}.")]
    return [prefix[:-1]] if tree == "???" else []


def check_required(cfg: DictConfig) -> None:
    """Every `???` key the chain's steps need is set (slurm.* only with submit=slurm; trainer.max_steps is each
    training stage's own)."""
    missing = sorted(key for key in _missing(OmegaConf.to_container(cfg, resolve=False))
                     if not key.startswith(("trainer.", "hydra.")) and (not key.startswith("slurm.")
                                                                        or cfg.submit == "slurm"))
    hints = {"dataset.root": "your folder of videos (class subfolders give the labels)",
             "features.weights": "the feature network's weights file (models=paper: TSN's "
                                 "bn_inception-9f5701afb96c8044.pth)",
             "slurm.partition": "`sinfo -s` lists them; or set it once in conf/hydra/launcher/site/local.yaml"}
    if missing:
        raise ValueError(f"{', '.join(missing)} must be set (on the command line, e.g. {missing[0]}=...): "
                         + "; ".join(f"{k}: {hints[k]}" for k in missing if k in hints))


def check_data_unchanged(graph: Graph, spec: ChainSpec) -> None:
    """Refuse when this run's models were made from another state of the folder (videos added, removed or
    replaced since): they stay as they are, and new models get a run folder of their own."""
    root = spec.cfg["dataset"]["root"]
    now = listing_digest(list_files(Path(root).expanduser()))
    for step in graph:
        record = step.recorded() if step.name.startswith(MODEL_STEPS) else None
        if record and record.get("fingerprint") not in (None, now):
            raise SystemExit(f"[chain] the videos under {root} changed since step {step.name} of "
                             f"{spec.run_dir} was made from them (files added, removed or replaced). This run's "
                             f"models stay as they are: train on the folder as it is now in a run folder of its "
                             f"own by adding +run_tag=NAME (the index and extraction are shared and only do the new "
                             f"files), or put the folder back as it was.")


def run_chain(spec: ChainSpec) -> dict[str, Any]:
    """Check the request, then run (or submit, or report on) the chain's steps."""
    check_request(spec)
    graph = folder_graph(spec)
    if spec.cfg["submit"] == "slurm":
        if spec.cfg["action"] == "status":
            return slurm.status(graph, spec, summary)
        check_data_unchanged(graph, spec)
        return slurm.submit(graph, spec, folder_graph)
    if spec.cfg["action"] == "status":
        done = [s.name for s in graph if s.done()]
        print("\n".join([f"[chain] {spec.run_dir}:", *plan_lines(graph, done)]))
        return {"done": done}
    check_data_unchanged(graph, spec)
    return run_local(graph, spec)


def run_local(graph: Graph, spec: ChainSpec) -> dict[str, Any]:
    """Every unfinished step, in order, as `python -m stages.NAME ...`; then what was made."""
    tic = time.perf_counter()
    done = [s.name for s in graph if s.done()]
    if len(done) == len(graph.steps):
        print(f"[chain] nothing to do: all {len(done)} steps of {spec.run_dir} are finished (checked in "
              f"{time.perf_counter() - tic:.1f} s; `python -m stages.chain ... action=status` lists them)", flush=True)
        return summary(graph, spec)
    print("\n".join([f"[chain] {spec.run_dir}: {len(graph.steps) - len(done)} of {len(graph.steps)} steps to run",
                     *plan_lines(graph, done)]), flush=True)
    for step in graph:
        if step.done():
            print(f"[chain] {step.name}: finished before, skipped", flush=True)
            continue
        run_step_locally(step)
    print(f"[chain] finished in {time.perf_counter() - tic:.0f} s", flush=True)
    return summary(graph, spec)


def run_step_locally(step: Step) -> None:
    command = step.command()
    print(f"\n[chain] {step.name}\n$ {shell_line(command)}", flush=True)
    tic = time.perf_counter()
    process = subprocess.Popen([sys.executable, *command[1:]], env={**os.environ})
    while True:
        try:
            code = process.wait()
            break
        except KeyboardInterrupt:  # the step got the Ctrl-C too: it saves what it has and stops; wait for it
            print(f"\n[chain] waiting for {step.name} to save and stop", flush=True)
    log = step.run_dir / f"{step.stage}.log"
    if code < 0 or code - 128 in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
        raise SystemExit(f"[chain] step {step.name} stopped by {signal.Signals(abs(code) % 128).name}; its log: "
                         f"{log}. Run the same command again to resume: finished steps are skipped, this one "
                         f"continues where it stopped.")
    if code != 0:
        raise SystemExit(f"[chain] step {step.name} failed (exit {code}); its log: {log}. Fix the cause and run the "
                         f"same command again: finished steps are skipped, this one resumes what it had done.")
    step.mark_done()
    print(f"[chain] {step.name} done in {time.perf_counter() - tic:.1f} s", flush=True)
