"""load_transformer: the original's checkpoints, ours, strictness, config checks, the paper's key layout."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from pipeline.build.transformer import (
    build_transformer,
    build_vqmodel,
    check_compatible,
    codebook_grid,
    load_transformer,
    model_args_from_config,
)
from tests.helpers import built_transformer, compose


@pytest.fixture(scope="module")
def small(original_fixtures):
    cfg = json.loads((original_fixtures / "config_small.json").read_text())
    io = torch.load(original_fixtures / "transformer_small_io.pt", weights_only=True)
    return original_fixtures / "transformer_small.ckpt", cfg, io


def transformer_cfg(preset: str, *overrides: str):
    return compose("base", f"+transformer={preset}", *overrides).transformer


def test_original_checkpoint_loads_and_computes_the_originals_logits(small):
    path, cfg, io = small
    model = load_transformer(path, n_head=cfg["gpt"]["n_head"])
    assert not model.training and not model.transformer.training
    assert model.model_args["feat_sample_size"] == cfg["feat_sample_size"]
    assert model.model_args["block_size"] == cfg["gpt"]["block_size"]
    with torch.no_grad():
        logits = model.transformer(io["tokens"], io["features"])
    torch.testing.assert_close(logits, io["logits"], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="n_head"):
        load_transformer(path)  # n_embd 64 is not the paper's: n_head must be given


def test_missing_and_unexpected_keys_are_listed(small, tmp_path):
    path, cfg, _ = small
    ckpt = torch.load(path, weights_only=True)
    sd = dict(ckpt["state_dict"])
    del sd["transformer.blocks.1.attn.mask"]
    sd["transformer.blocks.1.attn.extra"] = torch.ones(64)
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": sd}, bad)
    with pytest.raises(ValueError) as err:
        load_transformer(bad, n_head=2)
    msg = str(err.value)
    assert "blocks.1.attn.mask" in msg and "missing" in msg
    assert "unexpected keys (1): ['transformer.blocks.1.attn.extra']" in msg


def test_our_checkpoint_round_trip_and_config_check(small, tmp_path):
    path, cfg, io = small
    original = load_transformer(path, n_head=2)
    ours = tmp_path / "best.pt"
    vq_args = {"ddconfig": cfg["ddconfig"], "n_embed": cfg["n_embed"], "embed_dim": cfg["embed_dim"]}
    torch.save(
        {
            "format": "specvqgan-pipeline",
            "kind": "transformer",
            "model_args": original.model_args,
            "state_dict": original.state_dict(),
            "codebook": {"model_args": vq_args},
        },
        ours,
    )
    model = load_transformer(ours)
    with torch.no_grad():
        torch.testing.assert_close(
            model.transformer(io["tokens"], io["features"]), io["logits"], atol=1e-4, rtol=1e-4
        )
    # a config with another condition size is refused before any weights are read
    tiny = transformer_cfg(
        "tiny", "transformer.n_head=2", "transformer.feat_sample_size=212"
    )
    with pytest.raises(ValueError, match="feat_sample_size.*5.*212"):
        load_transformer(ours, cfg=tiny)
    check_compatible(
        original.model_args, transformer_cfg("tiny", "transformer.feat_sample_size=5"), vocab_size=16
    )  # 5 feats over its 16-code codebook: fits
    with pytest.raises(ValueError, match="block_size"):
        check_compatible(original.model_args, transformer_cfg("vas"))


def built(preset: str, *overrides: str):
    """The wrapper a preset builds over a tiny codebook (meta device): its grid and block_size are derived."""
    cfg = compose("base", f"+transformer={preset}", *overrides)
    return built_transformer(cfg.transformer, cfg.clip.crop_len)


def test_config_presets_derive_block_size():
    assert built("vas").transformer.block_size == 477
    assert built("vggsound").transformer.block_size == 477 and "vocab_size" not in transformer_cfg("vggsound")
    assert built("vas", "transformer.feat_sample_size=5").transformer.block_size == 270
    assert built("vas", "transformer.condition=class", "transformer.n_classes=8").transformer.block_size == 266
    tiny, model = transformer_cfg("tiny"), built("tiny")
    assert (tiny.n_layer, tiny.n_embd, tiny.n_head, model.transformer.block_size) == (2, 128, 4, 265 + 53)  # a frame
    assert (model.first_stage_permuter.H, model.first_stage_permuter.W) == (5, 53)  # per column of the 5 x 53 grid
    args = model_args_from_config(tiny, 32, codebook_grid(model.first_stage_model, 848))
    assert args["grid"] == [5, 53] and args["condition"] == "features" and args["vocab_size"] == 32


@pytest.mark.parametrize("dataset", ["vas", "vggsound"])
def test_paper_models_have_the_originals_keys_and_shapes(dataset, original_fixtures):
    keys = json.loads((original_fixtures / "original_keys.json").read_text())
    stage = compose("train_codebook", f"codebook={dataset}")
    vq = OmegaConf.to_container(stage.codebook.model)  # inherits vas
    for feats in (1, 5, 212):
        codebook = build_vqmodel(vq, device="meta")
        grid = codebook_grid(codebook, stage.data.crop_len)
        args = model_args_from_config(transformer_cfg(dataset, f"transformer.feat_sample_size={feats}"), vq["n_embed"],
                                      grid)
        model = build_transformer(args, codebook, device="meta")
        got = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert got == keys[f"transformer_{dataset}_{feats}feats"]
        if feats == 212:  # spec §4.2, VERIFIED counts
            n = sum(p.numel() for p in model.transformer.parameters())
            assert n == {"vas": 305_160_192, "vggsound": 306_995_200}[dataset]


def test_codebook_path_replaces_the_embedded_codebook(small, original_fixtures):
    path, cfg, io = small
    embedded = load_transformer(path, n_head=2)
    model = load_transformer(path, codebook_path=original_fixtures / "codebook_small.ckpt", n_head=2)
    assert model.first_stage_model.loss is None  # the original's DummyLoss: no loss.* inside the transformer
    assert set(model.state_dict()) == set(embedded.state_dict())
    with torch.no_grad():
        x = torch.rand(1, 1, 80, 848) * 2 - 1
        assert torch.equal(model.encode_to_tokens(x), embedded.encode_to_tokens(x))


def test_the_grid_is_the_codebooks_and_a_stated_or_resumed_one_is_checked():
    stated = compose("base", "+transformer=tiny", "transformer.grid=[5,26]")
    with pytest.raises(ValueError, match="transformer.grid is 5 x 26 but the codebook's latent grid of one clip is "
                                         "5 x 53"):
        built_transformer(stated.transformer, stated.clip.crop_len)
    same = compose("base", "+transformer=tiny", "transformer.grid=[5,53]")
    assert built_transformer(same.transformer, same.clip.crop_len).first_stage_permuter.W == 53
    model = built("tiny")
    assert model.first_stage_permuter.W == 53 and codebook_grid(model.first_stage_model, 416) == [5, 26]
    with pytest.raises(ValueError, match="clip.crop_len to a multiple of 16"):
        codebook_grid(model.first_stage_model, 850)
    tiny = transformer_cfg("tiny")
    half = model_args_from_config(tiny, 32, [5, 26])  # a run on 416-frame clips
    with pytest.raises(ValueError, match=r"block_size: 183 in .*318 in the config.*grid: \[5, 26\] in .*\[5, 53\]"):
        check_compatible(half, tiny, source="last.pt", grid=[5, 53])
    check_compatible(half, tiny, source="last.pt")  # against its own grid: fits
