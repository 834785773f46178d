"""The train_transformer stage on a tiny generated data set: the loss falls, best/last and resume, a submitit
sweep, and the checks made before any work starts."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config.presets import preset
from pipeline.files.writes import save_torch
from pipeline.media.mel import CROP_LEN, FRAMES_PER_COLUMN
from tests.helpers import (
    DEPTH,
    FEATURES,
    ROOT,
    in_two_processes,
    make_classifier,
    make_codebook,
    make_dataset,
    tiny_transformer_cfg,
)

NO_ROLL = "transformer.roll_columns=false"


def _stage(outputs: Path, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPECVQGAN_OUTPUTS": str(outputs), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    flags = [a for a in args if a.startswith("--")]  # Hydra's flags come before the overrides
    overrides = [a for a in args if not a.startswith("--")]
    # 1 or 5 condition frames cannot follow a shift by whole codebook columns: no rolling (it names the folder)
    result = subprocess.run([sys.executable, "-m", "stages.train_transformer", *flags, "dataset=demo", "logger=none",
                             "trainer=cpu", NO_ROLL, *overrides], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.fixture
def demo(outputs: Path) -> Path:
    make_dataset(outputs / "demo_data")
    return make_codebook(outputs / "codebook.pt")


def _val_losses(log_text: str) -> list[float]:
    return [float(v) for v in re.findall(r"validation at step \d+: .*?val/loss=([0-9.]+)", log_text)]


@pytest.mark.slow
def test_sweep_through_submitit_local_trains_and_a_rerun_resumes(demo, outputs):
    """One sweep (hydra/launcher=local: submitit pickles the job, as on SLURM) over two condition sizes."""
    _stage(outputs, "--multirun", "hydra/launcher=local", "transformer.feat_sample_size=1,5",
           f"codebook.ckpt={demo}", "trainer.max_steps=20", "trainer.val_every=5", "trainer.log_every=10")
    for S in (1, 5):
        # codebook.ckpt and trainer.* stay out of the folder name
        run = outputs / "train_transformer" / "demo" / f"transformer.feat_sample_size-{S}+{NO_ROLL.replace('=', '-')}"
        assert (run / "checkpoints" / "last.pt").exists() and (run / "checkpoints" / "best.pt").exists()
        losses = _val_losses((run / "train_transformer.log").read_text())
        assert len(losses) == 4 and losses[-1] < losses[0] - 0.3, losses  # from about ln(32) = 3.47

    ckpt = torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["kind"] == "transformer" and ckpt["model_args"]["block_size"] == 270
    assert ckpt["features"]["name"] == FEATURES and ckpt["features"]["depth"] == DEPTH
    keys = set(ckpt["state_dict"])
    assert {"first_stage_permuter.forward_shuffle_idx", "transformer.embedder.weight",
            "first_stage_model.quantize.embedding.weight"} <= keys
    assert not any(k.startswith("first_stage_model.loss.") for k in keys)
    from pipeline.build.transformer import load_transformer

    model = load_transformer(run / "checkpoints" / "best.pt")  # self-contained: no codebook path needed
    assert model.transformer.embedder.weight.shape == (preset("transformer", "tiny").n_embd, DEPTH, 1)

    # a plain run with the same overrides lands in the same folder and resumes there
    result = _stage(outputs, f"codebook.ckpt={demo}", "transformer.feat_sample_size=5", "trainer.max_steps=22")
    log_text = (run / "train_transformer.log").read_text()
    assert "resumed from" in log_text and "at step 20" in log_text
    assert "step 22" in result.stdout


def test_mismatches_are_reported_before_any_work(demo, tmp_path):
    from pipeline.build.transformer import model_args_from_config
    from pipeline.train.train_transformer import preflight

    cfg = tiny_transformer_cfg(5)
    cfg.codebook.ckpt = str(demo)
    assert preflight(cfg, tmp_path).n_embed == 32
    resumed = {"model_args": model_args_from_config(cfg.transformer, 32, [5, 53])}  # the demo codebook's grid
    save_torch(tmp_path / "checkpoints" / "last.pt", resumed)
    other = tiny_transformer_cfg(1)
    other.codebook.ckpt = str(demo)
    with pytest.raises(ValueError, match=r"last.pt \(being resumed\).*feat_sample_size: 5.*1 in the config"):
        preflight(other, tmp_path)
    other_vocab = {"model_args": model_args_from_config(cfg.transformer, 64, [5, 53])}
    save_torch(tmp_path / "other" / "checkpoints" / "last.pt", other_vocab)
    with pytest.raises(ValueError, match=r"vocab_size: 64 in .*last.pt \(being resumed\), 32 in the config"):
        preflight(cfg, tmp_path / "other")  # the vocabulary is the codebook's: a run on another codebook is refused
    cfg.codebook.ckpt = str(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="train the codebook first"):
        preflight(cfg, None)
    no_classes = tiny_transformer_cfg(5, condition="class")
    no_classes.codebook.ckpt, no_classes.transformer.n_classes = str(demo), None
    with pytest.raises(ValueError, match="needs transformer.n_classes"):
        preflight(no_classes, None)
    aligned_class = tiny_transformer_cfg(5, condition="class")
    aligned_class.codebook.ckpt, aligned_class.transformer.init = str(demo), "time_aligned"
    with pytest.raises(ValueError, match="init=time_aligned .* needs transformer.condition=features"):
        preflight(aligned_class, None)
    cfg.transformer.init = "aligned"
    with pytest.raises(ValueError, match="transformer.init must be original or time_aligned, got 'aligned'"):
        preflight(cfg, None)


def test_sampled_tokens_follow_the_condition(demo, outputs):
    """After a short in-process run, a clip's condition gives (greedy) tokens that agree with its own class's real
    tokens far more than with the other class's: the GPT reads its condition, not only the token statistics."""
    from pipeline.data.datasets import batch_condition
    from pipeline.generate.sampling import sample
    from pipeline.train.loop import Trainer
    from pipeline.train.train_transformer import TransformerTask

    cfg = tiny_transformer_cfg(5)
    cfg.codebook.ckpt, cfg.transformer.roll_columns = str(demo), False
    cfg.transformer.init = "original"  # 5 frames carry the class; the time-aligned start is for a frame per column
    cfg.transformer.n_embd = 64  # the narrow GPT the figures below were measured with: a few dozen steps suffice
    task = TransformerTask(cfg)
    task.batch_size = 2
    trainer = Trainer(task, {**cfg.trainer, "max_steps": 60, "val_every": 0, "log_every": 100,
                             "early_stop_patience": None}, outputs / "run", logger_cfg={"name": "none"}, seed=0)
    trainer.fit()
    model = trainer.unwrap("model").eval()
    val = task.val_dataset()  # one clip per class
    items = [val[i] for i in range(len(val))]
    x = torch.stack([torch.as_tensor(it["image"]) for it in items]).float().unsqueeze(1)
    cond = batch_condition({"feature": torch.stack([torch.as_tensor(it["feature"]) for it in items])}, "features")
    with torch.no_grad():
        real = model.encode_to_tokens(x)  # (2, 265)
        fake = sample(model, cond, num_tokens=model.num_tokens, greedy=True)
        swapped = sample(model, cond.flip(0), num_tokens=model.num_tokens, greedy=True)
    agree = (fake[:, None] == real[None]).float().mean(-1)  # (sampled for clip i, real tokens of clip j)
    print(f"token agreement (rows: condition of clip i, columns: real tokens of clip j): {agree.tolist()}")
    assert (real[0] != real[1]).float().mean() > 0.3  # the classes' token sequences differ
    assert (agree.diag() > agree.flip(1).diag() + 0.2).all(), agree  # measured: 0.69 vs 0.35, 0.71 vs 0.42
    torch.testing.assert_close(swapped, fake.flip(0), rtol=0, atol=0)  # the condition alone decides (greedy)


def test_rolled_columns_shift_mel_and_condition_together(demo, outputs):
    from pipeline.data.datasets import ConditionedDataset
    from pipeline.train.train_transformer import RolledColumns, TransformerTask

    cfg = tiny_transformer_cfg(53)
    cfg.codebook.ckpt = str(demo)
    task = TransformerTask(cfg)
    base = task._dataset("train", train=False)
    rolled = RolledColumns(base, columns=CROP_LEN // FRAMES_PER_COLUMN, frames_per_column=FRAMES_PER_COLUMN)
    torch.manual_seed(3)
    item, plain = rolled[0], base[0]
    image, feature = np.asarray(item["image"]), np.asarray(item["feature"])
    shifts = [k for k in range(53) if np.array_equal(image, np.roll(plain["image"], 16 * k, axis=-1))]
    assert len(shifts) == 1 and shifts[0] != 0
    np.testing.assert_array_equal(feature, np.roll(plain["feature"], shifts[0], axis=0))
    assert item["target"] == plain["target"]
    with pytest.raises(ValueError, match="multiple of the 53 codebook columns"):
        RolledColumns(ConditionedDataset(cfg.dataset, cfg.features, "train", 5), columns=CROP_LEN // FRAMES_PER_COLUMN,
                      frames_per_column=FRAMES_PER_COLUMN)


def _judged_cfg(demo, tmp_path, **keys):
    cfg = tiny_transformer_cfg(53)
    cfg.codebook.ckpt, cfg.dataset.events = str(demo), None  # make_dataset's clips have no videos nor events
    cfg.transformer.monitor = "samples"
    cfg.classifier.ckpt = str(make_classifier(tmp_path / "classifier.pt"))
    for key, value in keys.items():
        cfg.transformer[key] = value
    return cfg


def test_best_pt_is_the_checkpoint_whose_samples_were_judged_best(demo, outputs, tmp_path, caplog):
    """transformer.monitor=samples: each validation samples the validation clips, the classifier judges them, and
    best.pt is the highest score's step (the same draws at every validation: the judge is a function of the weights)."""
    from pipeline.train.loop import Trainer
    from pipeline.train.train_transformer import TransformerTask

    task = TransformerTask(_judged_cfg(demo, tmp_path, monitor_draws=2))
    task.batch_size = 2
    trainer = Trainer(task, {**task.cfg.trainer, "max_steps": 12, "val_every": 3, "log_every": 100,
                             "early_stop_patience": None}, outputs / "run", logger_cfg={"name": "none"}, seed=0)
    with caplog.at_level("INFO", logger="pipeline.train.loop"):
        trainer.fit()
    scores = {int(step): (float(score), float(match)) for step, match, score in re.findall(
        r"validation at step (\d+): .*val/samples_class_match=([0-9.]+) .*val/samples_score=([0-9.]+)", caplog.text)}
    assert sorted(scores) == [3, 6, 9, 12] and "samples_synchrony" not in caplog.text  # no events: class only
    assert all(score == match for score, match in scores.values())  # the score is the mean of what is judged
    best_step = max(scores, key=lambda s: (scores[s][0], -s))  # the first of the best (a tie is no improvement)
    best = torch.load(outputs / "run" / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    assert best["train_state"]["step"] == best_step and trainer.best == scores[best_step][0]
    assert task.judge.draws == 2 and len(task.judge.ids) == 2  # make_dataset: one validation clip a class
    assert task.judge() == task.judge()  # the same weights, the same figures


def test_samples_monitor_is_refused_without_a_judge_naming_the_key(demo, tmp_path):
    from pipeline.train.train_transformer import preflight

    cfg = _judged_cfg(demo, tmp_path)
    cfg.classifier.ckpt = None
    with pytest.raises(ValueError, match="needs classifier.ckpt.*needs dataset.events.*transformer.monitor=loss"):
        preflight(cfg, None)
    cfg.classifier.ckpt = str(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match=r"classifier.ckpt=.*missing.pt does not exist"):
        preflight(cfg, None)
    cfg.classifier.ckpt, cfg.dataset.events = None, str(tmp_path / "events.json")
    with pytest.raises(FileNotFoundError, match=r"dataset.events=.*events.json does not exist"):
        preflight(cfg, None)
    other = _judged_cfg(demo, tmp_path)
    other.classifier.ckpt = str(make_classifier(tmp_path / "other.pt", classes=("dog", "chirp", "cat")))
    with pytest.raises(ValueError, match=r"knows the classes \['dog', 'chirp', 'cat'\], not \['noise'\] of this data "
                                         r"set's \['chirp', 'noise'\]"):
        preflight(other, None)  # before any training


def test_a_classifier_of_more_classes_judges_by_name(demo, tmp_path):
    """The judge's classifier may know more classes than the data set (a fine-tuning set of two of the demo's four):
    each clip's class is looked up by name."""
    from pipeline.build.codebook import load_codebook
    from pipeline.build.transformer import build_transformer, model_args_from_stage
    from pipeline.train.sample_score import SampleScore, class_indices

    assert class_indices(["cat", "noise", "chirp"], ["chirp", "noise"], "c.pt") == [2, 1]
    assert class_indices(None, ["chirp", "noise"], "c.pt") == [0, 1]  # the original's: the data set's order
    cfg = _judged_cfg(demo, tmp_path)
    cfg.classifier.ckpt = str(make_classifier(tmp_path / "more.pt", classes=("cat", "noise", "chirp")))
    codebook = load_codebook(demo)
    judge = SampleScore(build_transformer(model_args_from_stage(cfg, codebook), codebook), cfg, seed=0)
    assert judge.targets.tolist() == [2, 1]  # the validation clips: chirp, noise
    assert set(judge()) == {"samples_class_match", "samples_score"}


def _two_process_judged(outputs: str, codebook: str, run_dir: str) -> None:
    """Each rank's side of the two-process test below: the main process judges, every rank gets its figures."""
    from accelerate import PartialState

    from pipeline.train.loop import Trainer
    from pipeline.train.train_transformer import TransformerTask

    cfg = _judged_cfg(Path(codebook), Path(outputs))
    cfg.dataset.root = str(Path(outputs) / "demo_data")
    task = TransformerTask(cfg)
    task.batch_size = 1
    trainer = Trainer(task, {**cfg.trainer, "max_steps": 4, "val_every": 2, "log_every": 100,
                             "early_stop_patience": None}, run_dir, logger_cfg={"name": "none"}, seed=0)
    metrics = trainer.fit()
    state = PartialState()
    assert state.num_processes == 2 and (task.judge is not None) == state.is_main_process
    Path(run_dir, f"rank{state.process_index}.txt").write_text(f"{trainer.best!r} {metrics['val/samples_score']!r}")


def test_two_processes_choose_best_pt_by_the_main_process_judgement(demo, outputs, tmp_path):
    in_two_processes("tests.test_train_transformer:_two_process_judged", str(outputs), str(demo), str(tmp_path))
    ranks = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert ranks[0] == ranks[1] and "None" not in ranks[0], ranks
