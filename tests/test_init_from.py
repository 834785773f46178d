"""Fine-tuning: `transformer.init_from=` and `codebook.init_from=` start a new run from another model's weights, a
resumed run does not read its source again, and a source that does not fit the data is refused before any work,
naming both sizes and the fix."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.train.init_from import SourceMismatch
from tests.helpers import (
    DEPTH,
    FEATURES,
    ROOT,
    compose,
    features_preset,
    make_codebook,
    make_dataset,
    make_transformer,
    tiny_transformer_cfg,
)

RELEASED = ("released", "2021-01-01T00-00-01_vas_transformer")          # 2048-wide BN-Inception, 16 codes, 5 frames
RELEASED_CODEBOOK = ("released", "2021-01-01T00-00-00_vas_codebook")


@pytest.fixture
def demo(outputs: Path) -> Path:
    make_dataset(outputs / "demo_data")
    return make_codebook(outputs / "codebook.pt")


def _trainer(task, run_dir: Path):
    from pipeline.train.loop import Trainer

    cfg = task.cfg
    return Trainer(task, {**cfg.trainer, "max_steps": 2, "val_every": 0, "log_every": 100}, run_dir,
                   logger_cfg={"name": "none"}, seed=int(cfg.seed))


def _stage(outputs: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPECVQGAN_OUTPUTS": str(outputs), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "stages.train_transformer", "dataset=demo", "logger=none",
                           "trainer=cpu", "transformer.feat_sample_size=5", "transformer.roll_columns=false",
                           *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_a_new_run_starts_from_the_sources_weights(demo, outputs):
    from pipeline.train.train_transformer import TransformerTask

    source = make_transformer(outputs / "source.pt", demo, features_preset(FEATURES))
    cfg = tiny_transformer_cfg(5)
    cfg.codebook.ckpt, cfg.transformer.init_from = str(demo), str(source)
    task = TransformerTask(cfg)
    _trainer(task, outputs / "run").task.build()
    got = task.modules["model"].state_dict()
    want = torch.load(source, weights_only=True)["state_dict"]
    assert set(got) == set(want)
    for key, value in want.items():  # the GPT's and (same codebook) the frozen codebook's: all equal
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)

    scratch = TransformerTask(tiny_transformer_cfg(5))
    scratch.cfg.codebook.ckpt = str(demo)
    _trainer(scratch, outputs / "scratch").task.build()
    assert not torch.equal(scratch.modules["model"].state_dict()["transformer.head.weight"],
                           want["transformer.head.weight"])  # without init_from: the preset's own start


def test_reinit_patterns_start_afresh_as_a_run_from_scratch_and_need_a_source(demo, outputs):
    """transformer.reinit: the matching parameters are the ones a run from scratch starts with (same seed), the rest
    are the source's; without init_from it is refused before any work."""
    from pipeline.train.train_transformer import TransformerTask, preflight

    source = make_transformer(outputs / "source.pt", demo, features_preset(FEATURES))
    want = torch.load(source, weights_only=True)["state_dict"]
    scratch = TransformerTask(tiny_transformer_cfg(5))
    scratch.cfg.codebook.ckpt = str(demo)
    _trainer(scratch, outputs / "scratch").task.build()
    fresh = scratch.modules["model"].state_dict()
    cfg = tiny_transformer_cfg(5)
    cfg.codebook.ckpt, cfg.transformer.init_from = str(demo), str(source)
    cfg.transformer.reinit = ["head.*", "tok_emb.*"]
    task = TransformerTask(cfg)
    _trainer(task, outputs / "run").task.build()
    got = task.modules["model"].state_dict()
    restarted = {"transformer.head.weight", "transformer.tok_emb.weight"}
    for key in got:
        expected = fresh[key] if key in restarted else want[key]
        torch.testing.assert_close(got[key], expected, rtol=0, atol=0, msg=key)
    assert not torch.equal(fresh["transformer.head.weight"], want["transformer.head.weight"])
    cfg.transformer.reinit = ["heads.*"]
    with pytest.raises(ValueError, match=r"transformer.reinit: \['heads.\*'\] match no parameter"):
        _trainer(TransformerTask(cfg), outputs / "other").task.build()
    cfg.transformer.init_from = None
    with pytest.raises(ValueError, match="transformer.init_from is not set: set it, or transformer.reinit=null"):
        preflight(cfg, None)


def test_trainable_patterns_freeze_the_rest(demo, outputs):
    from pipeline.train.train_transformer import TransformerTask

    cfg = tiny_transformer_cfg(5)
    cfg.codebook.ckpt, cfg.transformer.trainable = str(demo), ["blocks.1.*", "head.*"]
    task = TransformerTask(cfg)
    _trainer(task, outputs / "run").task.build()
    gpt = task.modules["model"].transformer
    trained = {n for n, p in gpt.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("blocks.1.", "head.")) for n in trained)
    assert {id(p) for g in task.optimizers["transformer"].param_groups for p in g["params"]} == \
        {id(p) for p in gpt.parameters() if p.requires_grad}
    cfg.transformer.trainable = ["block.1.*"]
    with pytest.raises(ValueError, match=r"transformer.trainable: \['block.1.\*'\] match no parameter.*blocks"):
        _trainer(TransformerTask(cfg), outputs / "other").task.build()


@pytest.mark.slow
def test_the_stage_names_its_run_by_the_source_and_a_rerun_resumes_without_it(demo, outputs):
    source = make_transformer(outputs / "source.pt", demo, features_preset(FEATURES))
    first = _stage(outputs, f"codebook.ckpt={demo}", f"transformer.init_from={source}", "trainer.max_steps=2",
                   "trainer.val_every=0")
    assert first.returncode == 0, first.stderr[-3000:]
    runs = list((outputs / "train_transformer" / "demo").glob("*transformer.init_from-source.pt-*"))
    assert len(runs) == 1, runs  # the source names the run: another source is another folder
    record = json.loads((runs[0] / "run.json").read_text())
    assert record["config"]["transformer"]["init_from"] == str(source)
    assert "starting from the weights of transformer.init_from=" in (runs[0] / "train_transformer.log").read_text()

    source.unlink()  # a resumed run reads its last.pt, never the source again
    again = _stage(outputs, f"codebook.ckpt={demo}", f"transformer.init_from={source}", "trainer.max_steps=3",
                   "trainer.val_every=0")
    assert again.returncode == 0, again.stderr[-3000:]
    log = (runs[0] / "train_transformer.log").read_text()
    assert "resumed from" in log and log.count("starting from the weights") == 1
    assert torch.load(runs[0] / "checkpoints" / "last.pt", weights_only=True)["train_state"]["step"] == 3


@pytest.mark.slow
def test_the_released_layout_on_the_demo_data_is_refused_before_training(demo, outputs, original_fixtures):
    """The original's released log folder (2048-wide BN-Inception features, a 16-code vocabulary, 5 frames) on the
    demo's data (1280-wide EfficientNet-Lite0 features, a 32-code codebook): refused by the stage, naming both sizes
    of each misfit and the fix, before anything is written."""
    released = original_fixtures.joinpath(*RELEASED)
    result = _stage(outputs, f"codebook.ckpt={demo}", f"transformer.init_from={released}")
    assert result.returncode != 0
    err = result.stderr
    assert "SourceMismatch" in err and "Nothing was trained" in err, err[-3000:]
    assert "the source reads 2048-wide bninception features, this data set has 1280-wide efficientnet_lite0 " \
           "features: extract `features=bninception`" in err
    assert "a 16-code vocabulary" in err and "has 32 codes" in err
    assert not list((outputs / "train_transformer").rglob("run.json"))
    assert not list((outputs / "train_transformer").rglob("*.pt"))

    # the preflight names each misfit alone as well
    cfg = tiny_transformer_cfg(53)
    cfg.codebook.ckpt, cfg.transformer.init_from = str(demo), str(released)
    cfg.transformer.feat_depth = cfg.features.depth = 2048
    cfg.features.name = "bninception"
    from pipeline.train.train_transformer import TransformerTask

    with pytest.raises(SourceMismatch) as info:
        TransformerTask(cfg).preflight(outputs / "run")
    text = str(info.value)
    assert "-wide" not in text and "a 16-code vocabulary" in text  # the features fit now, the vocabulary does not
    assert "5 visual frames per clip (block_size 270), this config's 53: set transformer.feat_sample_size=5" in text
    assert ("n_head 2, n_embd 64, this config's n_head 4, n_embd 128: set transformer.n_head=2 "
            "transformer.n_embd=64") in text


def test_a_misfit_of_our_own_checkpoint_names_the_keys(demo, outputs):
    from pipeline.train.train_transformer import TransformerTask

    source = make_transformer(outputs / "source.pt", demo, features_preset(FEATURES), feat_sample_size=1)
    cfg = tiny_transformer_cfg(5)
    cfg.codebook.ckpt, cfg.transformer.init_from = str(demo), str(source)
    with pytest.raises(SourceMismatch, match=r"1 visual frames per clip .*this config's 5: set "
                                             r"transformer.feat_sample_size=1"):
        TransformerTask(cfg).preflight(outputs / "run")
    cfg.transformer.init_from = str(outputs / "missing.pt")
    with pytest.raises(FileNotFoundError, match="transformer.init_from=.*missing.pt does not exist"):
        TransformerTask(cfg).preflight(outputs / "run")


def test_a_codebook_run_starts_from_the_sources_weights_and_a_misfit_is_refused(demo, outputs, original_fixtures):
    from pipeline.train.train_codebook import CodebookTask

    cfg = compose("train_codebook", "dataset=demo", "logger=none", f"codebook.init_from={demo}")
    task = CodebookTask(cfg)
    _trainer(task, outputs / "codebook").task.build()
    want = torch.load(demo, weights_only=True)["state_dict"]
    got = task.modules["model"].state_dict()
    for key, value in want.items():
        if not key.startswith("loss."):
            torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)

    cfg.codebook.init_from = str(original_fixtures.joinpath(*RELEASED_CODEBOOK))  # 16 codes of 64, ch 32
    with pytest.raises(SourceMismatch, match=r"n_embed 16 in the source, 32 in the config.*codebook.model.n_embed=16"):
        CodebookTask(cfg).preflight(outputs / "other")


def test_features_of_the_right_width_but_another_network_are_refused(demo, outputs):
    from pipeline.train.train_transformer import TransformerTask

    source = make_transformer(outputs / "source.pt", demo, {**features_preset(FEATURES), "name": "other_net"})
    cfg = tiny_transformer_cfg(5)
    cfg.codebook.ckpt, cfg.transformer.init_from = str(demo), str(source)
    assert int(cfg.features.depth) == DEPTH
    with pytest.raises(SourceMismatch, match=r"reads other_net features, this data set has 1280-wide "
                                             r"efficientnet_lite0 features \(as wide, but another network's\)"):
        TransformerTask(cfg).preflight(outputs / "run")
