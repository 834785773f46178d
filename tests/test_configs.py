"""Every stage's config composes with every data set (and the tiny presets), so a broken YAML fails in seconds."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from tests.helpers import ROOT, built_transformer

STAGES = sorted(p.stem for p in (ROOT / "stages").glob("*.py") if not p.stem.startswith("_"))
# keys a user must give for these stages; everything else has a default
REQUIRED = {"codec": ["mode=encode", "input=x.wav", "output=x.svqc", "codebook.ckpt=c.pt"],
            "evaluate": ["classifier.ckpt=melception.pt"], "download": ["what=list"], "paper_table": ["table=c"]}
# files a user must name, asked for only where they are used: the feature network's weights (where frames
# become features) and the LPAPS trunk (when the paper codebook is trained with its perceptual loss); the SLURM
# partition (when a chain or table is submitted to SLURM)
NEEDED_ONLY_WHEN_USED = {"features.weights", "codebook.loss.lpaps_trunk", "slurm.partition"}


def test_every_stage_has_a_primary_config():
    assert STAGES, "no stages found"
    missing = [s for s in STAGES if not (ROOT / "conf" / f"{s}.yaml").exists()]
    assert not missing, f"stages without conf/<name>.yaml: {missing}"


@pytest.mark.parametrize("dataset", ["demo", "vas", "vggsound"])
@pytest.mark.parametrize("stage", STAGES)
def test_stage_config_composes_and_resolves(stage, dataset, compose):
    cfg = compose(stage, f"dataset={dataset}", *REQUIRED.get(stage, []))
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert container["dataset"]["name"] == dataset
    missing = sorted(set(OmegaConf.missing_keys(cfg)) - NEEDED_ONLY_WHEN_USED)
    assert not missing, f"{stage} dataset={dataset} leaves required keys unset: {missing}"


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
def test_paper_experiments_compose_with_derived_block_size(experiment, compose):
    cfg = compose("train_transformer", f"experiment={experiment}")
    t = cfg.transformer
    cond = 1 if t.condition == "class" else t.feat_sample_size
    model = built_transformer(t, cfg.data.crop_len)  # grid and block_size come from the codebook at build
    assert (model.first_stage_permuter.H, model.first_stage_permuter.W) == (5, 53)
    assert model.transformer.block_size == 265 + cond


@pytest.mark.parametrize("sizes", [(1, 266), (5, 270), (212, 477)])
def test_block_size_follows_feat_sample_size(sizes, compose):
    feats, block = sizes
    cfg = compose("train_transformer", "dataset=vas", f"transformer.feat_sample_size={feats}")
    assert built_transformer(cfg.transformer, cfg.data.crop_len).transformer.block_size == block


def test_run_folder_names_ignore_where_and_how():
    from pipeline.runs.folders import run_name

    assert run_name([]) == "default"
    assert run_name(["dataset=vas", "trainer=gpu", "trainer.max_steps=5", "logger.mode=offline"]) == "default"
    name = run_name(["transformer.feat_sample_size=5", "codebook=vas"])
    assert name == "codebook-vas+transformer.feat_sample_size-5"


def test_run_folders_can_be_passed_unquoted_as_overrides():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from pipeline.runs.folders import run_name

    name = run_name(["classifier=melception_tiny", "codebook.optim.betas=[0.5,0.8]", "x.ckpt=/a/b=c/best.pt"])
    path = f"outputs/train_classifier/demo/{name}/checkpoints/best.pt"
    assert OverridesParser.create().parse_override(f"classifier.ckpt={path}").value() == path


# ------------------------------------------------------------------- typed configs: errors before any work
@pytest.mark.parametrize("override, key, expected", [
    ("codebook.optim.batch_size=abc", "codebook.optim.batch_size", "could not be converted to Integer"),
    ("trainer.max_steps=ten", "trainer.max_steps", "could not be converted to Integer"),
    ("data.random_crop=maybe", "data.random_crop", "is not a valid bool"),
])
def test_a_value_of_the_wrong_type_fails_at_composition_naming_key_and_type(compose, override, key, expected):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as error:
        compose("train_codebook", "dataset=demo", override)
    message = f"{error.value}\n{error.value.__cause__}"
    assert f"full_key: {key}" in message and expected in message, message


def test_sampling_values_are_typed_in_every_place_they_are_set(compose):
    from hydra.errors import ConfigCompositionException

    for stage, key in (("sample", "sampling.temperature"), ("app", "sampling.temperature"),
                       ("train_transformer", "transformer.sampling.temperature")):
        with pytest.raises(ConfigCompositionException, match=key.replace(".", r"\.")):
            compose(stage, "dataset=demo", f"{key}=hot")


@pytest.mark.slow
def test_an_unknown_key_is_pointed_at_the_nearest_valid_one(outputs):
    from pipeline.config.check import unknown_key_hints

    [hint] = unknown_key_hints("train_codebook", ["dataset=demo", "trainer.max_step=3", "seed=1"])
    assert "`trainer.max_step` is not a key" in hint and "did you mean `trainer.max_steps`?" in hint
    [old] = unknown_key_hints("sample", ["vocoder_ckpt=melgan"])  # the old spelling of `vocoder.ckpt`
    assert "did you mean `vocoder.ckpt`?" in old
    assert unknown_key_hints("train_transformer", ["dataset=vas", "transformer.feat_sample_size=5,1"]) == []

    result = subprocess.run([sys.executable, "-m", "stages.train_codebook", "dataset=demo", "logger=none",
                             "trainer.max_step=3"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "SPECVQGAN_OUTPUTS": str(outputs)}, check=False)
    assert result.returncode == 2 and "did you mean `trainer.max_steps`?" in result.stderr, result.stderr
    assert not any(outputs.iterdir())  # nothing made: no run folder


def test_sampling_settings_are_checked_and_auto_takes_the_recorded_top_k():
    from pipeline.generate.settings import SamplingSettings

    node = {"mode": "nopix", "temperature": 1.0, "top_k": "auto", "top_p": None}
    assert SamplingSettings.from_config(node, {"top_k": 64}, vocab=128).top_k == 64
    assert SamplingSettings.from_config(node, None, vocab=128).top_k == 64 == 128 // 2
    assert SamplingSettings.coerce({"mode": "half", "temperature": 0.5, "top_k": 8, "top_p": 0.9}).options() == {
        "mode": "half", "temperature": 0.5, "top_k": 8, "top_p": 0.9}
    for bad, key in (({"mode": "full"}, "sampling.mode"), ({"temperature": 0.0}, "sampling.temperature"),
                     ({"top_k": 0}, "sampling.top_k"), ({"top_p": 1.5}, "sampling.top_p")):
        with pytest.raises(ValueError, match=key):
            SamplingSettings(**{**node, "top_k": None, **bad})


def test_the_clip_sizes_are_one_node_and_the_code_constants_agree(compose):
    from pipeline.media.audio import SR
    from pipeline.media.mel import CROP_LEN, HOP, LENGTH, SPEC_LEN

    cfg = compose("train_transformer", "dataset=demo", "clip.crop_len=832")  # one override moves every stage's crop
    assert cfg.data.crop_len == 832
    clip = compose("base").clip
    assert (clip.sample_rate, clip.length, clip.spec_len, clip.crop_len) == (SR, LENGTH, SPEC_LEN, CROP_LEN)
    assert clip.spec_len == 1 + clip.length // HOP - 2  # 862 frames computed, the last 2 dropped
    for stage, key in (("extract_mels", "spec_len"), ("evaluate", "crop_len"), ("codec", "window_frames")):
        cfg = compose(stage, "dataset=demo", *REQUIRED.get(stage, []))
        assert OmegaConf.select(cfg, key) == {"spec_len": SPEC_LEN, "crop_len": CROP_LEN,
                                              "window_frames": CROP_LEN}[key], (stage, key)


def test_the_visual_frame_sizes_are_the_clip_node_and_every_features_preset_follows_it(compose):
    from pipeline.checkpoints.zoo import features_preset
    from pipeline.data.conditions import FEAT_CROP_LEN, FEAT_LEN
    from pipeline.extract.visual import Preprocessing
    from pipeline.media.video import FPS

    clip = compose("base").clip
    assert (clip.feat_len, clip.feat_crop_len) == (FEAT_LEN, FEAT_CROP_LEN) == (215, 212)
    assert clip.feat_fps == FPS == Preprocessing().fps == 21.5  # the visual frame rate: the clip node and the code
    cfg = compose("extract_features", "features=resnet50", "clip.feat_len=100", "clip.feat_crop_len=96")
    assert (cfg.features.feat_len, cfg.features.feat_crop_len) == (100, 96)  # one override moves every preset
    for kind in (p.stem for p in (ROOT / "conf" / "features").glob("*.yaml")):
        preset = features_preset(kind)
        assert (preset["feat_len"], preset["feat_crop_len"], preset["fps"]) == (FEAT_LEN, FEAT_CROP_LEN, FPS), kind
