"""Every stage's config composes with every data set (and the tiny presets), so a broken YAML fails in seconds."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import pipeline.config  # noqa: F401  (resolvers)

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
STAGES = sorted(p.stem for p in (ROOT / "stages").glob("*.py") if not p.stem.startswith("_"))
# keys a user must give for these stages; everything else has a default
REQUIRED = {"codec": ["mode=encode", "input=x.wav", "output=x.svqc", "codebook.ckpt=c.pt"],
            "evaluate": ["classifier.ckpt=melception.pt"], "download": ["what=list"]}
# files a user must name, asked for only where they are used: the feature network's weights (where frames
# become features) and the LPAPS trunk (when the paper codebook is trained with its perceptual loss)
NEEDED_ONLY_WHEN_USED = {"features.weights", "codebook.loss.lpaps_trunk"}


def test_every_stage_has_a_primary_config():
    assert STAGES, "no stages found"
    missing = [s for s in STAGES if not (ROOT / "conf" / f"{s}.yaml").exists()]
    assert not missing, f"stages without conf/<name>.yaml: {missing}"


@pytest.mark.parametrize("dataset", ["demo", "vas", "vggsound"])
@pytest.mark.parametrize("stage", STAGES)
def test_stage_config_composes_and_resolves(stage, dataset):
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose(stage, overrides=[f"dataset={dataset}", *REQUIRED.get(stage, [])])
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert container["dataset"]["name"] == dataset
    missing = sorted(set(OmegaConf.missing_keys(cfg)) - NEEDED_ONLY_WHEN_USED)
    assert not missing, f"{stage} dataset={dataset} leaves required keys unset: {missing}"


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
def test_paper_experiments_compose_with_derived_block_size(experiment):
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("train_transformer", overrides=[f"experiment={experiment}"])
    t = cfg.transformer
    cond = 1 if t.condition == "class" else t.feat_sample_size
    assert t.block_size == 265 + cond


@pytest.mark.parametrize("sizes", [(1, 266), (5, 270), (212, 477)])
def test_block_size_follows_feat_sample_size(sizes):
    feats, block = sizes
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("train_transformer", overrides=["dataset=vas", f"transformer.feat_sample_size={feats}"])
    assert cfg.transformer.block_size == block


def test_run_folder_names_ignore_where_and_how():
    from pipeline.config import run_name

    assert run_name([]) == "default"
    assert run_name(["dataset=vas", "trainer=gpu", "trainer.max_steps=5", "logger.mode=offline"]) == "default"
    name = run_name(["transformer.feat_sample_size=5", "codebook=vas"])
    assert name == "codebook-vas+transformer.feat_sample_size-5"


def test_run_folders_can_be_passed_unquoted_as_overrides():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from pipeline.config import run_name

    name = run_name(["classifier=melception_tiny", "codebook.optim.betas=[0.5,0.8]", "x.ckpt=/a/b=c/best.pt"])
    path = f"outputs/train_classifier/demo/{name}/checkpoints/best.pt"
    assert OverridesParser.create().parse_override(f"classifier.ckpt={path}").value() == path
