"""`python -m stages.chain`: a folder of videos (names with spaces, a truncated file, a video without sound) to
metrics.json and report.html in one command, exactly as a user runs it; a rerun does nothing and says so."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.chain.graph import quoted
from pipeline.config.presets import compose_stage
from tests.helpers import CHAIN_FEW_STEPS, ROOT, video_folder, write_clip

pytestmark = pytest.mark.slow  # the chain runs its stages as subprocesses: make test, not the fast lane


def chain(outputs: Path, root: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "stages.chain", "dataset=folder", quoted("dataset.root", root), "models=tiny",
               *CHAIN_FEW_STEPS, *extra]
    env = {**os.environ, "SPECVQGAN_OUTPUTS": str(outputs), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """One chain run on a folder of the demo's videos: (outputs, folder, its result, its run folder)."""
    tmp = tmp_path_factory.mktemp("chain")
    root = video_folder(tmp / "my videos")
    outputs = tmp / "outputs"
    result = chain(outputs, root)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (run,) = (outputs / "chain" / "folder").iterdir()
    return outputs, root, result, run


def test_a_folder_of_videos_goes_to_metrics_and_a_report_with_the_bad_files_named(ran):
    outputs, root, result, run = ran
    samples = run / "sample" / "samples" / "valid"
    metrics = json.loads((samples / "metrics.json").read_text())
    assert (samples / "report.html").is_file() and metrics["num_fakes"] == 2 * 2  # 2 valid clips x 2 samples
    assert metrics["class_match_rate"] is not None  # the classifier knows the folder's two classes
    said = result.stdout
    for step in ("index", "extract_mels", "extract_features", "splits", "train_codebook", "train_vocoder",
                 "train_classifier", "train_transformer", "sample", "sample_shuffled", "evaluate"):
        assert f"[chain] {step} done in" in said
    assert "$ python -m stages.train_transformer dataset=folder 'dataset.root=" in said  # each step as typed
    # the two bad files, named with their reasons, and the chain went on
    skipped = {row["file"]: row for row in json.loads(next(outputs.glob("folder_data/*/skipped.json")).read_text())
               ["skipped"]}
    assert sorted(skipped) == ["chirp circle/broken clip.mp4", "chirp circle/no sound.mp4"]
    assert skipped["chirp circle/no sound.mp4"]["reason"].startswith("no sound")
    assert "chirp circle/broken clip.mp4: unreadable" in said and "chirp circle/no sound.mp4: no sound" in said
    assert "[chain] targets, each beside its baseline" in said and "class match of generated samples" in said
    assert str(samples / "report.html") in said
    # trained on the folder's clips: names with spaces all the way to the samples
    assert sorted(p.name for p in samples.glob("cls_*/*.wav")) == sorted(
        f"clip {k}_mel_sample_{s}.wav" for k in _valid_clips(outputs) for s in range(2))


def _valid_clips(outputs: Path) -> list[str]:
    rows = next(outputs.glob("folder_data/*/splits/valid.txt")).read_text().splitlines()
    return [row.split("/", 1)[1].removeprefix("clip ") for row in rows]


def test_the_same_command_again_does_nothing_and_says_so(ran):
    outputs, root, _, run = ran
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and ".hydra" not in p.parts
              and p.suffix != ".log"}
    tic = time.monotonic()
    again = chain(outputs, root)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert time.monotonic() - tic < 60
    assert again.stdout.startswith(f"[chain] nothing to do: all 11 steps of {run} are finished")
    assert "$ python -m" not in again.stdout and "[chain] targets" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_a_changed_folder_leaves_the_trained_models_alone(ran, tmp_path):
    outputs, root, _, run = ran
    added = write_clip(root / "noise square" / "new one.mp4", 2.0, audio="chirp")
    try:
        result = chain(outputs, root)
        assert result.returncode != 0
        assert "changed since step" in result.stderr and "+run_tag=NAME" in result.stderr
        assert (run / "train_codebook" / "step.json").is_file()  # nothing of the run was touched
    finally:
        added.unlink()


def test_bad_requests_are_refused_before_any_step_naming_the_key(tmp_path):
    missing = chain(tmp_path / "outputs", tmp_path / "no such folder")
    assert missing.returncode != 0 and "is not a folder: point it at a folder of videos" in missing.stderr
    assert not (tmp_path / "outputs" / "folder_data").exists()
    paper = chain(tmp_path / "outputs", ROOT / "tests", "models=paper")
    assert paper.returncode != 0 and "features.weights must be set" in paper.stderr


def test_the_paper_table_is_a_graph_downloads_then_rows_then_the_table(tmp_path, compose):
    from omegaconf import OmegaConf

    from pipeline.chain.graph import ChainSpec
    from pipeline.evaluate.paper_table import table_graph

    overrides = ["table=c", "rows=[212feats_bn,5feats_bn]", "samples_per_clip=2", f"paths.outputs={tmp_path}"]
    cfg = compose("paper_table", *overrides, "submit=slurm", "slurm.partition=gpu")
    graph = table_graph(ChainSpec(OmegaConf.to_container(cfg, resolve=True), overrides, {}, tmp_path / "run"))
    rows = ["row_vas_transformer_212feats_bn", "row_vas_transformer_5feats_bn"]
    assert [s.name for s in graph] == ["download", *rows, "table"]
    assert graph["download"].resources == "cpu" and graph[rows[0]].resources == "gpu"
    assert "what=[melception,vggsound_mel_stats,vas_transformer_212feats_bn,vas_transformer_5feats_bn]" in \
        graph["download"].command()
    assert [graph[r].deps for r in rows] == [("download",), ("download",)] and graph["table"].deps == tuple(rows)
    command = graph[rows[0]].command()
    assert command[:4] == ["python", "-m", "stages.paper_table", "table=c"]
    assert "rows=[vas_transformer_212feats_bn]" in command and "samples_per_clip=2" in command
    # a row whose result.json exists (and marker) is finished: it would not be submitted again
    row = graph[rows[0]]
    assert not row.done()
    (tmp_path / "paper_table" / "c" / "vas_transformer_212feats_bn_2spv").mkdir(parents=True)
    (tmp_path / "paper_table" / "c" / "vas_transformer_212feats_bn_2spv" / "result.json").write_text("{}")
    row.mark_done()
    assert row.done() and not graph[rows[1]].done()


def test_make_demo_runs_the_demo_chain_on_the_generated_folder():
    from pipeline.demo.chain import demo_chain

    recipe = (ROOT / "Makefile").read_text().split("\ndemo:")[1].split("\n\n")[0]
    chain_line = next(line for line in recipe.splitlines() if "-m stages.chain" in line)
    assert "-m stages.make_demo_data" in recipe.split(chain_line)[0]  # the folder first
    share = compose_stage("make_demo_data").valid_share
    assert chain_line.split("-m stages.chain ")[1].split() == demo_chain("$(DEMO_DIR)", share)


@pytest.mark.parametrize("models, presets, checkpoint, vocoder", [
    ("tiny", ("tiny", "tiny", "tiny", "melception_tiny", "efficientnet_lite0"), "best", None),
    ("paper", ("vas", "vas", "vggsound", "melception", "bninception"), "best", "melgan")])
def test_models_picks_every_preset_together(compose, models, presets, checkpoint, vocoder):
    cfg = compose("chain", "dataset.root=/videos", f"models={models}")
    assert tuple(cfg[g].name for g in ("codebook", "transformer", "vocoder", "classifier", "features")) == presets
    assert cfg.transformer_checkpoint == checkpoint and cfg.vocoder.ckpt == vocoder
    assert compose("chain", "dataset.root=/videos", f"models={models}", "codebook=vggsound").codebook.name == "vggsound"


@pytest.mark.parametrize("models, judged", [("tiny", True), ("paper", False)])
def test_the_transformer_step_is_judged_by_the_classifier_it_waits_for(models, judged, tmp_path):
    """models=tiny chooses the transformer's best.pt by judged samples (transformer.monitor=samples): its step gets the
    chain's classifier and waits for it; models=paper keeps the validation loss and does not wait."""
    from pipeline.chain.chain import compose_chain
    from pipeline.chain.steps import folder_graph

    spec = compose_chain(["dataset=folder", f"dataset.root={tmp_path}", f"models={models}",
                          f"paths.outputs={tmp_path}", "features.weights=weights.pt"])
    step = folder_graph(spec)["train_transformer"]
    command = step.command()
    assert f"transformer.monitor={'samples' if judged else 'loss'}" in command
    assert ("train_classifier" in step.deps) == judged
    assert any(a.startswith("classifier.ckpt=") and "train_classifier" in a for a in command) == judged
    assert "transformer.monitor=loss" in folder_graph(compose_chain(
        ["dataset=folder", f"dataset.root={tmp_path}", f"models={models}", f"paths.outputs={tmp_path}",
         "features.weights=weights.pt", "transformer.monitor=loss"]))["train_transformer"].command()
