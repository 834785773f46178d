"""The chain as a small graph of steps: each step one existing stage (`python -m stages.NAME ARGS`) in its own run
folder, with the steps it needs, the files that show it finished, and where it runs (a CPU or a GPU job).

A step is finished when its marker (`<run folder>/step.json`, written when the stage returned 0; an array step:
one marker per shard) records the same arguments and the same data fingerprint as now, and its `done_files` exist.
Arguments are computed when needed (`Step.arguments()`), so a step may derive them from what earlier steps wrote
(the number of evaluation clips, for example); until those exist the step is simply not finished.
"""
from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.files.writes import save_json

MARKER = "step.json"
SAFE = re.compile(r"[A-Za-z0-9_./:+@%-]*")


def quoted(key: str, value: Any) -> str:
    """`key=value` as a Hydra override: the value single-quoted when it holds anything but plain path characters
    (spaces, commas, `=`, quotes), so that a folder called `my videos, 2024` stays one value."""
    text = str(value)
    if SAFE.fullmatch(text):
        return f"{key}={text}"
    return f"{key}='" + text.replace("'", "\\'") + "'"


def override_key(override: str) -> str:
    """The key of a command-line override (`+a.b=1` -> `a.b`)."""
    return override.split("=", 1)[0].lstrip("+~")


def under(key: str, prefixes: Sequence[str]) -> bool:
    """Whether a dotted key is one of `prefixes` or inside one."""
    return any(key == p or key.startswith(f"{p}.") for p in prefixes)


@dataclass
class ChainSpec:
    """What a graph of steps was asked (plain data: it travels to SLURM jobs): the config, resolved; the command-line
    overrides as given; the preset each config group got; the run folder."""

    cfg: dict[str, Any]
    overrides: list[str]
    choices: dict[str, str]
    run_dir: Path

    def passed(self, prefixes: Sequence[str]) -> list[str]:
        """The command-line overrides of keys under `prefixes`, as given."""
        return [o for o in self.overrides if under(override_key(o), prefixes)]

    @classmethod
    def from_hydra(cls, cfg) -> ChainSpec:
        """The request of the running Hydra app (`@hydra.main`): its config, overrides, choices and run folder."""
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        hydra = HydraConfig.get()
        return cls(OmegaConf.to_container(cfg, resolve=True), list(hydra.overrides.task),
                   {k: str(v) for k, v in hydra.runtime.choices.items() if v is not None},
                   Path(hydra.runtime.output_dir).absolute())


@dataclass
class Step:
    """One stage run of the chain."""

    name: str                                   # unique in the chain: train_codebook, sample_shuffled, ...
    stage: str                                  # the stage it runs: stages/<stage>.py
    args: Callable[[], list[str]]               # its overrides (hydra.run.dir is added: `arguments`)
    run_dir: Path                               # its run folder (its log, .hydra/, the marker)
    deps: tuple[str, ...] = ()                  # names of the steps it needs
    done_files: Callable[[], list[Path]] = lambda: []  # what it makes that later steps read
    fingerprint: Callable[[], str | None] = lambda: None  # the data it worked from (a finished step with another
                                                # fingerprint is not finished)
    resources: str = "gpu"                      # gpu | cpu: which of the slurm.gpu / slurm.cpu settings its job gets
    shards: int = 1                             # > 1: an array job of this many tasks (shard=i num_shards=n)
    about: str = ""                             # one line for the plan

    def arguments(self) -> list[str]:
        return [*self.args(), quoted("hydra.run.dir", self.run_dir)]

    def command(self, shard: int | None = None, num_shards: int | None = None) -> list[str]:
        extra = [] if shard is None else [f"shard={shard}", f"num_shards={num_shards}"]
        return ["python", "-m", f"stages.{self.stage}", *self.arguments(), *extra]

    # --- finished? -----------------------------------------------------------------------------------------
    def marker(self, shard: int | None = None, num_shards: int | None = None) -> Path:
        return self.run_dir / (MARKER if shard is None else f"step.shard-{shard}-of-{num_shards}.json")

    def mark_done(self, shard: int | None = None, num_shards: int | None = None, **extra: Any) -> None:
        save_json(self.marker(shard, num_shards), {"stage": self.stage, "args": self.arguments(),
                                                   "fingerprint": self.fingerprint(),
                                                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra})

    def recorded(self) -> dict[str, Any] | None:
        """The marker of the step's last finished run (an array's first shard's), or None."""
        markers = [self.marker()] + sorted(self.run_dir.glob("step.shard-*.json"))
        for path in markers:
            if path.is_file():
                return json.loads(path.read_text())
        return None

    def done(self) -> bool:
        try:
            wanted = {"args": self.arguments(), "fingerprint": self.fingerprint()}
            files = self.done_files()
        except (FileNotFoundError, KeyError, ValueError):  # what it derives its arguments from is not there yet
            return False

        def matches(path: Path) -> bool:
            if not path.is_file():
                return False
            record = json.loads(path.read_text())
            return all(record.get(k) == v for k, v in wanted.items())

        whole = matches(self.marker())
        if not whole:
            shard_markers = sorted(self.run_dir.glob("step.shard-*-of-*.json"))
            counts = {int(p.stem.rsplit("-of-", 1)[1]) for p in shard_markers}
            whole = any(all(matches(self.marker(i, n)) for i in range(n)) for n in counts)
        return whole and all(Path(f).exists() for f in files)


@dataclass
class Graph:
    """Steps in an order where each comes after the steps it needs."""

    steps: list[Step] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"two steps share a name: {names}")
        known: set[str] = set()
        for step in self.steps:
            unknown = [d for d in step.deps if d not in known]
            if unknown:
                raise ValueError(f"step {step.name} needs {unknown}, which do not come before it")
            known.add(step.name)

    def __getitem__(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"no step {name!r}: the steps are {[s.name for s in self.steps]}")

    def __iter__(self):
        return iter(self.steps)

    def dependents(self, name: str) -> list[str]:
        """Every step that needs `name`, directly or through others."""
        out: list[str] = []
        for step in self.steps:
            if name in step.deps or any(d in out for d in step.deps):
                out.append(step.name)
        return out


def plan_lines(graph: Graph, done: Iterable[str]) -> list[str]:
    """One line per step: finished or to run, and what it needs."""
    done = set(done)
    lines = []
    for step in graph:
        state = "finished" if step.name in done else "to run"
        needs = f" (after {', '.join(step.deps)})" if step.deps else ""
        lines.append(f"  {step.name:<18} {state:<9} {step.about}{needs}")
    return lines


def shell_line(command: Sequence[str]) -> str:
    """A command as one could type it in a POSIX shell."""
    return " ".join(shlex.quote(part) for part in command)
