"""A table of the paper from the released models: sample the split with the paper's settings, evaluate with the
released Melception, and write a markdown table with the paper's FID / MKL beside ours (`python -m stages.paper_table`).

For each row (a released transformer of the table, pipeline/checkpoints/zoo.yaml): `stages.sample` on the table's
data set
split (`model=<row>`, the table's top-k and batch, the row's samples per video: the paper's unless
`samples_per_clip` is given), timed, then `stages.evaluate` (`classifier.ckpt=melception`,
`classifier.stats=vggsound_mel_stats`). Rows work in `<work_dir>/<row>_<N>spv/` (samples, metrics.json,
result.json), so a rerun, or a sweep with one row per job followed by one `rows=all` run, redoes nothing.
Several GPUs: `accelerate launch --num_processes 4 -m stages.paper_table ...` splits each row's clips between
the processes (as `stages.sample` does); the main process writes the results.
The time is the sample stage's wall time per generated spectrogram (10 s of sound), model loading included
(negligible at the paper's 768 x 100 or 14,512 x 10 samples, not on a handful of clips).

`submit=slurm` makes the table a graph of SLURM jobs (`table_graph`, run by pipeline/chain/slurm.py): one download
job fetches what the rows share (Melception, its statistics) and each row's released transformer, then a GPU job
per row samples and evaluates it (this stage with `rows=[ROW]`), then a job writes the table once every row is
done. The rows sample released models, so no row trains anything: there is no codebook to share between them.
`action=status` prints each job's state; a finished row (its result.json) is never submitted again.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.chain import slurm
from pipeline.chain.graph import ChainSpec, Graph, Step, quoted
from pipeline.checkpoints.zoo import Artefact, Zoo, ZooError
from pipeline.config.device import device_name
from pipeline.evaluate import evaluate
from pipeline.files.writes import atomic_write, save_json
from pipeline.generate import sample
from pipeline.runs.outcomes import Outcomes, say

log = logging.getLogger(__name__)

PASSED_ON = ("paths", "zoo", "logger", "seed")  # what the row's sample / evaluate configs take from this one
RESULT = "result.json"  # a row's outcome in its folder (<work_dir>/<row>_<N>spv/)


def table_rows(zoo: Zoo, table: str) -> list[Artefact]:
    """The released transformers of `table` (a, b, c: feature-conditioned; class: class-conditioned)."""
    if table not in zoo.tables:
        raise ValueError(f"table={table!r}: choose one of {', '.join(zoo.tables)}")
    rows = [e for e in zoo.entries.values()
            if e.kind == "transformer" and str(e.info.get("table", e.settings[0] if e.settings else "")) == table]
    if not rows:
        raise ValueError(f"table {table!r} has no released transformers to sample (the codebooks table measures "
                         f"reconstructions, which this command does not run)")
    return rows


def pick_rows(zoo: Zoo, table: str, rows: str | Sequence[str]) -> list[Artefact]:
    """`all`, or entry names, or the part of a name after the table's prefix (`212feats_bn`)."""
    available = table_rows(zoo, table)
    if isinstance(rows, str) and rows == "all":
        return available
    wanted = [rows] if isinstance(rows, str) else list(rows)
    chosen = []
    for token in wanted:
        hits = [e for e in available if e.name == token] or [e for e in available if f"_{token}_" in f"{e.name}_"]
        if len(hits) != 1:
            raise ValueError(f"rows: {token!r} names {'no' if not hits else 'more than one'} row of table {table}; "
                             f"its rows: {', '.join(row_name(e) for e in available)}")
        chosen.append(hits[0])
    return chosen


def row_settings(zoo: Zoo, entry: Artefact, samples_per_clip: int | None = None) -> dict[str, Any]:
    """The paper's evaluation settings of a row: data set, split, samples per video, top-k, batch."""
    setting = zoo.tables[entry.settings[0]]
    paper = entry.info.get("paper") or {}
    n = samples_per_clip or paper.get("samples_per_clip") or setting["samples_per_clip"]
    return {"dataset": setting["dataset"], "split": setting["split"], "samples_per_clip": int(n),
            "top_k": int(setting["top_k"]), "batch_size": int(setting["batch_size"])}


def _child(name: str, overrides: list[str], parent: DictConfig) -> DictConfig:
    """A stage's config composed under the running Hydra app, with this config's paths / zoo / logger / seed."""
    from hydra import compose

    child = compose(config_name=name, overrides=overrides)
    OmegaConf.set_struct(child, False)
    return OmegaConf.merge(child, {k: parent[k] for k in PASSED_ON if k in parent})


def _is_main() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def run_row(cfg: DictConfig, zoo: Zoo, entry: Artefact, work_dir: Path) -> dict[str, Any]:
    """Sample and evaluate one row (or reuse its result.json); returns the row's result."""

    settings = row_settings(zoo, entry, cfg.get("samples_per_clip"))
    folder = work_dir / f"{entry.name}_{settings['samples_per_clip']}spv"
    result_file = folder / RESULT
    device = str(cfg.device)
    sample_cfg = _child("sample", [f"dataset={settings['dataset']}", f"model={entry.name}",
                                   f"split={settings['split']}", f"samples_per_clip={settings['samples_per_clip']}",
                                   f"sampling.top_k={settings['top_k']}", f"batch_size={settings['batch_size']}",
                                   "write_wav=false", f"device={device}"], cfg)
    start = time.perf_counter()
    sampled = sample.run(sample_cfg, run_dir=folder)
    seconds = time.perf_counter() - start  # per process: wall time / its own samples = the time per sample
    timing_file = folder / "timing.json"
    if sampled["written"] and _is_main():
        save_json(timing_file, {"seconds": seconds, "written": sampled["written"]})
    if result_file.is_file() and not sampled["written"]:
        return {**json.loads(result_file.read_text()), "reused": True}
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else None
    samples_dir = Path(sampled["out"])
    eval_cfg = _child("evaluate", [f"dataset={settings['dataset']}", f"split={settings['split']}",
                                   f"samples_dir={samples_dir}", f"classifier.ckpt={cfg.classifier}",
                                   f"classifier.stats={cfg.stats}", f"device={device}", "report=false",
                                   f"batch_size={cfg.eval_batch_size}",
                                   f"degenerate_metrics={cfg.degenerate_metrics}"], cfg)
    metrics = evaluate.run(eval_cfg, run_dir=folder)
    if not metrics:  # not the main process of `accelerate launch`: it has done its share
        return {}
    result = {"name": entry.name, **settings, "fid": metrics["frechet_inception_distance"],
              "mkl": metrics["kullback_leibler_divergence"], "num_fakes": metrics["num_fakes"],
              "num_reals": metrics["num_reals"], "paper": dict(entry.info.get("paper") or {}),
              "seconds_per_sample": None if timing is None else timing["seconds"] / max(1, timing["written"]),
              "samples_dir": str(samples_dir), "notes": metrics.get("notes") or {}}
    save_json(result_file, result)
    return result


def _condition(entry: Artefact) -> str:
    condition = entry.info.get("condition")
    if condition == "none":
        return "No Feats"
    if condition == "class":
        return f"Class ({entry.settings[0]})"
    frames = int(entry.info.get("frames", 1))
    return f"{frames} Feat{'s' if frames > 1 else ''}"


def _fmt(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def markdown(zoo: Zoo, table: str, entries: Sequence[Artefact], results: Mapping[str, Mapping[str, Any]],
             device: str) -> str:
    """The table: the paper's FID / MKL / sample time beside ours, one line per row."""
    features = {"bninception": "BN Inception", "resnet50": "ResNet50"}
    lines = [f"### ({table}) {zoo.tables[table].get('title', '')}: the paper vs. the released models here", "",
             "| Row | Condition | Features | Samples / video | FID paper | FID ours | MKL paper | MKL ours "
             "| Time paper (s) | Time ours (s / sample) | Fakes / reals |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for entry in entries:
        r, paper = results[entry.name], entry.info.get("paper") or {}
        star = "*" if "samples_per_clip" in paper else ""
        lines.append(f"| {entry.name} | {_condition(entry)} | {features.get(entry.info.get('features'), '–')} "
                     f"| {r['samples_per_clip']} | {_fmt(paper.get('fid'))}{star} | {_fmt(r['fid'], 2)} "
                     f"| {_fmt(paper.get('mkl'))}{star} | {_fmt(r['mkl'], 2)} | {_fmt(paper.get('time'))} "
                     f"| {_fmt(r['seconds_per_sample'], 3)} | {r['num_fakes']} / {r['num_reals']} |")
    lines += ["", f"Ours: sampled on {device} with each row's top-k and batch from pipeline/checkpoints/zoo.yaml "
              f"(tables), "
              "evaluated with the released Melception. * the paper's starred rows (fewer samples per video). "
              "Time ours: the sample stage's wall time per generated 10-s spectrogram, model loading included."]
    return "\n".join(lines) + "\n"


ROW_KEYS = ("paths", "zoo", "logger", "seed", "samples_per_clip", "classifier", "stats", "eval_batch_size",
            "degenerate_metrics", "device")  # what a row's job takes from the command line (beside table, rows)


def table_graph(spec: ChainSpec) -> Graph:
    """The table as steps: the shared downloads, a job per row after them, the table after every row."""
    cfg = spec.cfg
    zoo = Zoo.from_cfg(cfg)
    table = str(cfg["table"])
    entries = pick_rows(zoo, table, cfg["rows"] if isinstance(cfg["rows"], str) else list(cfg["rows"]))
    work, jobs = Path(str(cfg["work_dir"])).absolute(), Path(str(cfg["work_dir"])).absolute() / "jobs"
    where = [quoted("paths.outputs", Path(str(cfg["paths"]["outputs"])).absolute())]
    common = [f"table={table}", *where, *[o for o in spec.passed(ROW_KEYS) if not o.startswith("paths.outputs=")]]
    names = [str(n) for n in (cfg["classifier"], cfg["stats"]) if str(n) in zoo] + [e.name for e in entries]
    steps = [Step("download", "download", lambda: [*where, *spec.passed(("paths", "zoo")), f"what=[{','.join(names)}]"],
                  jobs / "download", resources="cpu", done_files=lambda: [zoo.local_path(zoo.get(n)) for n in names],
                  about=f"the released {', '.join(names)}")]
    for entry in entries:
        folder = work / f"{entry.name}_{row_settings(zoo, entry, cfg.get('samples_per_clip'))['samples_per_clip']}spv"
        steps.append(Step(f"row_{entry.name}", "paper_table", lambda entry=entry: [*common, f"rows=[{entry.name}]"],
                          jobs / entry.name, deps=("download",), done_files=lambda folder=folder: [folder / RESULT],
                          about=f"sample and evaluate {entry.name}"))
    steps.append(Step("table", "paper_table", lambda: [*common, f"rows=[{','.join(e.name for e in entries)}]"],
                      jobs / "table", deps=tuple(s.name for s in steps[1:]), resources="cpu",
                      done_files=lambda: [Path(str(cfg["out"])).absolute()], about=f"table ({table})"))
    return Graph(steps)


def row_name(entry: Artefact) -> str:
    """A row's short name, what `rows=[...]` takes: the part of its entry name after `transformer_`."""
    return entry.name.split("transformer_", 1)[-1]


def usage(zoo: Zoo | None = None) -> str:
    """The command, and every table with its rows (pipeline/checkpoints/zoo.yaml): what `--help` and a call
    without `table=` print."""
    zoo = zoo or Zoo()
    lines = ["python -m stages.paper_table table=TABLE [rows=[ROW,...]] [samples_per_clip=N]",
             "  rows=all by default; each row is sampled with the paper's settings and evaluated with the released",
             "  Melception (samples_per_clip=N: a quick look, not the paper's numbers)", "tables and their rows:"]
    for table, spec in zoo.tables.items():
        try:
            entries = table_rows(zoo, table)
        except ValueError:
            continue  # the codebooks' table: reconstructions, which this command does not run
        shorts = [row_name(e) for e in entries]
        rows = ", ".join(short if shorts.count(short) == 1 else e.name for short, e in zip(shorts, entries))
        lines.append(f"  {table}: {spec.get('title', '')}")
        lines.append(f"     rows: {rows}")
    return "\n".join(lines)


def check_inputs(cfg: DictConfig) -> None:
    """Before anything is fetched or sampled (pipeline.config.check.StageChecks): `table` and `rows` name a table
    and rows of it; without a table, or with a wrong one, the error lists them all."""
    zoo = Zoo.from_cfg(cfg)
    if OmegaConf.is_missing(cfg, "table"):
        raise ValueError("which table? Pass table=TABLE:\n" + usage(zoo))
    if str(cfg.table) not in zoo.tables:
        raise ValueError(f"table={cfg.table} is not a table of the paper:\n" + usage(zoo))
    pick_rows(zoo, str(cfg.table), cfg.rows if isinstance(cfg.rows, str) else list(cfg.rows))


def run(cfg: DictConfig) -> dict[str, Any]:
    """`stages.paper_table`: every chosen row sampled and evaluated; the markdown table written and printed (or,
    with submit=slurm, the same as a graph of jobs). A released model that cannot be fetched (offline) ends the stage
    with the download command to run elsewhere, a missing file with its name: one message, no traceback."""
    if cfg.submit == "slurm":
        spec = ChainSpec.from_hydra(cfg)
        graph = table_graph(spec)
        return slurm.status(graph, spec) if cfg.action == "status" else slurm.submit(graph, spec, table_graph)
    if cfg.submit != "local" or cfg.action != "run":
        raise ValueError(f"submit={cfg.submit} action={cfg.action}: use submit=local (action=run) or submit=slurm "
                         f"(action=run or status)")
    try:
        return _run(cfg)
    except (ZooError, FileNotFoundError) as error:  # offline, or the table's data not here: what to run, plainly
        raise SystemExit(f"[paper_table] {error}") from None


def _run(cfg: DictConfig) -> dict[str, Any]:
    zoo = Zoo.from_cfg(cfg)
    table = str(cfg.table)
    rows = cfg.rows if isinstance(cfg.rows, str) else list(cfg.rows)
    entries = pick_rows(zoo, table, rows)
    work_dir = Path(str(cfg.work_dir))
    results = {e.name: run_row(cfg, zoo, e, work_dir) for e in entries}
    if not _is_main():
        return {"results": {}, "markdown": None}
    device = device_name(cfg.device)
    text = markdown(zoo, table, entries, results, device)
    out = Path(str(cfg.out))
    with atomic_write(out, "w") as f:
        f.write(text)
    say(text)
    done = Outcomes("paper_table")
    for entry in entries:
        if results[entry.name].get("reused"):
            done.skipped(f"row {entry.name} ({results[entry.name]['samples_dir']})")
        else:
            done.written(f"row {entry.name} ({results[entry.name]['samples_dir']})")
    done.written(out)
    done.finish()
    return {"results": results, "markdown": out}
