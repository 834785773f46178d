"""Inputs refused before any work, plainly: a config value out of range or of the wrong type, an unknown key (also
added with `+`), a misspelt one (the nearest valid key, not Hydra's advice to add it), a missing video or checkpoint
(before any model loads, with no run folder left), a truncated video through the sample stage (as the extraction
stages refuse it), NaN features (naming the file, before sampling and when a data set is read), a top_k beyond the
vocabulary."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from pipeline.config.check import USAGE_ERROR, config_problems
from pipeline.files.writes import save_pickle
from tests.helpers import (
    ROOT,
    compose,
    faststart_truncated,
    features_preset,
    make_codebook,
    make_dataset,
    make_transformer,
    write_clip,
)


def stage(outputs: Path, name: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPECVQGAN_OUTPUTS": str(outputs), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", f"stages.{name}", "dataset=demo", "logger=none", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)


def refused(result: subprocess.CompletedProcess, outputs: Path, *expected: str) -> None:
    """Exit status 2, each `expected` text in a plain message (no traceback), nothing written under `outputs`."""
    assert result.returncode == USAGE_ERROR, result.stdout[-2000:] + result.stderr[-3000:]
    for text in expected:
        assert text in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr, result.stderr[-3000:]
    made = [p for p in outputs.rglob("*") if "demo_data" not in p.parts]
    assert made == [], made  # no run folder


# --------------------------------------------------------------------------------------------- config values
@pytest.mark.parametrize("stage_name, override, expected", [
    ("train_transformer", "trainer.max_steps=-1", "trainer.max_steps=-1: must be an integer >= 1 or null"),
    ("train_transformer", "trainer.ckpt_every=-5", "trainer.ckpt_every=-5: must be an integer >= 0 or null"),
    ("train_transformer", "trainer.grad_accum=0", "trainer.grad_accum=0: must be an integer >= 1"),
    ("train_transformer", "trainer.num_workers=-1", "trainer.num_workers=-1: must be an integer >= 0"),
    ("train_codebook", "codebook.optim.batch_size=-2", "codebook.optim.batch_size=-2: must be an integer >= 1"),
    ("train_codebook", "codebook.optim.lr=0", "codebook.optim.lr=0.0: must be a number > 0"),
    ("sample", "samples_per_clip=0", "samples_per_clip=0: must be an integer >= 1"),
    ("sample", "samples_per_clip=two", "samples_per_clip=two: must be an integer >= 1"),
    ("sample", "max_seconds=-3", "max_seconds=-3: must be a number > 0 or null"),
    ("sample", "batch_size=0", "batch_size=0: must be an integer >= 1"),
    ("sample", "sampling.top_k=0", "sampling.top_k=0: must be an integer >= 1, or auto, or null"),
    ("sample", "sampling.top_k=many", "sampling.top_k=many: must be an integer >= 1, or auto, or null"),
    ("extract_mels", "num_workers=-1", "num_workers=-1: must be an integer >= 0"),
    ("extract_mels", "chain=fast", "chain=fast: must be one of original, direct"),
    ("codec", "mode=squeeze", "mode=squeeze: must be one of encode, decode, roundtrip"),
    ("download", "timeout_s=0", "timeout_s=0: must be a number > 0"),
    ("app", "port=70000", "port=70000: must be an integer >= 0 and <= 65535"),
    ("evaluate", "reals=some", "reals=some: must be one of all, sampled"),
    ("train_transformer", "+trainer.learning_rat=1", "`trainer.learning_rat` is not a key of the train_transformer"),
    ("sample", "+samples_per_video=3", "`samples_per_video` is not a key of the sample config: did you mean "
                                       "`samples_per_clip`?"),
])
def test_a_value_out_of_range_or_an_unknown_key_is_named_with_what_is_allowed(stage_name, override, expected):
    required = {"codec": ["mode=encode", "input=x.wav", "output=x.svqc", "codebook.ckpt=c.pt"],
                "evaluate": ["classifier.ckpt=m.pt"], "download": ["what=list"]}.get(stage_name, [])
    cfg = compose(stage_name, "dataset=demo", *required, override)
    problems = config_problems(cfg, stage_name)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_every_stage_as_composed_has_no_problem():
    for path in sorted((ROOT / "stages").glob("*.py")):
        if path.stem.startswith("_"):
            continue
        required = {"codec": ["mode=encode", "input=x.wav", "output=x.svqc", "codebook.ckpt=c.pt"],
                    "evaluate": ["classifier.ckpt=m.pt"], "download": ["what=list"], "paper_table": ["table=c"]}
        for dataset in ("demo", "vas", "vggsound"):
            cfg = compose(path.stem, f"dataset={dataset}", *required.get(path.stem, []))
            assert config_problems(cfg, path.stem) == [], (path.stem, dataset)


@pytest.mark.slow
def test_wrong_values_stop_the_stage_at_once_with_no_run_folder(outputs):
    result = stage(outputs, "train_transformer", "+trainer.learning_rat=1", "trainer.max_steps=-1")
    refused(result, outputs, "trainer.max_steps=-1: must be an integer >= 1", "`trainer.learning_rat` is not a key",
            "`trainer` has: device, mixed_precision")
    refused(stage(outputs, "sample", "samples_per_clip=two"), outputs, "samples_per_clip=two: must be an integer")


@pytest.mark.slow
def test_a_misspelt_key_gets_the_nearest_valid_one_and_not_hydras_append_advice(outputs):
    result = stage(outputs, "train_transformer", "transformer.feat_sampel_size=5")
    refused(result, outputs, "`transformer.feat_sampel_size` is not a key of the train_transformer config: did you "
                             "mean `transformer.feat_sample_size`?")
    assert "To append to your config use" not in result.stderr and "+transformer.feat_sampel_size" not in result.stderr
    # under an open mapping Hydra's advice is the right one, and left to it
    mirror = stage(outputs, "download", "what=list", "zoo.mirrors.a3s=http://127.0.0.1:9")
    assert mirror.returncode == 1 and "+zoo.mirrors.a3s=http://127.0.0.1:9" in mirror.stderr, mirror.stderr


# ------------------------------------------------------------------------------------------------- the inputs
@pytest.fixture
def tiny(outputs: Path, tmp_path: Path) -> dict[str, Path]:
    """A tiny codebook and a transformer over ResNet50-tiny features (vocabulary 32, features 256 wide)."""
    codebook = make_codebook(tmp_path / "codebook.pt")
    return {"codebook": codebook,
            "transformer": make_transformer(tmp_path / "t_rn50.pt", codebook, features_preset("resnet50_tiny"), 1)}


@pytest.mark.slow
def test_missing_video_or_checkpoint_is_refused_before_any_model_loads_leaving_no_run_folder(outputs, tiny,
                                                                                              tmp_path):
    refused(stage(outputs, "sample", f"video={tmp_path / 'absent.mp4'}", f"transformer.ckpt={tiny['transformer']}"),
            outputs, f"video={tmp_path / 'absent.mp4'}: no such file or folder",
            "nothing was run: no model loaded, no run folder made")
    video = write_clip(tmp_path / "clip.mp4", 2.0)
    refused(stage(outputs, "sample", f"video={video}", f"transformer.ckpt={tmp_path / 'nope.pt'}"), outputs,
            f"transformer.ckpt={tmp_path / 'nope.pt'}: no such checkpoint file or folder; train one with")
    refused(stage(outputs, "sample", f"video={video}", "model=vas_transformer_212feat"), outputs,
            "did you mean vas_transformer_212feats_bn")
    refused(stage(outputs, "sample", f"video={video}", f"transformer.ckpt={tiny['transformer']}",
                  f"vocoder.ckpt={tmp_path / 'melgan.pt'}"), outputs, "vocoder.ckpt=")


@pytest.mark.slow
def test_a_truncated_video_is_refused_by_the_sample_stage_as_by_extraction(outputs, tiny, tmp_path):
    from pipeline.generate.sample import run

    cut = faststart_truncated(tmp_path / "videos" / "cut.mp4")
    refused(stage(outputs, "sample", f"video={cut}", f"transformer.ckpt={tiny['transformer']}",
                  "feature_weights=random"), outputs, "cut.mp4: truncated, its header declares 10.")
    # in a folder the truncated video fails alone, said and recorded, and the stage ends non-zero
    write_clip(tmp_path / "videos" / "good.mp4", 1.5)
    cfg = compose("sample", "dataset=demo", "logger=none", "device=cpu", f"video={tmp_path / 'videos'}",
                  f"transformer.ckpt={tiny['transformer']}", "feature_weights=random")
    with pytest.raises(SystemExit, match=r"1 written, 0 skipped \(already there\), 1 failed"):
        run(cfg, run_dir=tmp_path / "run")
    assert (tmp_path / "run" / "good_sample_0.wav").is_file() and not list((tmp_path / "run").glob("cut_*"))
    assert "truncated" in (tmp_path / "run" / "failures.jsonl").read_text()


@pytest.mark.slow
def test_nan_features_are_refused_naming_the_file(outputs, tiny, tmp_path):
    from pipeline.data.datasets import ConditionedDataset

    bad = np.ones((215, 256), np.float32)
    bad[40, 7] = np.nan
    save_pickle(tmp_path / "nan.pkl", bad)
    result = stage(outputs, "sample", f"features_file={tmp_path / 'nan.pkl'}",
                   f"transformer.ckpt={tiny['transformer']}")
    refused(result, outputs, f"{tmp_path / 'nan.pkl'}: 1 NaN and 0 infinite feature values (the first at frame 40")
    # a data set reading a damaged pickle names it too (training and the sample stage's splits read through it)
    root = make_dataset(outputs / "demo_data", train=1, valid=1)
    damaged = root / "features" / "noise" / "feature_efficientnet_lite0_dim1280_21.5fps" / "video_00001.pkl"
    inf = np.zeros((215, 1280), np.float32)
    inf[3, 3] = np.inf
    save_pickle(damaged, inf)
    cfg = compose("train_transformer", "dataset=demo")
    data = ConditionedDataset(OmegaConf.to_container(cfg.dataset, resolve=True),
                              OmegaConf.to_container(cfg.features, resolve=True), "valid", 5)
    data[0]
    with pytest.raises(ValueError, match=rf"{damaged}: 0 NaN and 1 infinite feature values"):
        data[1]


@pytest.mark.slow
def test_top_k_beyond_the_vocabulary_is_refused_as_soon_as_the_checkpoint_is_read(outputs, tiny, tmp_path):
    from pipeline.generate.settings import SamplingSettings

    video = write_clip(tmp_path / "clip.mp4", 2.0)
    refused(stage(outputs, "sample", f"video={video}", f"transformer.ckpt={tiny['transformer']}",
                  "sampling.top_k=100000"), outputs, "sampling.top_k=100000: at most the model's vocabulary of 32")
    with pytest.raises(ValueError, match="sampling.top_k=64: at most the model's vocabulary of 32 codes"):
        SamplingSettings.from_config({"mode": "nopix", "temperature": 1.0, "top_k": 64, "top_p": None}, vocab=32)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["extract_mels", "extract_features"])
def test_an_empty_split_fails_the_extraction_stages(outputs, name):
    """Both extraction stages exit non-zero on an empty split file (before: 0, having done nothing), before any
    network loads or run folder is made; a clip that fails makes them exit non-zero too (tests/test_features.py,
    tests/test_extraction.py)."""
    from pipeline.extract.clips import EmptySplit

    (outputs / "demo_data").mkdir()
    (outputs / "demo_data" / "demo_train.txt").write_text("\n")
    refused(stage(outputs, name, "split=train"), outputs, "demo_train.txt lists no clips: nothing to extract")
    module = __import__(f"pipeline.extract.{name}", fromlist=["run"])
    with pytest.raises(EmptySplit, match="lists no clips"):
        module.run(compose(name, "dataset=demo", "split=train", "features.weights=random"
                           if name == "extract_features" else "chain=direct"), run_dir=outputs / "run")
